"""One command to score a backbone on DAVIS: propagate, then the official J&F.

Example::

    densessl eval-davis --backbone resnet18-crw --weights crw.pth --protocol crw \
        --davis-root DAVIS --year 2017 --set val --out runs/eval-crw
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from densessl.tools._common import run_main
from densessl.tools._propagation_args import (
    add_backbone_args,
    add_protocol_args,
    build_backbone,
    config_from_args,
)
from densessl.tools._davis_args import add_davis_args, dataset_from_args, prepare_output


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eval-davis", description="Propagate first-frame masks with a backbone and score "
        "them with the official DAVIS J&F. Writes <out>/<seq>/<frame>.png, the two official "
        "CSVs and settings.json.")
    add_backbone_args(parser)
    add_davis_args(parser)
    add_protocol_args(parser)
    parser.add_argument("--out", help="output folder (default: a temporary folder)")
    parser.add_argument("--overlays", action="store_true", help="write overlay strips")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow writing into a non-empty output folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from densessl.eval.davis_metrics import evaluate_results
        from densessl.video.davis_propagation import propagate_dataset, save_settings

        config = config_from_args(args)
        dataset = dataset_from_args(args)
        with tempfile.TemporaryDirectory(prefix="densessl-eval-") as scratch:
            out = Path(args.out) if args.out else Path(scratch)
            prepare_output(out, args.overwrite, Path(args.davis_root))
            backbone = build_backbone(args)
            timing = propagate_dataset(
                backbone, dataset, out, config, device=args.device,
                overlay_dir=out / "overlays" if args.overlays else None,
                feature_batch=args.feature_batch,
            )
            scores = evaluate_results(dataset, out, year=args.year, split=args.split,
                                      task="semi-supervised", resolution=args.resolution)
            scores.write_csvs(out)
            save_settings(out / "settings.json", protocol=args.protocol, config=config,
                          backbone=args.backbone, weights=args.weights, seed=args.seed,
                          davis_root=args.davis_root, year=args.year, split=args.split,
                          timing=timing, scores=scores.global_row)
            print(scores.table())
            print(f"{timing['frames']} frames, {timing['frames_per_second']:.1f} frames/s"
                  + (f"; results in {out}" if args.out else ""))
        return 0

    return run_main(body)
