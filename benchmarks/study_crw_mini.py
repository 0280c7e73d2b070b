#!/usr/bin/env python
"""CRW on the real mini set at CPU scale: train (the README's smoke recipe plus your overrides)
for a few seeds, then score each run by label propagation on the same sequences.

The recipe is that of ``docs/crw_studies.md``: the eight sequences' frames (unlabelled, 8 fps,
short side 144), 128 px crops, 7×7 patches of 32 px, ResNet-18 layer2 nodes, batch 8, Adam 1e-3
at a constant lr; propagation with the CRW protocol on the features of ``--eval-layer``. Give the
length as an override: ``train.max_steps=N`` (equal steps) or ``train.max_minutes=M``.

    python benchmarks/study_crw_mini.py --seeds 0 1 -- train.max_steps=75
    OMP_NUM_THREADS=1 python benchmarks/study_crw_mini.py --seeds 0 --out /tmp/roi -- train.max_steps=75 \
        model.mode=roi train.amp=bf16 train.channels_last=true
    # the default layer4 nodes, scored on layer3 (the protocol's features), as in the studies
    python benchmarks/study_crw_mini.py --seeds 0 1 --eval-layer layer3 -- train.max_minutes=30 \
        model.out_layer=layer4 eval.layer=layer3
    # the course of a run: score the backbone of every checkpoint (steps 220, 440, 660)
    python benchmarks/study_crw_mini.py --seeds 0 --eval-layer layer3 --every-checkpoint -- \
        train.max_steps=660 train.checkpoint_every=220 model.mode=roi model.out_layer=layer4 eval.layer=layer3
"""

from __future__ import annotations

import argparse
import csv
import tempfile
import time
from pathlib import Path

from densessl.tools.eval_model import main as eval_main
from densessl.tools.train_crw import main as train_main

MINI_DAVIS = Path(__file__).resolve().parents[2] / "shared/data/davis2016_mini"
SMOKE_RECIPE: tuple[str, ...] = (
    "data.frames_fps=24", "data.short_side=144", "model.out_layer=layer2", "augment.frame_size=128",
    "augment.patch_size=32", "augment.patch_stride=16", "train.batch_size=8", "train.lr=1e-3",
    "train.schedule=constant", "train.num_workers=0", "eval.layer=layer2",
)
COLUMNS = ("J&F-Mean", "J-Mean", "F-Mean", "J-Recall", "F-Recall")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="values of train.seed")
    parser.add_argument("--davis-root", type=Path, default=MINI_DAVIS,
                        help=f"DAVIS-2016-layout folder, trained on and scored (default: {MINI_DAVIS})")
    parser.add_argument("--eval-layer", default="layer2", help="backbone layer for propagation")
    parser.add_argument("--no-recipe", action="store_true", help="start from configs/crw.yaml instead")
    parser.add_argument("--every-checkpoint", action="store_true",
                        help="keep the backbone of every checkpoint (train.keep_exports=true) and score each")
    parser.add_argument("--out", default=None, help="folder for the runs (default: a temporary one)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides after '--', e.g. train.max_steps=75")
    args = parser.parse_args()

    frames = args.davis_root / "JPEGImages" / "480p"
    if not frames.is_dir():
        raise SystemExit(f"--davis-root: no JPEGImages/480p in {args.davis_root}")
    if not any(o.startswith(("train.max_steps=", "train.max_minutes=")) for o in args.overrides):
        raise SystemExit("give the length: train.max_steps=N or train.max_minutes=M after '--'")
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="crw-mini-"))
    recipe = () if args.no_recipe else SMOKE_RECIPE

    keep = ("train.keep_exports=true",) if args.every_checkpoint else ()
    rows: list[tuple[int, str, dict[str, float]]] = []
    for seed in args.seeds:
        name = f"seed{seed}"
        start = time.perf_counter()
        status = train_main([
            f"data.frames={frames}", *recipe, "train.progress=false", f"train.out_dir={out}",
            f"train.name={name}", f"train.seed={seed}", *args.overrides, *keep, "--overwrite",
        ])
        if status != 0:
            raise SystemExit(f"training seed {seed} failed with status {status}")
        trained = time.perf_counter() - start
        checkpoints = out / name / "checkpoints"
        weights = [("end", checkpoints / "backbone.pt")]
        if args.every_checkpoint:
            kept = sorted(checkpoints.glob("step_*/backbone.pt"))
            weights = [(str(int(p.parent.name[len("step_"):])), p) for p in kept]
        for step, path in weights:
            scored = out / f"{name}-eval" / f"step-{step}"
            status = eval_main([
                "--backbone", "resnet18-crw", "--out-layer", args.eval_layer, "--weights", str(path),
                "--davis-root", str(args.davis_root), "--year", "2016", "--out", str(scored), "--overwrite",
            ])
            if status != 0:
                raise SystemExit(f"scoring seed {seed} (step {step}) failed with status {status}")
            with open(scored / "global_results-val.csv") as handle:
                row = {k: float(v) for k, v in next(csv.DictReader(handle)).items()}
            rows.append((seed, step, row))
            print(f"seed {seed}, step {step}: J&F-Mean {row['J&F-Mean']:.3f} (training {trained:.0f} s, "
                  f"all {time.perf_counter() - start:.0f} s)", flush=True)

    print(f"\noverrides: {' '.join(args.overrides)}; runs in {out}")
    print("| seed | step | " + " | ".join(COLUMNS) + " |\n|---:|---:|" + "---:|" * len(COLUMNS))
    for seed, step, row in rows:
        print(f"| {seed} | {step} | " + " | ".join(f"{row[c]:.3f}" for c in COLUMNS) + " |")


if __name__ == "__main__":
    main()
