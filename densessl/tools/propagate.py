"""Propagate first-frame masks through DAVIS-style sequences with a backbone's features.

Example::

    python tools/propagate.py --davis-root data/synthetic --backbone resnet18-crw \
        --weights crw.pth --protocol crw --out results/crw --overlays
"""

from __future__ import annotations

import argparse
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
        prog="propagate", description="Propagate first-frame masks with a backbone's features "
        "and write official-format indexed PNGs (<out>/<seq>/<frame>.png).")
    add_backbone_args(parser)
    add_davis_args(parser)
    add_protocol_args(parser)
    parser.add_argument("--out", required=True, help="output folder for the PNGs")
    parser.add_argument("--overlays", action="store_true",
                        help="also write overlay strips to <out>/overlays/")
    parser.add_argument("--mp4", action="store_true", help="also write overlay MP4s")
    parser.add_argument("--overwrite", action="store_true",
                        help="allow writing into a non-empty output folder")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from densessl.video.davis_propagation import propagate_dataset, save_settings

        config = config_from_args(args)
        dataset = dataset_from_args(args)
        out = Path(args.out)
        prepare_output(out, args.overwrite, Path(args.davis_root))
        backbone = build_backbone(args)
        overlays = out / "overlays" if (args.overlays or args.mp4) else None
        timing = propagate_dataset(backbone, dataset, out, config, device=args.device,
                                   overlay_dir=overlays, overlay_video=args.mp4,
                                   feature_batch=args.feature_batch)
        save_settings(out / "settings.json", protocol=args.protocol, config=config,
                      backbone=args.backbone, weights=args.weights, seed=args.seed,
                      davis_root=args.davis_root, year=args.year, split=args.split,
                      timing=timing)
        print(f"{timing['frames']} frames in {timing['seconds']:.1f} s "
              f"({timing['frames_per_second']:.1f} frames/s) -> {out}")
        return 0

    return run_main(body)
