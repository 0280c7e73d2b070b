"""The end-to-end demo on generated data: label propagation with several backbones (after a short
CRW training), scored with the official DAVIS J&F; and motion segmentation (a short CIS training on
exact flow) against flow baselines, scored with the DAVIS-2016 unsupervised protocol. Results
tables, overlay pictures and bar charts.

Example::

    python tools/demo.py --out demo_out --overwrite

Writes ``<out>/data`` (the synthetic DAVIS-style set), ``<out>/<method>/`` (predictions,
official CSVs, overlays), ``<out>/motion_data`` + ``<out>/motion_flows`` (the motion set and its
flow cache), ``<out>/motion/<method>/`` (masks, CSVs, overlays), ``<out>/results.md``,
``<out>/results.json``, ``<out>/jf_by_method.png`` and ``<out>/motion_j_by_method.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path
from typing import Sequence

from densessl.errors import InputError
from densessl.tools._common import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="demo", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="demo_out", help="output folder (default demo_out)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the output folder if it exists")
    parser.add_argument("--sequences", type=int, default=12,
                        help="synthetic sequences; a third val, the rest train (default 12)")
    parser.add_argument("--frames", type=int, default=16, help="frames per sequence")
    parser.add_argument("--height", type=int, default=240)
    parser.add_argument("--width", type=int, default=432)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--train-minutes", type=float, default=2.0,
                        help="wall-time budget of the short CRW training (0 = skip)")
    parser.add_argument("--motion-sequences", type=int, default=80,
                        help="synthetic motion-segmentation sequences (96×128, 8 frames); a fifth "
                             "val, the rest train (default 80)")
    parser.add_argument("--motion-steps", type=int, default=600,
                        help="steps of the short CIS motion-segmentation training (0 = skip the "
                             "motion stage; default 600, the learning test's recipe)")
    parser.add_argument("--device", default="auto")
    return parser


# A CPU-sized CRW recipe: small frames and patches, layer2 features (stride 8), a larger lr.
_DEMO_CRW_SETTINGS = [
    "data.target_fps=0", "data.short_side=72", "model.mode=patch", "model.out_layer=layer2",
    "augment.frame_size=64", "augment.patch_size=16", "augment.patch_stride=8",
    "train.batch_size=8", "train.lr=1e-3", "train.num_workers=0",
    "train.log_every=10", "train.checkpoint_every=100000", "eval.layer=layer2",
]


def _train_crw(data_root: Path, run_dir: Path, minutes: float, device: str) -> Path:
    """A short CRW training on the synthetic train split; returns the backbone checkpoint."""
    from densessl.engine.config import load_config
    from densessl.tools.train_crw import CRWConfig, train

    names = (data_root / "ImageSets" / "2017" / "train.txt").read_text().split()
    listing = data_root.parent / "train_frames.txt"
    frames_root = (data_root / "JPEGImages" / "480p").resolve()  # list entries: absolute
    listing.write_text("".join(f"{frames_root / name}\n" for name in names))
    overrides = [
        *_DEMO_CRW_SETTINGS, f"data.frames={listing}", f"data.cache_dir={run_dir / 'cache'}",
        f"train.max_minutes={minutes}", f"train.out_dir={run_dir.parent}",
        f"train.name={run_dir.name}", f"train.device={device}",
    ]
    train(load_config(CRWConfig, None, overrides))
    return run_dir / "checkpoints" / "backbone.pt"


_MOTION_METHODS = {  # label -> baseline name (None: the trained CIS model)
    "CIS (trained)": None, "flow magnitude": "flow-magnitude", "camera-compensated": "camera-compensated",
}


def _motion_stage(out: Path, args: argparse.Namespace, device: str) -> dict[str, dict[str, float]]:
    """Synthetic motion set with exact flow → short CIS training → scores of CIS and two flow
    baselines on the held-out sequences (masks, CSVs and overlays under ``<out>/motion``)."""
    import contextlib

    from densessl.engine.config import load_config
    from densessl.tools.eval_motion_vos import main as eval_main
    from densessl.tools.train_motion_vos import (
        SYNTHETIC_CPU_RECIPE, SYNTHETIC_MOTION_SCENE, SYNTHETIC_MOTION_SIZE, MotionVOSConfig, train,
        write_synthetic_motion_set,
    )

    root, flows = out / "motion_data", out / "motion_flows"
    height, width = SYNTHETIC_MOTION_SIZE
    print(f"[4/6] generating {args.motion_sequences} moving-camera sequences ({SYNTHETIC_MOTION_SCENE['num_frames']} "
          f"frames, {height}×{width}) with exact flow in {root}")
    write_synthetic_motion_set(root, flows, num_sequences=args.motion_sequences,
                               num_val=max(1, args.motion_sequences // 5), seed=args.seed, workers=0)

    print(f"[5/6] training CIS motion segmentation for {args.motion_steps} steps on the train split")
    run = out / "motion" / "cis_run"
    overrides = [
        *SYNTHETIC_CPU_RECIPE, f"data.davis_root={root}", f"data.flow_root={flows}", "data.year=2017",
        "data.split=train", f"train.max_steps={args.motion_steps}", f"train.seed={args.seed}",
        f"train.out_dir={run.parent}", f"train.name={run.name}", f"train.device={device}",
        "train.checkpoint_every=100000", "train.log_every=50",
    ]
    train(load_config(MotionVOSConfig, None, overrides))

    print("[6/6] motion segmentation of the val split (DAVIS-2016 unsupervised protocol)")
    results: dict[str, dict[str, float]] = {}
    for label, baseline in _MOTION_METHODS.items():
        folder = out / "motion" / _slug(label)
        source = (["--baseline", baseline] if baseline
                  else ["--checkpoint", str(run / "checkpoints" / "motion_vos.pt"), "--device", device])
        argv = [*source, "--davis-root", str(root), "--year", "2017", "--split", "val", "--flow-root", str(flows),
                "--gaps", "+1", "--size", *map(str, SYNTHETIC_MOTION_SIZE), "--out", str(folder)]
        folder.mkdir(parents=True, exist_ok=True)
        with open(folder / "scores.txt", "w") as log, contextlib.redirect_stdout(log):
            if eval_main(argv + ["--overwrite"]) != 0:
                raise RuntimeError(f"motion evaluation of {label} failed (see {folder / 'scores.txt'})")
        results[label] = json.loads((folder / "settings.json").read_text())["scores"]["raw"]
        print(f"      {label:<20} J {results[label]['J-Mean']:.3f}  F {results[label]['F-Mean']:.3f}  -> {folder}")
    return results


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        import torch

        from densessl.datasets.davis import DavisDataset
        from densessl.datasets.synthetic import SyntheticConfig, write_synthetic_davis
        from densessl.eval.davis_metrics import evaluate_results
        from densessl.eval.visualize import save_bar_chart
        from densessl.models.backbones import create_backbone
        from densessl.video.davis_propagation import propagate_dataset, resolve_device
        from densessl.video.propagation import make_config

        if args.motion_steps > 0 and args.motion_sequences < 2:
            raise InputError(f"--motion-sequences must be at least 2 (train and val), got {args.motion_sequences}")
        out = Path(args.out)
        if out.exists() and any(out.iterdir()):
            if not args.overwrite:
                raise InputError("output folder is not empty (pass --overwrite)", out)
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        device = resolve_device(args.device)
        started = time.perf_counter()

        print(f"[1/6] generating {args.sequences} synthetic sequences "
              f"({args.frames} frames, {args.height}×{args.width}) in {out / 'data'}")
        data_root = out / "data"
        write_synthetic_davis(
            data_root,
            SyntheticConfig(num_sequences=args.sequences, num_frames=args.frames,
                            height=args.height, width=args.width, seed=args.seed,
                            write_flow=False, num_val=max(1, args.sequences // 3)),
        )
        dataset = DavisDataset(data_root, year=2017, split="val")

        # name -> (backbone, weights, out_layer); the trained model is compared with the same
        # network at random init on the same layer.
        methods: dict[str, tuple[str, str | None, str | None]] = {
            "pixels-lab": ("pixels-lab", None, None),
            "resnet18-crw layer3 (random init)": ("resnet18-crw", None, "layer3"),
        }
        if args.train_minutes > 0:
            print(f"[2/6] training CRW for {args.train_minutes:g} min on the train split")
            checkpoint = _train_crw(data_root, out / "crw_run", args.train_minutes, str(device))
            methods["resnet18-crw layer2 (random init)"] = ("resnet18-crw", None, "layer2")
            methods["resnet18-crw layer2 (CRW-trained)"] = ("resnet18-crw", str(checkpoint),
                                                            "layer2")
        else:
            print("[2/6] CRW training skipped (--train-minutes 0)")

        print(f"[3/6] label propagation (CRW protocol) on {len(dataset)} val sequences, "
              f"device {device}")
        config = make_config("crw")
        # frame 0 as the only context: long-range correspondence, which the 20 recent frames of
        # the CRW protocol hide on short synthetic videos (random features track them well)
        first_frame_only = make_config("crw", num_recent=0)
        results: dict[str, dict[str, float]] = {}
        for label, (name, weights, out_layer) in methods.items():
            torch.manual_seed(args.seed)
            kwargs = {} if out_layer is None else {"out_layer": out_layer}
            backbone = create_backbone(name, weights=weights, **kwargs)
            folder = out / _slug(label)
            # one backbone pass per sequence serves both protocols
            timing = propagate_dataset(backbone, dataset, folder, config, device=device,
                                       overlay_dir=folder / "overlays", progress=False,
                                       also=[(first_frame_only, folder / "first_frame_only")])
            scores = evaluate_results(dataset, folder, year=2017, split="val")
            scores.write_csvs(folder)
            long_range = evaluate_results(dataset, folder / "first_frame_only", year=2017, split="val")
            long_range.write_csvs(folder / "first_frame_only")
            results[label] = {**scores.global_row, _FIRST_FRAME_COLUMN: long_range.jf_mean,
                              "frames/s": timing["frames_per_second"]}
            print(f"      {label:<28} J&F {scores.jf_mean:.3f}, from frame 0 only {long_range.jf_mean:.3f}  "
                  f"({timing['frames_per_second']:.1f} frames/s)  -> {folder}")

        motion: dict[str, dict[str, float]] = {}
        if args.motion_steps > 0:
            motion = _motion_stage(out, args, str(device))
        else:
            print("[4-6/6] motion segmentation skipped (--motion-steps 0)")

        print("\nresults")
        table = _markdown_table(results)
        report = ("# densessl demo on synthetic DAVIS-style data\n\n"
                  "## Label propagation (CRW protocol, DAVIS J&F, val split)\n\n"
                  f"'{_FIRST_FRAME_COLUMN}': the same propagation with frame 0 as the only context "
                  "(no recent frames): long-range correspondence.\n\n" + table + "\n")
        print(table)
        save_bar_chart(out / "jf_by_method.png",
                       {label: row["J&F-Mean"] for label, row in results.items()},
                       title="DAVIS J&F on synthetic val (CRW protocol)")
        if motion:
            motion_table = _markdown_table(motion, _MOTION_COLUMNS)
            report += ("\n## Motion segmentation (DAVIS-2016 unsupervised protocol, held-out val split)\n\n"
                       f"CIS trained for {args.motion_steps} steps on exact flow; the baselines threshold the "
                       "flow magnitude, or its residual after a robust camera-motion fit, with Otsu.\n\n"
                       + motion_table + "\n")
            print("\n" + motion_table)
            save_bar_chart(out / "motion_j_by_method.png",
                           {label: row["J-Mean"] for label, row in motion.items()},
                           title="J-Mean on synthetic val (unsupervised)", ylabel="J-Mean")
        (out / "results.md").write_text(report)
        (out / "results.json").write_text(
            json.dumps({"propagation": results, "motion_segmentation": motion}, indent=2) + "\n")
        print(f"\nwrote {out / 'results.md'}, the bar charts and overlays under "
              f"{out}/*/overlays and {out}/motion/*/overlays in {time.perf_counter() - started:.0f} s")
        return 0

    return run_main(body)


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label).strip("_")


_FIRST_FRAME_COLUMN = "J&F frame 0 only"
_PROPAGATION_COLUMNS = ("J&F-Mean", "J-Mean", "F-Mean", "J-Recall", "F-Recall", _FIRST_FRAME_COLUMN, "frames/s")
_MOTION_COLUMNS = ("J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall")


def _markdown_table(results: dict[str, dict[str, float]], columns: Sequence[str] = _PROPAGATION_COLUMNS) -> str:
    lines = ["| method | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for label, row in results.items():
        cells = [f"{row[c]:.1f}" if c == "frames/s" else f"{row[c]:.3f}" for c in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
