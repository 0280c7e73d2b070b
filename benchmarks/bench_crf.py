"""DenseCRF refinement on real frames: quality gain and time per frame.

``python benchmarks/bench_crf.py [--davis-root ../shared/data/davis2016_mini] [--every 10]``

The input probability is each sampled frame's ground-truth mask shifted by (3, 5) px and blurred
(σ = 4), optionally squeezed to [s, 1 − s]; J is the IoU of ``prob > 0.5`` with the ground truth,
before and after :func:`densessl.eval.crf.refine_foreground`, for the default settings and the
pydensecrf example settings.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np

from densessl.datasets.davis import DavisDataset
from densessl.eval.crf import CRFConfig, refine_foreground


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--davis-root", type=Path, default=Path("../shared/data/davis2016_mini"))
    parser.add_argument("--year", type=int, default=2016)
    parser.add_argument("--every", type=int, default=10, help="use every N-th frame")
    args = parser.parse_args()

    configs = {
        "defaults (50 px / 10 / 5)": CRFConfig(),
        "pydensecrf example (80 px / 13 / 10)": CRFConfig(bilateral_sxy=80.0, bilateral_srgb=13.0, bilateral_compat=10.0),
    }
    frames = []
    for sequence in DavisDataset(args.davis_root, year=args.year):
        for t in range(0, sequence.num_frames, args.every):
            frames.append((sequence.frame(t), sequence.mask(t) > 0))
    for squeeze in (0.0, 0.1):
        before, after, times = [], {name: [] for name in configs}, []
        for image, gt in frames:
            prob = cv2.GaussianBlur(np.roll(gt.astype(np.float32), (3, 5), axis=(0, 1)), (0, 0), 4)
            prob = np.clip(squeeze + (1 - 2 * squeeze) * prob, 0, 1)
            before.append(iou(prob > 0.5, gt))
            for name, config in configs.items():
                start = time.perf_counter()
                refined = refine_foreground(image, prob, config)
                if name.startswith("defaults"):
                    times.append(time.perf_counter() - start)
                after[name].append(iou(refined > 0.5, gt))
        results = " | ".join(f"{name}: J {np.mean(v):.3f}" for name, v in after.items())
        print(f"squeeze {squeeze}: {len(frames)} frames, J before {np.mean(before):.3f} | {results} | "
              f"median {np.median(times):.2f} s/frame")


if __name__ == "__main__":
    main()
