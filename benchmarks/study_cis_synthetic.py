#!/usr/bin/env python
"""The CIS synthetic learning set: train ``SYNTHETIC_CPU_RECIPE`` (plus your overrides) for a few
seeds and score each run's held-out J-Mean, beside the flow-magnitude baseline.

The set and the recipe are those of ``tests/test_motion_vos_training.py``: 64 training and 16
held-out synthetic sequences of 8 frames at 96×128 with a moving camera, exact flow, 600 steps.
Only ``train.seed`` changes between the runs of one call; the data are the same.

    python benchmarks/study_cis_synthetic.py --seeds 0 1 2 3 4
    python benchmarks/study_cis_synthetic.py --seeds 0 1 -- train.amp=bf16
    OMP_NUM_THREADS=1 python benchmarks/study_cis_synthetic.py --seeds 2 --out /tmp/cis-s2 -- model.hard_weights=true
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from densessl.datasets.davis import DavisDataset
from densessl.tools.train_motion_vos import SYNTHETIC_CPU_RECIPE, SYNTHETIC_MOTION_SIZE, write_synthetic_motion_set
from densessl.tools.train_motion_vos import main as train_main
from densessl.video.motion_vos_eval import (
    MotionPredictConfig, baseline_predictor, evaluate_predictor, load_motion_vos, model_predictor,
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4], help="values of train.seed")
    parser.add_argument("--out", default=None, help="folder for the set and the runs (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides after '--', e.g. train.amp=bf16")
    args = parser.parse_args()

    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="cis-synthetic-"))
    root, flows = out / "davis", out / "flows"
    if not (root / "ImageSets").exists():
        write_synthetic_motion_set(root, flows)  # the test's set: 80 sequences, 16 held out
    val = DavisDataset(root, year=2017, split="val")
    predict = MotionPredictConfig(size=SYNTHETIC_MOTION_SIZE, gaps=(1,))
    magnitude = evaluate_predictor(val, flows, baseline_predictor("flow-magnitude"), predict).global_row["J-Mean"]

    scores: list[float] = []
    for seed in args.seeds:
        name = f"seed{seed}"
        start = time.perf_counter()
        status = train_main([
            "--config", "configs/motion_vos.yaml", *SYNTHETIC_CPU_RECIPE,
            f"data.davis_root={root}", f"data.flow_root={flows}", "data.year=2017", "data.split=train",
            "train.progress=false", "train.log_every=100", f"train.out_dir={out / 'runs'}", f"train.name={name}",
            f"train.seed={seed}", *args.overrides,
        ])
        if status != 0:
            raise SystemExit(f"training seed {seed} failed with status {status}")
        model = load_motion_vos(out / "runs" / name / "checkpoints" / "motion_vos.pt")
        score = evaluate_predictor(val, flows, model_predictor(model, predict, "cpu"), predict).global_row["J-Mean"]
        scores.append(score)
        print(f"seed {seed}: held-out J-Mean {score:.3f} ({time.perf_counter() - start:.0f} s)", flush=True)

    print(f"\noverrides: {' '.join(args.overrides) or '(none)'}; runs in {out}")
    print("| seed | held-out J-Mean |\n|---:|---:|")
    for seed, score in zip(args.seeds, scores):
        print(f"| {seed} | {score:.3f} |")
    print(f"| mean | **{statistics.fmean(scores):.3f}** |")
    print(f"flow-magnitude baseline: J-Mean {magnitude:.3f}")


if __name__ == "__main__":
    main()
