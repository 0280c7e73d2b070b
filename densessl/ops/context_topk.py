"""Fused top-k search of label propagation on CUDA.

For every query position of a target frame, the ``k`` largest dot products with the keys of its
context frames, where each context *slot* searches one frame either everywhere or only inside a
window around the query, and a slot may count several times (the CRW protocol pads the early
context with copies of frame 0). One kernel does the whole search without writing out any
affinity; see ``csrc/context_topk_kernels.h`` for the work split.

:func:`context_topk_reference` computes the same thing with PyTorch ops and defines the
semantics; :func:`context_topk_cuda` runs the kernel. Candidates come back encoded as
``slot · (h·w) + position``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import torch
from torch import Tensor

from densessl.ops import _jit
from densessl.video.local_affinity import (
    WindowShape,
    WindowedTopK,
    dense_topk,
    select_topk,
    window_reach,
)

CSRC = Path(__file__).resolve().parent / "csrc"
EXTENSION_NAME = "densessl_context_topk"
EXTENSION_SOURCES = ("context_topk.cpp", "context_topk_cuda.cu")
EXTENSION_HEADERS = ("context_topk.h", "context_topk_params.h", "context_topk_kernels.h",
                     "kernel_compat.h")
MAX_K = 32
"""Largest ``k`` the kernel keeps (its private lists live in registers)."""


@dataclass(frozen=True)
class ContextSlot:
    """One context entry: which row of the key stack, windowed or not, and how many copies."""

    frame: int
    windowed: bool
    multiplicity: int = 1


def load_extension() -> ModuleType | None:
    """The compiled kernel, built on first call and cached; None when unavailable (one warning).

    ``DENSESSL_NO_CUDA_EXT=1`` skips it.
    """
    return _jit.load_op(EXTENSION_NAME, CSRC, EXTENSION_SOURCES, EXTENSION_HEADERS)


def usable_extension(device: torch.device) -> ModuleType | None:
    """:func:`load_extension`, once it has passed its first-use check on ``device`` (else None,
    after one warning)."""
    ext = load_extension()
    return None if ext is None else _jit.checked_on(EXTENSION_NAME, ext, device, _self_check)


def _self_check(ext: ModuleType, device: torch.device) -> None:
    """The kernel against :func:`context_topk_reference` on a small context, in each dtype, both
    window shapes, one and several splits: the scores rank by rank, and each candidate's score
    recomputed from its key."""
    height, width, channels, k = 7, 9, 12, 6
    n = height * width
    slots = [ContextSlot(0, False), ContextSlot(0, True, 3), ContextSlot(1, True)]
    gen = torch.Generator().manual_seed(0)
    queries = torch.randn(n, channels, generator=gen)
    keys = torch.randn(2, n, channels, generator=gen)
    slot_frame = torch.tensor([slot.frame for slot in slots])
    for dtype, rtol in ((torch.float32, 1e-5), (torch.float16, 1e-3), (torch.bfloat16, 1e-3)):
        q, kk = queries.to(device=device, dtype=dtype), keys.to(device=device, dtype=dtype)
        q32, k32 = q.float().cpu(), kk.float().cpu()
        for shape, radius in (("euclidean", 2.5), ("square", 2.0)):
            want, _ = context_topk_reference(q32, k32, slots, height, width, k, radius, shape)
            for splits in (1, 3):
                where = f"{dtype}, {shape} window, {splits} split(s)"
                values, candidates = context_topk_cuda(q, kk, slots, height, width, k, radius, shape,
                                                       splits=splits, extension=ext)
                _jit.assert_close(values, want, rtol, f"scores, {where}")
                candidates = candidates.cpu()
                found = candidates >= 0
                if not torch.equal(found, torch.isfinite(want)):
                    raise AssertionError(f"candidates: empty entries misplaced, {where}")
                safe = candidates.clamp_min(0)
                rescored = (q32[:, None, :] * k32[slot_frame[safe // n], safe % n]).sum(-1)
                _jit.assert_close(torch.where(found, rescored, want), want, rtol,
                                  f"candidates' scores, {where}")


def _check(queries: Tensor, keys: Tensor, slots: Sequence[ContextSlot], height: int,
           width: int, k: int) -> None:
    n = height * width
    if queries.dim() != 2 or queries.shape[0] != n:
        raise ValueError(f"queries must be (h·w)×C = {n}×C, got {tuple(queries.shape)}")
    if keys.dim() != 3 or keys.shape[1:] != queries.shape:
        raise ValueError(f"keys must be F×{n}×{queries.shape[1]}, got {tuple(keys.shape)}")
    if not slots:
        raise ValueError("at least one context slot is needed")
    for slot in slots:
        if not 0 <= slot.frame < keys.shape[0] or slot.multiplicity < 1:
            raise ValueError(f"bad slot {slot} for {keys.shape[0]} key frames")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")


def context_topk_reference(
    queries: Tensor,
    keys: Tensor,
    slots: Sequence[ContextSlot],
    height: int,
    width: int,
    k: int,
    radius: float,
    shape: WindowShape,
) -> tuple[Tensor, Tensor]:
    """Joint top-k over the slots with PyTorch ops (any device).

    Args:
        queries: ``(h·w)×C`` features of the target frame (channels last).
        keys: ``F×(h·w)×C`` features of the context frames.
        slots: the context; windowed slots only see keys inside ``radius`` (``shape``).
        k: neighbours kept.

    Returns:
        ``(values, candidates)``, each ``(h·w)×k``: scores in descending order (``-inf`` where
        the context holds fewer than ``k`` keys) and ``slot · (h·w) + position``.
    """
    _check(queries, keys, slots, height, width, k)
    n = height * width

    def as_map(x: Tensor) -> Tensor:
        return x.T.reshape(1, -1, height, width)

    query_map = as_map(queries)
    windowed = None
    values_list, index_list = [], []
    for index, slot in enumerate(slots):
        if slot.windowed:
            if windowed is None:
                windowed = WindowedTopK(height, width, radius, shape, k, device=queries.device)
            values, positions = windowed(query_map, as_map(keys[slot.frame]))
        else:
            values, positions = dense_topk(query_map.flatten(2), as_map(keys[slot.frame]).flatten(2), k)
        values_list += [values[0]] * slot.multiplicity
        index_list += [positions[0] + index * n] * slot.multiplicity
    values, candidates = torch.cat(values_list, dim=-1), torch.cat(index_list, dim=-1)
    values, candidates = select_topk(values, candidates, k)
    if values.shape[-1] < k:  # fewer keys than k in the whole context
        missing = k - values.shape[-1]
        values = torch.cat([values, values.new_full((n, missing), float("-inf"))], dim=-1)
        candidates = torch.cat([candidates, candidates.new_full((n, missing), -1)], dim=-1)
    candidates = torch.where(torch.isfinite(values), candidates, torch.full_like(candidates, -1))
    return values, candidates


def default_splits(height: int, width: int, device: torch.device) -> int:
    """Blocks per 8×8 query tile: enough for about four blocks per multiprocessor."""
    if device.type != "cuda":
        return 1
    tiles = math.ceil(height / 8) * math.ceil(width / 8)
    multiprocessors = torch.cuda.get_device_properties(device).multi_processor_count
    return max(1, min(32, math.ceil(4 * multiprocessors / tiles)))


def context_topk_cuda(
    queries: Tensor,
    keys: Tensor,
    slots: Sequence[ContextSlot],
    height: int,
    width: int,
    k: int,
    radius: float,
    shape: WindowShape,
    *,
    splits: int | None = None,
    extension: ModuleType | None = None,
) -> tuple[Tensor, Tensor]:
    """:func:`context_topk_reference` in one CUDA kernel (float32, float16 or bfloat16 inputs,
    float32 scores). Raises ``RuntimeError`` when the extension is unavailable."""
    _check(queries, keys, slots, height, width, k)
    if k > MAX_K:
        raise ValueError(f"the fused kernel keeps at most {MAX_K} neighbours, got k={k}")
    module = extension if extension is not None else load_extension()
    if module is None:
        raise RuntimeError(f"the CUDA extension '{EXTENSION_NAME}' is not available")
    device = queries.device
    if splits is None:
        splits = default_splits(height, width, device)
    frame = torch.tensor([s.frame for s in slots], dtype=torch.int32, device=device)
    flags = torch.tensor([int(s.windowed) | (s.multiplicity << 1) for s in slots],
                         dtype=torch.int32, device=device)
    square = shape == "square"
    reach = window_reach(radius, shape)
    values, candidates = module.context_topk(
        queries.contiguous(), keys.contiguous(), frame, flags, height, width, k, float(radius),
        square, reach, splits,
    )  # splits×(h·w)×k each
    if splits > 1:
        values = values.permute(1, 0, 2).reshape(height * width, splits * k)
        candidates = candidates.permute(1, 0, 2).reshape(height * width, splits * k)
        values, candidates = select_topk(values, candidates, k)
    else:
        values, candidates = values[0], candidates[0]
    return values, candidates.long()
