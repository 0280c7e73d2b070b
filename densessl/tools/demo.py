"""The end-to-end demo on generated data: label propagation with several backbones, scored
with the official DAVIS J&F, a results table, overlay pictures and a bar chart.

Example::

    python tools/demo.py --out demo_out --overwrite

Writes ``<out>/data`` (the synthetic DAVIS-style set), ``<out>/<method>/`` (predictions,
official CSVs, overlays), ``<out>/results.md`` and ``<out>/jf_by_method.png``.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

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
    parser.add_argument("--device", default="auto")
    return parser


# A CPU-sized CRW recipe: small frames and patches, layer2 features (stride 8), a larger lr.
_DEMO_CRW_SETTINGS = [
    "data.target_fps=0", "data.short_side=72", "model.mode=patch", "model.out_layer=layer2",
    "augment.frame_size=64", "augment.patch_size=16", "augment.patch_stride=8",
    "train.batch_size=8", "train.lr=1e-3", "train.epochs=1000", "train.num_workers=0",
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

        out = Path(args.out)
        if out.exists() and any(out.iterdir()):
            if not args.overwrite:
                raise InputError("output folder is not empty (pass --overwrite)", out)
            shutil.rmtree(out)
        out.mkdir(parents=True, exist_ok=True)
        device = resolve_device(args.device)
        started = time.perf_counter()

        print(f"[1/4] generating {args.sequences} synthetic sequences "
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
            print(f"[2/4] training CRW for {args.train_minutes:g} min on the train split")
            checkpoint = _train_crw(data_root, out / "crw_run", args.train_minutes, str(device))
            methods["resnet18-crw layer2 (random init)"] = ("resnet18-crw", None, "layer2")
            methods["resnet18-crw layer2 (CRW-trained)"] = ("resnet18-crw", str(checkpoint),
                                                            "layer2")
        else:
            print("[2/4] CRW training skipped (--train-minutes 0)")

        print(f"[3/4] label propagation (CRW protocol) on {len(dataset)} val sequences, "
              f"device {device}")
        config = make_config("crw")
        results: dict[str, dict[str, float]] = {}
        for label, (name, weights, out_layer) in methods.items():
            torch.manual_seed(args.seed)
            kwargs = {} if out_layer is None else {"out_layer": out_layer}
            backbone = create_backbone(name, weights=weights, **kwargs)
            folder = out / _slug(label)
            timing = propagate_dataset(backbone, dataset, folder, config, device=device,
                                       overlay_dir=folder / "overlays", progress=False)
            scores = evaluate_results(dataset, folder, year=2017, split="val")
            scores.write_csvs(folder)
            results[label] = {**scores.global_row, "frames/s": timing["frames_per_second"]}
            print(f"      {label:<28} J&F {scores.jf_mean:.3f}  "
                  f"({timing['frames_per_second']:.1f} frames/s)  -> {folder}")

        print("[4/4] results")
        table = _markdown_table(results)
        print(table)
        (out / "results.md").write_text(
            "# densessl demo: label propagation on synthetic DAVIS-style data\n\n" + table + "\n")
        (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
        save_bar_chart(out / "jf_by_method.png",
                       {label: row["J&F-Mean"] for label, row in results.items()},
                       title="DAVIS J&F on synthetic val (CRW protocol)")
        print(f"\nwrote {out / 'results.md'}, {out / 'jf_by_method.png'} and overlays under "
              f"{out}/*/overlays in {time.perf_counter() - started:.0f} s")
        return 0

    return run_main(body)


def _slug(label: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in label).strip("_")


def _markdown_table(results: dict[str, dict[str, float]]) -> str:
    columns = ["J&F-Mean", "J-Mean", "F-Mean", "J-Recall", "F-Recall", "frames/s"]
    lines = ["| method | " + " | ".join(columns) + " |",
             "|---|" + "---:|" * len(columns)]
    for label, row in results.items():
        cells = [f"{row[c]:.1f}" if c == "frames/s" else f"{row[c]:.3f}" for c in columns]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
