"""CRW clip augmentation on the training device: frame crops, patch grid with jitter.

Everything is batched over all clips, frames and patches (``roi_align`` with random boxes, no
per-sample Python loops). Frames stay in [0, 1]: the backbone normalises.
"""

from __future__ import annotations

from dataclasses import dataclass

import kornia.augmentation as K
import torch
from torch import Tensor, nn

from densessl.augment.boxes import crop_and_resize, grid_boxes, random_resized_boxes


@dataclass
class CRWViews:
    """Augmented clip batch.

    ``frames``: B×T×3×S×S in [0, 1]. ``patches``: B×T×P×3×p×p (patch mode) or None.
    ``boxes``: B×T×P×4 jittered patch boxes (x1, y1, x2, y2) in frame pixels (always given;
    the "roi" model mode samples the feature map with them).
    """

    frames: Tensor
    patches: Tensor | None
    boxes: Tensor


def clip_to_float(clip: Tensor) -> Tensor:
    """uint8 (or float) B×T×H×W×3 or B×T×3×H×W → float B×T×3×H×W in [0, 1].

    The channel axis is taken to be the last one when it has size 3 (the datasets' layout).
    """
    if clip.dim() != 5:
        raise ValueError(f"clip batch must be B×T×H×W×3 or B×T×3×H×W, got shape {tuple(clip.shape)}")
    if clip.shape[-1] == 3 and clip.shape[2] != 3:
        clip = clip.permute(0, 1, 4, 2, 3)
    elif clip.shape[2] != 3:
        raise ValueError(f"clip batch has no RGB axis of size 3: shape {tuple(clip.shape)}")
    if clip.dtype == torch.uint8:
        return clip.float().div_(255.0)
    return clip.float()


class CRWAugment(nn.Module):
    """Clip augmentation for contrastive random walk training.

    Per frame: RandomResizedCrop to ``frame_size`` (scale ``crop_scale``, ratio
    ``crop_ratio``), optional colour jitter; per clip: optional horizontal flip. Then the frame
    is cut into a grid of ``patch_size`` patches at ``patch_stride`` (7×7 of 64 at stride 32 in
    a 256 frame), each jittered by its own RandomResizedCrop (scale ``patch_scale``).

    Args:
        same_crop_on_clip: one frame crop per clip instead of one per frame.
        color_jitter: brightness/contrast/saturation strength (hue = strength / 4); 0 = off.
        with_patches: also cut the patch pixels (False for the dense and roi model modes).
    """

    def __init__(
        self,
        frame_size: int = 256,
        crop_scale: tuple[float, float] = (0.8, 0.95),
        crop_ratio: tuple[float, float] = (0.7, 1.3),
        patch_size: int = 64,
        patch_stride: int = 32,
        patch_scale: tuple[float, float] = (0.7, 0.9),
        patch_ratio: tuple[float, float] = (0.7, 1.3),
        color_jitter: float = 0.0,
        flip: bool = False,
        same_crop_on_clip: bool = False,
        with_patches: bool = True,
    ) -> None:
        super().__init__()
        for name, pair in (("crop_scale", crop_scale), ("crop_ratio", crop_ratio),
                           ("patch_scale", patch_scale), ("patch_ratio", patch_ratio)):
            if len(pair) != 2 or not 0 < pair[0] <= pair[1]:
                raise ValueError(f"{name} must be (low, high) with 0 < low <= high, got {pair}")
        self.frame_size = int(frame_size)
        self.crop_scale = tuple(crop_scale)
        self.crop_ratio = tuple(crop_ratio)
        self.patch_size = int(patch_size)
        self.patch_stride = int(patch_stride)
        self.patch_scale = tuple(patch_scale)
        self.patch_ratio = tuple(patch_ratio)
        self.flip = flip
        self.same_crop_on_clip = same_crop_on_clip
        self.with_patches = with_patches
        self.register_buffer("grid", grid_boxes(self.frame_size, self.patch_size, self.patch_stride), persistent=False)
        self.jitter: nn.Module | None = None
        if color_jitter > 0:
            s = float(color_jitter)
            self.jitter = K.ColorJitter(s, s, s, s / 4, p=1.0)

    @property
    def num_patches(self) -> int:
        return int(self.grid.shape[0])

    @torch.no_grad()
    def forward(self, clip: Tensor) -> CRWViews:
        """Args: clip uint8 B×T×H×W×3 (or B×T×3×H×W) on the training device."""
        x = clip_to_float(clip)
        b, t, _, h, w = x.shape
        device = x.device
        s, p = self.frame_size, self.patch_size
        n_crops = b if self.same_crop_on_clip else b * t
        boxes = random_resized_boxes(n_crops, h, w, self.crop_scale, self.crop_ratio, device=device)
        if self.same_crop_on_clip:
            boxes = boxes.repeat_interleave(t, dim=0)
        frames = crop_and_resize(x.reshape(b * t, 3, h, w), boxes, torch.arange(b * t, device=device), s)
        if self.flip:
            flip = (torch.rand(b, device=device) < 0.5).repeat_interleave(t)
            frames = torch.where(flip[:, None, None, None], frames.flip(-1), frames)
        if self.jitter is not None:
            frames = self.jitter(frames).clamp_(0, 1)

        num = self.num_patches
        rel = random_resized_boxes(b * t * num, p, p, self.patch_scale, self.patch_ratio, device=device)
        origin = self.grid[:, :2].repeat(1, 2).repeat(b * t, 1)  # (b·t·num)×4: (x0, y0, x0, y0)
        patch_boxes = rel + origin
        patches = None
        if self.with_patches:
            index = torch.arange(b * t, device=device).repeat_interleave(num)
            patches = crop_and_resize(frames, patch_boxes, index, p).reshape(b, t, num, 3, p, p)
        return CRWViews(frames=frames.reshape(b, t, 3, s, s), patches=patches, boxes=patch_boxes.reshape(b, t, num, 4))
