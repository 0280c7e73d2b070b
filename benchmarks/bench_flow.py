#!/usr/bin/env python
"""Speed of OpenCV DIS optical flow on real 854×480 DAVIS frames, and of the compute-flow tool.

    python benchmarks/bench_flow.py                         # mini DAVIS-2016 set, medium, 1 and 2 workers
    python benchmarks/bench_flow.py --davis-root DIR --year 2017 --workers 1,4,16
    python benchmarks/bench_flow.py --sequences blackswan --presets ultrafast,fast,medium --no-tool

The DIS rows time the flow computation alone on frames decoded beforehand (every frame × every gap
with a partner), in ``N`` processes with one OpenCV thread each. The tool row times
``densessl compute-flow`` end to end (decoding, DIS, writing .flo files) into a temporary folder.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import os
import platform
import resource
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from densessl.datasets.davis import DavisDataset
from densessl.datasets.flow_cache import DEFAULT_GAPS
from densessl.video.optical_flow import create_dis, dis_flow, to_gray

MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016_mini"
DAVIS2016_FRAMES, DAVIS2016_SEQUENCES = 3455, 50  # train + val, 480p
CHUNK_FRAMES = 16


def _init_worker() -> None:
    cv2.setNumThreads(1)


def _run_chunk(job: tuple[list[np.ndarray], list[tuple[int, int]], str]) -> float:
    """DIS over ``(i, j)`` index pairs into a list of gray frames; returns the CPU seconds."""
    frames, pairs, preset = job
    start = time.process_time()
    dis = create_dis(preset)
    for i, j in pairs:
        dis_flow(frames[i], frames[j], dis=dis)
    return time.process_time() - start


def _jobs(videos: list[list[np.ndarray]], gaps: list[int], preset: str) -> list:
    """Chunks of ``CHUNK_FRAMES`` source frames, each carrying the frames it needs."""
    jobs = []
    for frames in videos:
        count = len(frames)
        for start in range(0, count, CHUNK_FRAMES):
            sources = range(start, min(start + CHUNK_FRAMES, count))
            pairs = [(t, t + g) for t in sources for g in gaps if 0 <= t + g < count]
            low = min(min(p) for p in pairs)
            high = max(max(p) for p in pairs)
            jobs.append((frames[low:high + 1], [(i - low, j - low) for i, j in pairs], preset))
    return jobs


def _time_dis(jobs: list, workers: int) -> tuple[float, float]:
    """(wall, CPU) seconds to run every job in ``workers`` processes (pool start-up not counted)."""
    if workers == 1:
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            start = time.perf_counter()
            cpu = sum(_run_chunk(job) for job in jobs)
            return time.perf_counter() - start, cpu
        finally:
            cv2.setNumThreads(threads)
    with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
        pool.map(math.sqrt, range(workers))  # workers started and importing done
        start = time.perf_counter()
        cpu = sum(pool.imap_unordered(_run_chunk, jobs))
        return time.perf_counter() - start, cpu


def _cpu_seconds() -> float:
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--davis-root", type=Path, default=MINI)
    parser.add_argument("--year", type=int, default=2016)
    parser.add_argument("--sequences", help="comma-separated subset (default: the whole val set)")
    parser.add_argument("--presets", default="medium", help="comma-separated DIS presets")
    parser.add_argument("--workers", default="1,2", help="comma-separated process counts")
    parser.add_argument("--tool-workers", type=int, default=2)
    parser.add_argument("--no-tool", action="store_true", help="skip the end-to-end tool run")
    args = parser.parse_args()
    if not (args.davis_root / "JPEGImages").is_dir():
        parser.error(f"no DAVIS set at {args.davis_root} (pass --davis-root)")
    sequences = args.sequences.split(",") if args.sequences else None
    dataset = DavisDataset(args.davis_root, year=args.year, split="val", sequences=sequences)
    gaps = list(DEFAULT_GAPS)

    start = time.perf_counter()
    videos = [[to_gray(seq.frame(i)) for i in range(seq.num_frames)] for seq in dataset]
    decode = time.perf_counter() - start
    num_frames = sum(len(v) for v in videos)
    height, width = videos[0][0].shape
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, OpenCV "
          f"{cv2.__version__}, load average {os.getloadavg()[0]:.1f} at start")
    print(f"{len(videos)} sequences, {num_frames} frames of {width}×{height}, gaps "
          f"{' '.join(f'{g:+d}' for g in gaps)}; decoding + gray: {decode:.1f} s "
          f"({num_frames / decode:.0f} frames/s)")

    pairs_2016 = DAVIS2016_FRAMES * len(gaps) - DAVIS2016_SEQUENCES * sum(abs(g) for g in gaps)
    print("| preset | processes | pairs | wall s | pairs/s | wall ms/pair per process | CPU ms/pair | "
          f"DAVIS-2016 ({pairs_2016} pairs) on 16 cores, extrapolated |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for preset in args.presets.split(","):
        jobs = _jobs(videos, gaps, preset)
        num_pairs = sum(len(job[1]) for job in jobs)
        for workers in (int(w) for w in args.workers.split(",")):
            seconds, cpu = _time_dis(jobs, workers)
            rate = num_pairs / seconds
            per_process = rate / workers
            estimate = pairs_2016 / (16 * per_process)
            print(f"| {preset} | {workers} | {num_pairs} | {seconds:.1f} | {rate:.1f} | "
                  f"{1000 / per_process:.0f} | {1000 * cpu / num_pairs:.0f} | {estimate / 60:.1f} min |",
                  flush=True)
    print("The last column assumes throughput scales linearly with processes (16 × the wall-clock "
          "per-process rate measured here); it is an extrapolation, not a measurement.")

    if args.no_tool:
        return
    from densessl.tools.compute_flow import main as compute_flow

    with tempfile.TemporaryDirectory() as scratch:
        out = Path(scratch) / "flows"
        command = ["--davis-root", str(args.davis_root), "--year", str(args.year), "--out", str(out),
                   "--workers", str(args.tool_workers), "--quiet"]
        if args.sequences:
            command += ["--sequences", args.sequences]
        cpu = _cpu_seconds()
        start = time.perf_counter()
        if compute_flow(command) != 0:
            raise SystemExit("compute-flow failed")
        wall = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu
        files = [p for p in out.rglob("*") if p.is_file()]
        size = sum(p.stat().st_size for p in files)
        print(f"tool end to end (compute-flow --workers {args.tool_workers}, DIS medium, .flo): "
              f"{len(files)} files, {size / 2**30:.2f} GiB, {wall:.1f} s wall, {cpu:.1f} s CPU, "
              f"{len(files) / wall:.1f} pairs/s")


if __name__ == "__main__":
    main()
