"""Semi-supervised label propagation with frozen features (the DAVIS correspondence test).

Given the first frame's mask, every later frame's labels are a weighted vote of its top-k most
similar positions among a context of earlier frames: frame 0 (with the ground truth) and the
most recent frames (with their own soft predictions). Two presets reproduce the published
protocols (see ``PRESETS``):

- ``crw`` (Jabri et al., contrastive random walk): frame 0 + 20 recent frames, recent frames
  restricted to a Euclidean radius of 12 feature cells, top-10 jointly, softmax at τ = 0.05,
  early frames padded with copies of frame 0, native resolution.
- ``dino`` (Caron et al.): frame 0 + 7 recent, a square ±12 window on every context frame,
  top-5 jointly with weights ``exp(cos / 0.1)``, short side 480 and long side floored to a
  multiple of 64, per-channel min-max before the argmax.

Work is organised for speed: features are computed once per frame in batches on the device,
and the neighbour search runs there with no per-chunk round trips to the host. Windowed frames never build the full
affinity (see :mod:`densessl.video.local_affinity`); memory is bounded by the context length,
not the sequence length.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from densessl.video.local_affinity import WindowedTopK, dense_topk, select_topk

FrameReader = Callable[[int], np.ndarray]


@dataclass(frozen=True)
class PropagationConfig:
    """Every knob of the propagation; ``PRESETS`` holds the published settings."""

    num_recent: int = 20
    """Recent frames in the context (besides frame 0)."""
    window: Literal["euclidean", "square", "none"] = "euclidean"
    """Neighbourhood restriction: ``dy²+dx² < r²``, ``|dy|,|dx| ≤ r``, or none."""
    radius: float = 12.0
    """Window radius in feature cells."""
    window_first: bool = False
    """Apply the window to frame 0 as well (DINO) or let frame 0 match anywhere (CRW)."""
    pad_with_first: bool = True
    """Fill the recent slots before the sequence start with copies of frame 0 (CRW)."""
    topk: int = 10
    temperature: float = 0.05
    """Weights are ``softmax(cos / temperature)`` over the top-k."""
    label_downsample: Literal["bilinear", "nearest"] = "bilinear"
    """How frame 0's one-hot mask is brought to the feature size."""
    minmax_normalise: bool = False
    """Per-channel min-max of the upsampled soft labels before the argmax (DINO)."""
    short_side: int | None = None
    """Resize frames so the short side has this length (None: native resolution)."""
    long_side_multiple: int = 1
    """Floor the long side to a multiple of this after resizing (DINO: 64)."""
    tile: int = 12
    """Query block size of the windowed top-k (speed only)."""
    search_precision: Literal["fp32", "bf16"] = "fp32"
    """``bf16``: neighbour search in bfloat16, then exact float32 re-scoring of the best
    ``rescore_factor · topk`` candidates (faster on CPUs with AVX512-BF16 and on GPUs). Rankings
    differ from fp32 only between near-ties, but with low-dimensional features most cosines are
    near-ties: on the real mini set ``pixels-lab`` J&F moved from 0.430 to 0.462."""
    rescore_factor: int = 3
    fused_kernel: bool = True
    """On CUDA, search the whole context in one fused kernel (:mod:`densessl.ops.context_topk`)
    when it builds and ``topk · rescore_factor`` ≤ 32; otherwise, or when False, per-frame
    PyTorch ops. Speed only: both give the same top-k up to the order of exact ties."""

    def validate(self) -> None:
        if self.num_recent < 0:
            raise ValueError(f"num_recent must be >= 0, got {self.num_recent}")
        if self.topk < 1:
            raise ValueError(f"topk must be >= 1, got {self.topk}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if self.window not in ("euclidean", "square", "none"):
            raise ValueError(f"window must be euclidean, square or none, got '{self.window}'")
        if self.window != "none" and self.radius <= 0:
            raise ValueError(f"radius must be > 0, got {self.radius}")
        if self.search_precision not in ("fp32", "bf16"):
            raise ValueError(f"search_precision must be fp32 or bf16, got "
                             f"'{self.search_precision}'")
        if self.rescore_factor < 1:
            raise ValueError(f"rescore_factor must be >= 1, got {self.rescore_factor}")
        if self.label_downsample not in ("bilinear", "nearest"):
            raise ValueError(f"label_downsample must be bilinear or nearest, got "
                             f"'{self.label_downsample}'")


PRESETS: dict[str, PropagationConfig] = {
    "crw": PropagationConfig(),
    "dino": PropagationConfig(
        num_recent=7,
        window="square",
        radius=12,
        window_first=True,
        pad_with_first=False,
        topk=5,
        temperature=0.1,
        label_downsample="nearest",
        minmax_normalise=True,
        short_side=480,
        long_side_multiple=64,
    ),
}


def make_config(protocol: str = "crw", **overrides) -> PropagationConfig:
    """A preset with some fields replaced; unknown protocol or field names raise ``ValueError``."""
    if protocol not in PRESETS:
        raise ValueError(f"unknown protocol '{protocol}' (expected one of {sorted(PRESETS)})")
    fields = {field.name for field in dataclasses.fields(PropagationConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown propagation settings {unknown} (valid: {sorted(fields)})")
    config = dataclasses.replace(PRESETS[protocol], **overrides)
    config.validate()
    return config


def processing_size(height: int, width: int, config: PropagationConfig) -> tuple[int, int]:
    """The frame size the backbone sees: native, or DINO's short-side resize."""
    if config.short_side is None:
        return height, width
    short = config.short_side
    multiple = config.long_side_multiple
    if height > width:
        long = int((short * height / width) // multiple * multiple)
        return long, short
    long = int((short * width / height) // multiple * multiple)
    return short, long


# --------------------------------------------------------------------------------------------
# The core: soft labels from features
# --------------------------------------------------------------------------------------------


def _fused_extension(config: PropagationConfig, device: torch.device, pool: int):
    """The compiled fused search when it applies (CUDA, ``fused_kernel``, pool ≤ 32), else None."""
    if not config.fused_kernel or device.type != "cuda":
        return None
    from densessl.ops import context_topk

    return context_topk.usable_extension(device) if pool <= context_topk.MAX_K else None


class _ContextTopK:
    """Finds a target frame's joint top-k among all positions of its context frames.

    Candidates are encoded as ``frame_index · N + position`` with ``N = h·w``; padding copies
    of frame 0 are encoded as frame 0, whose labels are the ground truth.

    With ``search_precision='bf16'`` the affinities are computed in bfloat16 and the
    ``rescore_factor · k`` best candidates are re-scored exactly in float32 before the final
    top-k, so weights are exact and only near-ties far below the top can be ranked differently.
    """

    def __init__(self, height: int, width: int, config: PropagationConfig, device) -> None:
        self.config = config
        self.num_positions = height * width
        self.search_dtype = torch.bfloat16 if config.search_precision == "bf16" else None
        self.pool = config.topk * (config.rescore_factor if self.search_dtype else 1)
        self.windowed = None
        if config.window != "none":
            self.windowed = WindowedTopK(
                height, width, config.radius, config.window, self.pool,
                tile=config.tile, device=device,
            )
        # Key windows overlap (each key is copied (S/tile)² times): worth caching on the CPU,
        # where the copy costs as much as the matmul; on GPUs recomputing is cheaper than memory.
        self.cache_key_tiles = torch.device(device).type == "cpu"
        self._key_tiles: dict[int, Tensor] = {}
        self.height, self.width = height, width
        self.fused = _fused_extension(config, torch.device(device), self.pool)
        self._ring: Tensor | None = None  # (num_recent + 1)×N×C channels-last context features
        self._ring_frames: list[int] = []

    def _search(self, features: Tensor) -> Tensor:
        return features if self.search_dtype is None else features.to(self.search_dtype)

    def _restricted_topk(
        self, query_tiles: Tensor, key_frame: Tensor, frame_index: int
    ) -> tuple[Tensor, Tensor]:
        """Top-k of the query frame against one earlier frame under the window."""
        key_tiles = self._key_tiles.get(frame_index)
        if key_tiles is None:
            key_tiles = self.windowed.key_tiles(self._search(key_frame))
            if self.cache_key_tiles:
                self._key_tiles[frame_index] = key_tiles
        return self.windowed.topk_tiles(query_tiles, key_tiles)

    def _dense_topk(self, query: Tensor, key_frame: Tensor) -> tuple[Tensor, Tensor]:
        return dense_topk(self._search(query).flatten(2), self._search(key_frame).flatten(2),
                          self.pool)

    def evict_before(self, frame_index: int) -> None:
        """Drop cached key windows of frames older than ``frame_index`` (frame 0 is kept)."""
        for index in [i for i in self._key_tiles if 0 < i < frame_index]:
            del self._key_tiles[index]

    def __call__(self, features: Callable[[int], Tensor], target: int) -> tuple[Tensor, Tensor]:
        """Joint top-k of frame ``target`` (≥ 1).

        Args:
            features: frame index → ``1×C×h×w`` L2-normalised float32 features.

        Returns:
            ``(weights, candidates)``, each ``N×k``: softmax weights and encoded candidates.
        """
        n = self.num_positions
        if self.fused is not None:
            return self._fused_search(features, target)
        sources, slots = self._context_slots(target)
        query = features(target)
        query_tiles = None
        if self.windowed is not None:
            query_tiles = self.windowed.query_tiles(self._search(query))
        values_list, index_list = [], []
        for frame, windowed, copies in slots:
            if windowed:
                values, positions = self._restricted_topk(query_tiles, features(frame), frame)
            else:
                values, positions = self._dense_topk(query, features(frame))
            values_list += [values] * copies
            index_list += [positions + frame * n] * copies
        values = torch.cat(values_list, dim=-1)[0]  # N×(S·pool)
        indices = torch.cat(index_list, dim=-1)[0]
        values, indices = select_topk(values, indices, self.pool)
        return self._finish(features, query, sources, values, indices)

    def _finish(
        self, features: Callable[[int], Tensor], query: Tensor, sources: list[int],
        values: Tensor, indices: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Exact re-scoring of a bf16 search's pool, the final top-k and the softmax."""
        config = self.config
        if self.search_dtype is not None:
            exact = self._rescore(features, query, sources, indices)
            values = torch.where(torch.isfinite(values), exact, values)
            values, indices = select_topk(values, indices, config.topk)
        return torch.softmax(values / config.temperature, dim=-1), indices

    def _context_slots(self, target: int) -> tuple[list[int], list[tuple[int, bool, int]]]:
        """The context of ``target`` as ``(source frames, [(frame, windowed, copies)])``."""
        config = self.config
        windowed = config.window != "none"
        slots = [(0, windowed and config.window_first, 1)]
        sources = [target - offset for offset in range(1, config.num_recent + 1)]
        slots += [(source, windowed, 1) for source in sources if source >= 1]
        padding = sum(source < 1 for source in sources) if config.pad_with_first else 0
        if padding:
            slots.append((0, windowed, padding))
        return [0] + [source for source in sources if source >= 1], slots

    def _ring_rows(self, features: Callable[[int], Tensor], frames: list[int]) -> list[int]:
        """Rows of the channels-last ring buffer holding ``frames`` (loading missing ones)."""
        if self._ring is None:
            first = features(0)
            rows = self.config.num_recent + 1
            dtype = self.search_dtype or first.dtype
            self._ring = first.new_empty(rows, self.num_positions, first.shape[1], dtype=dtype)
            self._ring_frames = [-1] * rows
        needed = set(frames)
        free = [row for row, frame in enumerate(self._ring_frames) if frame not in needed]
        rows = []
        for frame in frames:
            if frame in self._ring_frames:
                rows.append(self._ring_frames.index(frame))
                continue
            row = free.pop()
            self._ring[row] = features(frame)[0].flatten(1).T
            self._ring_frames[row] = frame
            rows.append(row)
        return rows

    def _fused_search(
        self, features: Callable[[int], Tensor], target: int
    ) -> tuple[Tensor, Tensor]:
        from densessl.ops.context_topk import ContextSlot, context_topk_cuda

        config, n = self.config, self.num_positions
        sources, slots = self._context_slots(target)
        rows = self._ring_rows(features, [frame for frame, _, _ in slots])
        query = features(target)
        values, candidates = context_topk_cuda(
            self._search(query)[0].flatten(1).T,
            self._ring,
            [ContextSlot(row, windowed, copies) for row, (_, windowed, copies) in zip(rows, slots)],
            self.height, self.width, self.pool,
            config.radius if config.window != "none" else 1.0,  # unused without a window
            "square" if config.window == "square" else "euclidean",
            extension=self.fused,
        )
        slot_frame = torch.tensor([frame for frame, _, _ in slots], device=candidates.device)
        # Slot-encoded → frame-encoded; empty entries (-inf) point at frame 0's first position.
        safe = candidates.clamp_min(0)
        indices = slot_frame[safe // n] * n + safe % n
        return self._finish(features, query, sources, values, indices)

    def _rescore(
        self, features: Callable[[int], Tensor], query: Tensor, sources: list[int],
        indices: Tensor,
    ) -> Tensor:
        """Exact float32 cosines of the ``N×pool`` encoded candidates."""
        n, device = self.num_positions, indices.device
        slot_of = torch.zeros(max(sources) + 1, dtype=torch.long, device=device)
        slot_of[torch.tensor(sources, device=device)] = torch.arange(len(sources), device=device)
        # Rows of C contiguous floats gather much faster than columns of a C×(S·N) matrix.
        keys = torch.cat([features(source).flatten(2)[0].T for source in sources])  # (S·N)×C
        slots = slot_of[indices // n] * n + indices % n  # N×pool
        candidates = keys[slots.flatten()].view(*slots.shape, -1)  # N×pool×C
        return torch.bmm(candidates, query.flatten(2)[0].T.unsqueeze(-1)).squeeze(-1)


def propagate_labels(
    features: Callable[[int], Tensor] | Tensor,
    first_labels: Tensor,
    num_frames: int,
    config: PropagationConfig,
    *,
    on_frame: Callable[[int, Tensor], None] | None = None,
    release: Callable[[int], None] | None = None,
) -> Tensor:
    """Propagate soft labels through a sequence.

    Args:
        features: ``T×C×h×w`` L2-normalised features, or a function frame index →
            ``1×C×h×w`` (lets callers stream features with bounded memory).
        first_labels: ``K×h×w`` soft labels of frame 0 (one-hot of the first mask, resized).
        num_frames: ``T``.
        config: the protocol.
        on_frame: called with ``(t, K×h×w soft labels)`` as soon as frame ``t`` is done.
        release: called with ``t`` once frame ``t``'s features are no longer needed.

    Returns:
        ``T×K×h×w`` soft labels on the features' device (frame 0 = ``first_labels``).
    """
    if isinstance(features, Tensor):
        feature_tensor = features
        features = lambda index: feature_tensor[index : index + 1]  # noqa: E731
    first = features(0)
    _, _, height, width = first.shape
    num_labels = first_labels.shape[0]
    if tuple(first_labels.shape[1:]) != (height, width):
        raise ValueError(
            f"first_labels must be K×{height}×{width} to match the features, got "
            f"{tuple(first_labels.shape)}"
        )
    n = height * width
    labels = torch.zeros(num_labels, num_frames * n, device=first.device, dtype=torch.float32)
    labels[:, :n] = first_labels.reshape(num_labels, n).float()
    if on_frame is not None:
        on_frame(0, first_labels)
    search = _ContextTopK(height, width, config, first.device)
    for target in range(1, num_frames):
        weights, candidates = search(features, target)
        soft = (labels[:, candidates] * weights.unsqueeze(0)).sum(-1)  # K×N
        labels[:, target * n : (target + 1) * n] = soft
        if on_frame is not None:
            on_frame(target, soft.view(num_labels, height, width))
        oldest_needed = target + 1 - config.num_recent
        search.evict_before(oldest_needed)
        if release is not None and oldest_needed - 1 >= 1:
            release(oldest_needed - 1)
    return labels.view(num_labels, num_frames, height, width).transpose(0, 1)


# --------------------------------------------------------------------------------------------
# Masks ↔ soft labels
# --------------------------------------------------------------------------------------------


def mask_to_soft_labels(
    mask: np.ndarray, object_ids: Sequence[int], size: tuple[int, int], mode: str
) -> Tensor:
    """``H×W`` id map → ``K×h×w`` one-hot (background first, then ``object_ids``), resized.

    Ids not in ``object_ids`` (such as void 255) count as background.
    """
    ids = torch.as_tensor(np.asarray(mask).astype(np.int64))
    one_hot = torch.zeros(len(object_ids) + 1, *ids.shape)
    one_hot[0] = 1.0
    for channel, object_id in enumerate(object_ids, start=1):
        where = ids == object_id
        one_hot[channel][where] = 1.0
        one_hot[0][where] = 0.0
    if tuple(ids.shape) == tuple(size):
        return one_hot
    if mode == "bilinear":
        return F.interpolate(one_hot[None], size=size, mode="bilinear", align_corners=False)[0]
    return F.interpolate(one_hot[None], size=size, mode="nearest-exact")[0]


def channel_argmax(scores: Tensor) -> Tensor:
    """``argmax`` over dim 0 of ``K×H×W`` scores (first maximum wins, as ``torch.argmax``).

    A loop over the few channels is ~30× faster on CPUs than ``argmax`` along a strided dim.
    """
    best, index = scores[0].clone(), torch.zeros(scores.shape[1:], dtype=torch.long,
                                                 device=scores.device)
    for channel in range(1, scores.shape[0]):
        better = scores[channel] > best
        best = torch.where(better, scores[channel], best)
        index[better] = channel
    return index


def soft_labels_to_ids(
    soft: Tensor,
    output_size: tuple[int, int],
    label_ids: Sequence[int],
    config: PropagationConfig,
    processing: tuple[int, int] | None = None,
) -> np.ndarray:
    """``K×h×w`` soft labels → ``H×W`` uint8 id map at the frame's size.

    CRW: bilinear to the frame size, argmax. DINO: bilinear to the processing size, per-channel
    min-max, argmax, nearest-neighbour resize to the frame size.
    """
    size = processing if config.minmax_normalise and processing is not None else output_size
    up = F.interpolate(soft[None].float(), size=size, mode="bilinear", align_corners=False)[0]
    if config.minmax_normalise:
        low = up.amin(dim=(1, 2), keepdim=True)
        high = up.amax(dim=(1, 2), keepdim=True)
        scaled = (up - low) / (high - low).clamp_min(torch.finfo(up.dtype).tiny)
        up = torch.where(high > 0, scaled, up)
    channel = channel_argmax(up)
    if tuple(channel.shape) != tuple(output_size):
        channel = F.interpolate(
            channel[None, None].float(), size=output_size, mode="nearest"
        )[0, 0].long()
    lookup = torch.as_tensor(list(label_ids), dtype=torch.uint8, device=channel.device)
    return lookup[channel].cpu().numpy()
