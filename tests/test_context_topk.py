"""The fused context top-k of label propagation: reference semantics against naive loops, the
CUDA kernel emulated on the CPU, the propagation's use of it, and the kernel on a GPU."""

from __future__ import annotations

import subprocess
import warnings
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from conftest import build_kernel_emulator, built_extension, check_first_use_check
from densessl.ops import _jit
from densessl.ops import context_topk as ctk
from densessl.ops.context_topk import ContextSlot, context_topk_reference
from densessl.video import propagation
from densessl.video.propagation import make_config, propagate_labels

HAS_CUDA = torch.cuda.is_available()


def naive_context_topk(queries, keys, slots, height, width, k, radius, shape):
    """Every (query, slot, key) triple scored in a loop; the k best per query (with copies)."""
    n = height * width
    values, candidates = [], []
    for q in range(n):
        qy, qx = divmod(q, width)
        scored = []
        for s, slot in enumerate(slots):
            for p in range(n):
                dy, dx = p // width - qy, p % width - qx
                if slot.windowed:
                    inside = (dy * dy + dx * dx < radius * radius if shape == "euclidean"
                              else abs(dy) <= radius and abs(dx) <= radius)
                    if not inside:
                        continue
                score = float(queries[q].double() @ keys[slot.frame, p].double())
                scored += [(score, s * n + p)] * slot.multiplicity
        scored.sort(key=lambda item: -item[0])
        scored = scored[:k] + [(float("-inf"), -1)] * max(0, k - len(scored))
        values.append([v for v, _ in scored])
        candidates.append([c for _, c in scored])
    return torch.tensor(values, dtype=torch.float64), torch.tensor(candidates)


def check_against_naive(values, candidates, queries, keys, slots, want_values, height, width):
    """Scores equal the naive ones rank by rank; each candidate really has its score (ties may
    be ordered either way) and appears at most as often as its slot's multiplicity."""
    n = height * width
    assert values.shape == want_values.shape
    finite = torch.isfinite(want_values)
    assert torch.equal(torch.isfinite(values), finite)
    assert torch.allclose(values.double()[finite], want_values[finite], atol=1e-5)
    assert (candidates[~finite] == -1).all()
    for q in range(n):
        for rank in range(values.shape[1]):
            c = int(candidates[q, rank])
            if c < 0:
                continue
            slot = slots[c // n]
            rescored = float(queries[q].double() @ keys[slot.frame, c % n].double())
            assert abs(rescored - float(want_values[q, rank])) < 1e-5
        counts = torch.bincount(candidates[q][candidates[q] >= 0])
        for c in counts.nonzero().flatten().tolist():
            assert counts[c] <= slots[c // n].multiplicity


CASES = [
    # height, width, channels, key frames, k, radius, shape, slots (frame, windowed, copies)
    (7, 11, 5, 3, 10, 3.0, "euclidean", [(0, False, 1), (0, True, 3), (2, True, 1), (1, True, 1)]),
    (9, 6, 4, 2, 6, 2.0, "square", [(0, True, 1), (1, True, 2)]),
    (5, 5, 3, 2, 20, 1.5, "euclidean", [(1, True, 1)]),  # fewer keys than k
    (6, 8, 7, 1, 4, 12.0, "euclidean", [(0, False, 1), (0, True, 20)]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c[0]}x{c[1]}-{c[6]}-k{c[4]}")
def test_reference_matches_naive_loops(case):
    height, width, channels, frames, k, radius, shape, slot_spec = case
    slots = [ContextSlot(*s) for s in slot_spec]
    gen = torch.Generator().manual_seed(0)
    queries = torch.randn(height * width, channels, generator=gen)
    keys = torch.randn(frames, height * width, channels, generator=gen)
    keys[:, -1] = keys[:, 0]  # exact ties
    values, candidates = context_topk_reference(queries, keys, slots, height, width, k, radius,
                                                shape)
    want_values, _ = naive_context_topk(queries, keys, slots, height, width, k, radius, shape)
    check_against_naive(values, candidates, queries, keys, slots, want_values, height, width)


def test_reference_rejects_bad_input():
    q, keys = torch.randn(12, 3), torch.randn(2, 12, 3)
    with pytest.raises(ValueError, match="queries"):
        context_topk_reference(q[:5], keys, [ContextSlot(0, True)], 3, 4, 2, 2.0, "euclidean")
    with pytest.raises(ValueError, match="slot"):
        context_topk_reference(q, keys, [ContextSlot(2, True)], 3, 4, 2, 2.0, "euclidean")
    with pytest.raises(ValueError, match="k must"):
        context_topk_reference(q, keys, [ContextSlot(0, True)], 3, 4, 0, 2.0, "euclidean")


# ------------------------------------------------------------------ the kernel, CPU emulation

# H,W,C,F,k,radius,square,splits and slots frame:windowed:copies
EMULATION_CASES = [
    ("13,21,5,3,10,4,0,1", "0:0:1/0:1:3/2:1:1/1:1:1"),   # CRW-like context, one split
    ("13,21,5,3,10,4,0,3", "0:0:1/0:1:3/2:1:1/1:1:1"),   # chunks dealt to three blocks
    ("17,9,40,2,32,2.5,1,2", "0:1:1/1:1:2"),             # square window, 2 channel steps, k 32
    ("9,30,3,2,1,12,0,5", "0:0:1/1:1:1"),                # k 1, window wider than the frame
    ("3,4,7,2,20,1.5,0,2", "1:1:1"),                     # fewer keys than k
    ("20,20,70,1,16,3,0,7", "0:1:20/0:0:1"),             # copies beyond k
]


@pytest.fixture(scope="module")
def emulator(tmp_path_factory):
    return build_kernel_emulator("context_topk_emulation.cpp", ctk.CSRC,
                                 tmp_path_factory.mktemp("context_topk"))


@pytest.mark.parametrize("dtype", ["float", "half", "bfloat16"])
def test_kernel_emulated_on_cpu_matches_a_direct_search(emulator, dtype):
    """The real kernel code, one CPU thread per CUDA thread, against a search over every key."""
    args = [item for case in EMULATION_CASES for item in case]
    result = subprocess.run([str(emulator), dtype, *args], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" OK") == len(EMULATION_CASES)


# ------------------------------------------------------- propagation through the fused path


def _reference_extension(fp32_scores: bool = False):
    """Stands in for the compiled module on the CPU, with the kernel's calling convention
    (``fp32_scores``: 16-bit inputs scored in float32, as the kernel does)."""

    def context_topk(queries, keys, frame, flags, height, width, k, radius, square, reach, splits):
        slots = [ContextSlot(int(f), bool(g & 1), int(g >> 1)) for f, g in zip(frame, flags)]
        if fp32_scores:
            queries, keys = queries.float(), keys.float()
        values, candidates = context_topk_reference(
            queries, keys, slots, height, width, k, radius, "square" if square else "euclidean")
        # the kernel's partial lists: the answer in one split, nothing in the others
        partial_values = values.new_full((splits, *values.shape), float("-inf"))
        partial_candidates = candidates.new_full((splits, *candidates.shape), -1)
        partial_values[splits - 1], partial_candidates[splits - 1] = values, candidates
        return partial_values, partial_candidates.int()

    return SimpleNamespace(context_topk=context_topk)


def _broken_extension(score_error: float = 0.0, shift_candidates: bool = False):
    extension = _reference_extension(fp32_scores=True)
    original = extension.context_topk

    def context_topk(*args):
        values, candidates = original(*args)
        values[-1, 5, 0] += score_error
        if shift_candidates:  # a neighbouring key's index for the best candidate
            candidates[-1, :, 0] = torch.where(candidates[-1, :, 0] > 0, candidates[-1, :, 0] - 1, 1)
        return values, candidates

    return SimpleNamespace(context_topk=context_topk)


@pytest.mark.parametrize("broken,message", [
    (dict(score_error=1e-3), "scores, torch.float32"),
    (dict(shift_candidates=True), "candidates' scores"),
])
def test_first_use_check_accepts_the_reference_and_catches_wrong_kernels(broken, message):
    check_first_use_check("densessl_test_checked_context_topk", _reference_extension(fp32_scores=True),
                          _broken_extension(**broken), ctk._self_check, message)


def _features(frames: int, channels: int, height: int, width: int, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(1, channels, height, width, generator=gen)
    drift = torch.randn(frames, channels, height, width, generator=gen)
    return F.normalize(base + 0.4 * drift.cumsum(0), dim=1)


@pytest.mark.parametrize("protocol,overrides", [
    ("crw", dict(num_recent=4, radius=3.0)),
    ("crw", dict(num_recent=3, radius=2.0, search_precision="bf16")),
    ("dino", dict(num_recent=3, radius=2)),
    ("crw", dict(num_recent=2, window="none")),
])
def test_propagation_through_the_fused_path_equals_the_per_frame_path(monkeypatch, protocol,
                                                                      overrides):
    """Slots, the ring buffer of context features and the candidate decoding, exercised on the
    CPU with the reference standing in for the kernel."""
    features = _features(9, 6, 7, 10)
    first = torch.zeros(3, 7, 10)
    first[0], first[1, 2:5, 3:6], first[2, 4:, 6:] = 1.0, 1.0, 1.0
    first[0][first[1:].sum(0) > 0] = 0.0
    config = make_config(protocol, **overrides)
    plain = propagate_labels(features, first, 9, config)

    calls = []
    extension = _reference_extension()
    original = extension.context_topk
    extension.context_topk = lambda *a: calls.append(a) or original(*a)
    monkeypatch.setattr(propagation, "_fused_extension", lambda config, device, pool: extension)
    monkeypatch.setattr(ctk, "default_splits", lambda *a: 3)
    fused = propagate_labels(features, first, 9, config)
    assert len(calls) == 8
    assert torch.allclose(fused, plain, atol=1e-5)


# ------------------------------------------------------------------------ the kernel on a GPU


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", CASES + [
    (60, 107, 256, 4, 10, 12.0, "euclidean", [(0, False, 1), (1, True, 1), (2, True, 1),
                                             (3, True, 1), (0, True, 17)]),
    (30, 64, 384, 3, 5, 12, "square", [(0, True, 1), (1, True, 1), (2, True, 1)]),
], ids=lambda c: f"{c[0]}x{c[1]}-{c[6]}-k{c[4]}" if isinstance(c, tuple) else str(c))
def test_cuda_kernel_matches_the_reference(case, dtype):
    height, width, channels, frames, k, radius, shape, slot_spec = case
    extension = built_extension(ctk)
    slots = [ContextSlot(*s) for s in slot_spec]
    gen = torch.Generator().manual_seed(0)
    queries = F.normalize(torch.randn(height * width, channels, generator=gen), dim=1)
    keys = F.normalize(torch.randn(frames, height * width, channels, generator=gen), dim=2)
    queries, keys = queries.to(dtype), keys.to(dtype)
    want, _ = context_topk_reference(queries.float(), keys.float(), slots, height, width, k,
                                     radius, shape)
    for splits in (1, 5):
        values, candidates = ctk.context_topk_cuda(
            queries.cuda(), keys.cuda(), slots, height, width, k, radius, shape, splits=splits,
            extension=extension)
        values, candidates = values.cpu(), candidates.cpu()
        finite = torch.isfinite(want)
        assert torch.equal(torch.isfinite(values), finite)
        assert torch.allclose(values[finite], want[finite], atol=1e-5)
        n = height * width
        ok = candidates >= 0
        frame_of = torch.tensor([s.frame for s in slots])
        rescored = (keys.float()[frame_of[candidates.clamp_min(0) // n], candidates.clamp_min(0) % n]
                    * queries.float()[:, None]).sum(-1)
        assert torch.allclose(rescored[ok], values[ok], atol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
def test_cuda_kernel_passes_its_first_use_check():
    extension = built_extension(ctk)
    _jit.forget(ctk.EXTENSION_NAME)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ctk.usable_extension(torch.device("cuda")) is extension


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
@pytest.mark.parametrize("protocol", ["crw", "dino"])
def test_cuda_propagation_fused_equals_per_frame(protocol):
    built_extension(ctk)
    features = _features(12, 64, 30, 40).cuda()
    first = torch.zeros(2, 30, 40, device="cuda")
    first[1, 10:20, 10:25] = 1.0
    first[0] = 1.0 - first[1]
    fused = propagate_labels(features, first, 12, make_config(protocol, fused_kernel=True))
    plain = propagate_labels(features, first, 12, make_config(protocol, fused_kernel=False))
    assert torch.allclose(fused, plain, atol=1e-4)
