#!/usr/bin/env python
"""Speed of the DAVIS J&F scorer on a synthetic set the size of DAVIS-2017 val.

Writes (into a temporary folder unless ``--keep DIR``) ``--sequences`` sequences of
``--frames`` frames at ``--height``×``--width`` with 1..``--max-objects`` moving ellipses as
palette PNGs (plus a void ring), and predictions = the GT with jittered ellipses, then times
``evaluate_results`` (reading every PNG and scoring, as the tool does).

    python benchmarks/bench_scorer.py                       # 30 × 70 frames, 854×480
    python benchmarks/bench_scorer.py --sequences 4 --frames 20 --workers 1
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from densessl.datasets.palette import write_indexed_png
from densessl.eval.davis_metrics import evaluate_results


def _draw(height: int, width: int, ellipses: list[tuple[float, ...]], void: bool) -> np.ndarray:
    ids = np.zeros((height, width), dtype=np.uint8)
    for object_id, (cy, cx, ry, rx, angle) in enumerate(ellipses, start=1):
        cv2.ellipse(ids, (int(cx), int(cy)), (int(rx), int(ry)), angle, 0, 360, object_id, -1)
        if void and object_id == 1:
            ring = np.zeros_like(ids)
            cv2.ellipse(ring, (int(cx), int(cy)), (int(rx), int(ry)), angle, 0, 360, 1, 3)
            ids[(ring == 1) & (ids == 0)] = 255
    return ids


def write_synthetic_set(
    root: Path, sequences: int, frames: int, height: int, width: int, max_objects: int, seed: int
) -> Path:
    """GT under ``root/davis`` (DAVIS-2017 layout) and predictions under ``root/results``."""
    rng = np.random.default_rng(seed)
    davis, results = root / "davis", root / "results"
    names = [f"synthetic-{i:03d}" for i in range(sequences)]
    frame = np.clip(rng.normal(120, 30, (height, width, 3)), 0, 255).astype(np.uint8)
    for index, name in enumerate(tqdm(names, desc="writing synthetic set", unit="seq")):
        num_objects = 1 + index % max_objects
        start = [
            (
                rng.uniform(0.2, 0.8) * height,
                rng.uniform(0.2, 0.8) * width,
                rng.uniform(0.08, 0.3) * height,
                rng.uniform(0.05, 0.25) * width,
                rng.uniform(0, 180),
            )
            for _ in range(num_objects)
        ]
        velocity = [(rng.normal(0, 2), rng.normal(0, 3), 0, 0, rng.normal(0, 1)) for _ in start]
        image_dir = davis / "JPEGImages/480p" / name
        image_dir.mkdir(parents=True)
        first_jpg = image_dir / "00000.jpg"
        Image.fromarray(frame).save(first_jpg, quality=80)
        for t in range(frames):
            stem = f"{t:05d}"
            if t:  # only the size of the frames matters to the scorer
                os.link(first_jpg, image_dir / f"{stem}.jpg")
            ellipses = [
                tuple(s + v * t for s, v in zip(obj, vel)) for obj, vel in zip(start, velocity)
            ]
            gt = _draw(height, width, ellipses, void=num_objects > 1)
            write_indexed_png(davis / "Annotations/480p" / name / f"{stem}.png", gt)
            jitter = [
                (
                    cy + rng.normal(0, 3),
                    cx + rng.normal(0, 3),
                    ry * rng.uniform(0.9, 1.1),
                    rx * rng.uniform(0.9, 1.1),
                    angle + rng.normal(0, 5),
                )
                for cy, cx, ry, rx, angle in ellipses
            ]
            write_indexed_png(
                results / name / f"{stem}.png", _draw(height, width, jitter, void=False)
            )
    (davis / "ImageSets/2017").mkdir(parents=True)
    (davis / "ImageSets/2017/val.txt").write_text("\n".join(names) + "\n")
    return root


def _cpu_seconds() -> float:
    """User + system CPU time of this process and its finished children (nan off POSIX)."""
    try:
        import resource
    except ImportError:
        return float("nan")
    total = 0.0
    for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN):
        usage = resource.getrusage(who)
        total += usage.ru_utime + usage.ru_stime
    return total


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=30)
    parser.add_argument("--frames", type=int, default=70)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--width", type=int, default=854)
    parser.add_argument("--max-objects", type=int, default=3)
    parser.add_argument("--workers", type=int, default=None, help="default: all cores")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=1, help="time the scoring this many times")
    parser.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="write the set here and keep it (a set already there is reused)",
    )
    args = parser.parse_args(argv)

    root = args.keep if args.keep is not None else Path(tempfile.mkdtemp(prefix="bench_scorer_"))
    reuse = args.keep is not None and (root / "davis/ImageSets/2017/val.txt").is_file()
    if args.keep is not None and not reuse and root.exists() and any(root.iterdir()):
        parser.error(f"--keep folder {root} is not empty and holds no synthetic set")
    try:
        if reuse:
            print(f"reusing the synthetic set in {root} (size options ignored)")
            args.sequences = len((root / "davis/ImageSets/2017/val.txt").read_text().split())
            first = sorted((root / "results/synthetic-000").glob("*.png"))
            args.frames = len(first)
            args.width, args.height = Image.open(first[0]).size
        else:
            write_synthetic_set(
                root,
                args.sequences,
                args.frames,
                args.height,
                args.width,
                args.max_objects,
                args.seed,
            )
        frames = args.sequences * args.frames
        for run in range(args.repeat):
            start, cpu_start = time.perf_counter(), _cpu_seconds()
            scores = evaluate_results(root / "davis", root / "results", num_workers=args.workers)
            seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu_start
            print(
                f"run {run + 1}: {args.sequences} sequences, {frames} frames "
                f"({args.height}x{args.width}), {len(scores.objects)} objects, workers="
                f"{args.workers or os.cpu_count()}: {seconds:.2f} s wall, {frames / seconds:.0f} "
                f"frames/s, {cpu:.1f} s CPU ({frames / cpu:.0f} frames per CPU-second), "
                f"J&F {scores.global_row['J&F-Mean']:.3f}"
            )
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
