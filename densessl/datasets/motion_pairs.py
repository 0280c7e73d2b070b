"""(frame, cached flow) training pairs from DAVIS-style folders, with paired augmentation.

Every item is one frame ``t`` of a sequence and one gap ``g`` whose flow ``t → t+g`` is cached
(see :mod:`densessl.datasets.flow_cache`). Crops and flips are applied identically to the image
and the flow; the flow vectors are rescaled with the crop's resize and ``dx`` changes sign under
a horizontal flip, so the flow stays the true motion of the augmented image.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from densessl.datasets.davis import DavisDataset
from densessl.datasets.flow_cache import find_flow, flow_path, gap_folder, read_frame_flow
from densessl.errors import InputError


@dataclass
class PairAugmentConfig:
    """``size`` is the output ``(height, width)``; crops keep the frame's aspect ratio and cover
    a side fraction in ``[min_scale, 1]``; ``flip``: mirror half of the pairs."""

    size: tuple[int, int] = (192, 384)
    min_scale: float = 0.6
    flip: bool = True

    def validate(self) -> None:
        if len(self.size) != 2 or min(self.size) < 8:
            raise InputError(f"augment.size must be (height, width) of at least 8 pixels, got {self.size}")
        if not 0 < self.min_scale <= 1:
            raise InputError(f"augment.min_scale must lie in (0, 1], got {self.min_scale}")


def resize_flow(flow: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``H×W×2`` flow (pixels) → ``h×w×2`` for ``size = (h, w)``, vectors rescaled to match."""
    height, width = flow.shape[:2]
    out_h, out_w = size
    resized = cv2.resize(flow, (out_w, out_h), interpolation=cv2.INTER_LINEAR)
    resized[..., 0] *= out_w / width
    resized[..., 1] *= out_h / height
    return resized


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``H×W×3`` uint8 → ``h×w×3``: area averaging when shrinking, bilinear when enlarging."""
    out_h, out_w = size
    shrink = out_h < image.shape[0] or out_w < image.shape[1]
    return cv2.resize(image, (out_w, out_h), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)


def crop_flip_resize(
    image: np.ndarray,
    flow: np.ndarray,
    rng: np.random.Generator,
    size: tuple[int, int],
    min_scale: float = 0.6,
    flip: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """The same random crop (side fraction in ``[min_scale, 1]``), resize and flip of both inputs.

    Returns ``(image h×w×3 uint8, flow h×w×2 float32)`` with ``(h, w) = size``.
    """
    height, width = image.shape[:2]
    scale = rng.uniform(min_scale, 1.0)
    crop_h = max(1, min(height, round(scale * height)))
    crop_w = max(1, min(width, round(scale * width)))
    y0 = int(rng.integers(0, height - crop_h + 1))
    x0 = int(rng.integers(0, width - crop_w + 1))
    image = image[y0 : y0 + crop_h, x0 : x0 + crop_w]
    flow = np.ascontiguousarray(flow[y0 : y0 + crop_h, x0 : x0 + crop_w], dtype=np.float32)
    image, flow = resize_image(np.ascontiguousarray(image), size), resize_flow(flow, size)
    if flip and rng.random() < 0.5:
        image = image[:, ::-1]
        flow = flow[:, ::-1].copy()
        flow[..., 0] *= -1.0
    return np.ascontiguousarray(image), np.ascontiguousarray(flow)


class MotionPairDataset(Dataset):
    """Pairs ``(frame, flow)`` of a DAVIS-style set; keys are ``(sequence index, pair index)``.

    Args:
        davis: the frames (annotations are not read).
        flow_root: the cached flow tree ``<flow_root>/<gap>/<seq>/<frame>.flo``.
        gaps: frame offsets whose flow is used (missing files are skipped per frame).
        augment: crop / flip / size; ``None`` = resize only (no randomness).
    Items: ``{"image": 3×h×w float in [0, 1], "flow": 2×h×w float (pixels at h×w)}``.
    """

    def __init__(
        self,
        davis: DavisDataset,
        flow_root: str | os.PathLike,
        gaps: Sequence[int] = (1, -1, 2, -2),
        augment: PairAugmentConfig | None = None,
    ) -> None:
        self.davis = davis
        self.flow_root = Path(flow_root)
        if not self.flow_root.is_dir():
            raise InputError("flow folder not found (compute it with tools/compute_flow.py)", self.flow_root)
        self.gaps = [int(g) for g in gaps]
        if not self.gaps or 0 in self.gaps:
            raise InputError(f"gaps must be nonzero frame offsets, got {list(gaps)}")
        self.augment = augment or PairAugmentConfig(flip=False, min_scale=1.0)
        self.augment.validate()
        self.random = augment is not None
        self.sequences = list(davis)
        self.pairs: list[list[tuple[int, int, Path]]] = []
        for sequence in self.sequences:
            found = []
            for t, name in enumerate(sequence.frame_names):
                for gap in self.gaps:
                    path = find_flow(self.flow_root, gap, sequence.name, name)
                    if path is not None:
                        found.append((t, gap, path))
            self.pairs.append(found)
        if not any(self.pairs):
            first = self.sequences[0]
            expected = flow_path(self.flow_root, self.gaps[0], first.name, first.frame_names[0])
            raise InputError(
                f"no cached flow for gaps {', '.join(gap_folder(g) for g in self.gaps)} of any sequence "
                "(compute it with tools/compute_flow.py)",
                expected,
            )

    def clip_counts(self) -> list[int]:
        """Pairs per sequence (for :class:`densessl.datasets.video.ClipSampler`)."""
        return [len(p) for p in self.pairs]

    def __len__(self) -> int:
        return sum(self.clip_counts())

    def load(self, sequence_index: int, pair_index: int) -> tuple[np.ndarray, np.ndarray, int]:
        """The full-size ``(image H×W×3 uint8, flow H×W×2, gap)`` of one pair."""
        sequence = self.sequences[sequence_index]
        t, gap, path = self.pairs[sequence_index][pair_index]
        image = sequence.frame(t)
        return image, read_frame_flow(path, image.shape[:2]), gap

    def __getitem__(self, key: tuple[int, int]) -> dict[str, Tensor]:
        sequence_index, pair_index = key
        image, flow, _ = self.load(sequence_index, pair_index)
        a = self.augment
        if self.random:
            # a fresh seed from torch's generator: DataLoader workers are seeded per epoch
            rng = np.random.default_rng(int(torch.randint(0, 2**62, ())))
            image, flow = crop_flip_resize(image, flow, rng, tuple(a.size), a.min_scale, a.flip)
        else:
            image, flow = resize_image(image, tuple(a.size)), resize_flow(flow, tuple(a.size))
        return {
            "image": torch.from_numpy(image).permute(2, 0, 1).float().div_(255.0),
            "flow": torch.from_numpy(flow).permute(2, 0, 1).contiguous(),
        }
