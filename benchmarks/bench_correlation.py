#!/usr/bin/env python
"""Speed and peak memory of the correlation op against an unfold baseline (and the package).

Cases (fp32 and bf16, forward and forward+backward):
  B8 C256 60×107 P25,  B2 C64 120×214 P9,  B20 C128 32×32 P9.
16-bit dtypes are also timed with the tensor cores off (``correlation_cuda(tensor_cores=False)``).
Prints a markdown table. ``--quick`` shrinks every case so that it runs on a CPU in seconds.

    python benchmarks/bench_correlation.py --device cuda --repeats 50
    python benchmarks/bench_correlation.py --device cpu --quick
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from densessl.ops import correlation as corr


@dataclass(frozen=True)
class Case:
    batch: int
    channels: int
    height: int
    width: int
    patch: int

    def __str__(self) -> str:
        return f"B{self.batch} C{self.channels} {self.height}×{self.width} P{self.patch}"


CASES = [Case(8, 256, 60, 107, 25), Case(2, 64, 120, 214, 9), Case(20, 128, 32, 32, 9)]
QUICK_CASES = [Case(2, 32, 15, 27, 25), Case(1, 16, 30, 54, 9), Case(4, 32, 8, 8, 9)]


def unfold_correlation(input1: torch.Tensor, input2: torch.Tensor, patch: int) -> torch.Tensor:
    """Naive baseline: materialise every displaced copy of input2 (B×C·P²×H·W), then reduce."""
    batch, channels, height, width = input1.shape
    radius = (patch - 1) // 2
    padded = F.pad(input2, (radius, patch - 1 - radius, radius, patch - 1 - radius))
    cols = F.unfold(padded, kernel_size=patch)  # B × C·P² × H·W
    cols = cols.view(batch, channels, patch * patch, height * width)
    out = (input1.reshape(batch, channels, 1, height * width) * cols).sum(dim=1)
    return out.view(batch, patch, patch, height, width)


# fp16/bf16 on the CUDA-core kernels: the tensor cores' gain (the same kernels as fp32 otherwise).
CUDA_CORES = "densessl (CUDA, no tensor cores)"


def _implementations(device: str) -> dict[str, Callable[..., torch.Tensor]]:
    impls: dict[str, Callable[..., torch.Tensor]] = {}
    if device == "cuda":
        if corr.load_extension() is not None:
            impls["densessl (CUDA)"] = lambda a, b, p: corr.correlation_cuda(a, b, patch_size=p)
            impls[CUDA_CORES] = lambda a, b, p: corr.correlation_cuda(
                a, b, patch_size=p, tensor_cores=False)
        impls["densessl (reference)"] = lambda a, b, p: corr.correlation_reference(
            a, b, patch_size=p)
    else:
        impls["densessl (reference)"] = lambda a, b, p: corr.correlation_reference(
            a, b, patch_size=p)
    impls["unfold"] = unfold_correlation
    try:
        from spatial_correlation_sampler import spatial_correlation_sample as package
    except ImportError:
        pass
    else:
        impls["spatial_correlation_sampler"] = lambda a, b, p: package(a, b, patch_size=p)
    return impls


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _time(fn: Callable[[], object], device: str, repeats: int, warmup: int) -> float:
    """Median wall time of ``fn`` in milliseconds."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def measure(impl: Callable[..., torch.Tensor], case: Case, dtype: torch.dtype, device: str,
            repeats: int, warmup: int) -> tuple[str, str, str]:
    """``(forward ms, forward+backward ms, peak MiB)`` as table cells; 'OOM' when it does not fit."""
    g = torch.Generator(device=device).manual_seed(0)
    shape = (case.batch, case.channels, case.height, case.width)
    try:
        a = torch.randn(shape, device=device, generator=g).to(dtype).requires_grad_()
        b = torch.randn(shape, device=device, generator=g).to(dtype).requires_grad_()
        grad = torch.randn(case.batch, case.patch, case.patch, case.height, case.width,
                           device=device, generator=g).to(dtype)

        def forward() -> None:
            with torch.no_grad():
                impl(a, b, case.patch)

        def forward_backward() -> None:
            out = impl(a, b, case.patch)
            torch.autograd.grad(out, (a, b), grad)

        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        fwd = _time(forward, device, repeats, warmup)
        both = _time(forward_backward, device, repeats, warmup)
        peak = "n/a"
        if device == "cuda":
            peak = f"{(torch.cuda.max_memory_allocated() - base) / 2**20:.0f}"
        return f"{fwd:.3f}", f"{both:.3f}", peak
    except torch.OutOfMemoryError:
        return "OOM", "OOM", "OOM"
    finally:
        if device == "cuda":
            torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        choices=["cpu", "cuda"])
    parser.add_argument("--repeats", type=int, default=20, help="timed runs per cell (median)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small cases (CPU smoke run)")
    parser.add_argument("--dtypes", default="float32,bfloat16",
                        help="comma-separated torch dtypes (default: float32,bfloat16)")
    parser.add_argument("--skip", default="", help="comma-separated implementations to skip")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but CUDA is not available", file=sys.stderr)
        return 2
    if args.repeats < 1:
        print("error: --repeats must be >= 1", file=sys.stderr)
        return 2
    try:
        dtypes = [getattr(torch, name.strip()) for name in args.dtypes.split(",") if name.strip()]
    except AttributeError as error:
        print(f"error: --dtypes: unknown dtype ({error})", file=sys.stderr)
        return 2
    skip = {name.strip() for name in args.skip.split(",") if name.strip()}
    cases = QUICK_CASES if args.quick else CASES
    impls = {k: v for k, v in _implementations(args.device).items() if k not in skip}

    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    print(f"device: {device_name}, torch {torch.__version__}, median of {args.repeats} runs\n")
    print("| case | dtype | implementation | forward ms | fwd+bwd ms | peak MiB |")
    print("|---|---|---|---:|---:|---:|")
    for case in cases:
        for dtype in dtypes:
            for name, impl in impls.items():
                if name == CUDA_CORES and dtype.itemsize != 2:
                    continue
                fwd, both, peak = measure(impl, case, dtype, args.device, args.repeats,
                                          args.warmup)
                dtype_name = str(dtype).removeprefix("torch.")
                print(f"| {case} | {dtype_name} | {name} | {fwd} | {both} | {peak} |",
                      flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
