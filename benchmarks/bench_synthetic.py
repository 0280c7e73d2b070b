#!/usr/bin/env python
"""Speed of the synthetic DAVIS-style generator: a full set written to disk, with and without
ground-truth flow, and the in-memory rendering cost per frame.

    python benchmarks/bench_synthetic.py                    # 30 × 60 frames at 480×854, 2 workers
    python benchmarks/bench_synthetic.py --sequences 4 --frames 20   # a quick look
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import tempfile
import time
from pathlib import Path

from densessl.datasets.synthetic import SyntheticConfig, generate_sequence, write_synthetic_davis


def _folder_size(root: Path) -> int:
    return sum(path.stat().st_size for path in root.rglob("*") if path.is_file())


def _cpu_seconds() -> float:
    """CPU time of this process and its finished children (the worker processes)."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=30)
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tmp", default=None, help="folder for the temporary output")
    args = parser.parse_args()

    base = SyntheticConfig(
        num_sequences=args.sequences, num_frames=args.frames, height=args.height,
        width=args.width, workers=args.workers,
    )
    frames_total = args.sequences * args.frames
    print(f"{args.sequences} sequences × {args.frames} frames at {args.height}×{args.width}, "
          f"{args.workers} worker(s), {os.cpu_count()} CPUs visible, "
          f"load average {os.getloadavg()[0]:.1f}")

    # In memory, one process: the per-frame cost of rendering (+ flow) alone.
    probe = SyntheticConfig(num_frames=min(args.frames, 20), height=args.height, width=args.width)
    for with_flow in (False, True):
        start = time.process_time()
        for index in range(2):
            generate_sequence(probe, index, with_flow=with_flow)
        seconds = time.process_time() - start
        label = "render + flow" if with_flow else "render only  "
        print(f"in memory, {label}: {1000 * seconds / (2 * probe.num_frames):6.1f} ms/frame "
              "CPU (one process, incl. scene set-up)")

    cases = [
        ("frames + masks + video + flow", dict(write_flow=True, write_video=True)),
        ("frames + masks + video       ", dict(write_flow=False, write_video=True)),
        ("frames + masks               ", dict(write_flow=False, write_video=False)),
    ]
    for label, options in cases:
        folder = Path(tempfile.mkdtemp(prefix="bench_synthetic_", dir=args.tmp))
        try:
            config = SyntheticConfig(**{**base.__dict__, **options})
            start, cpu_start = time.perf_counter(), _cpu_seconds()
            write_synthetic_davis(folder / "set", config, progress=False)
            seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
            size = _folder_size(folder / "set")
        finally:
            shutil.rmtree(folder, ignore_errors=True)
        print(f"written, {label}: {seconds:6.1f} s wall, {cpu:6.1f} s CPU "
              f"({1000 * cpu / frames_total:5.1f} ms CPU/frame), {size / 2**30:5.2f} GiB")


if __name__ == "__main__":
    main()
