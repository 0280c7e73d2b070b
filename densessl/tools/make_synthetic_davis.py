"""Generate a synthetic DAVIS-2017-style video set with exact masks and ground-truth flow.

    python tools/make_synthetic_davis.py --out data/synthetic --sequences 30 --frames 60
    python tools/make_synthetic_davis.py --out data/motion --flow-cache data/motion_flows --no-flow
"""

from __future__ import annotations

import argparse
import time

from densessl.datasets.synthetic import SyntheticConfig, split_names, write_synthetic_davis
from densessl.tools._common import run_main


def build_parser() -> argparse.ArgumentParser:
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(
        prog="make_synthetic_davis",
        description="Write a synthetic DAVIS-2017-style set (JPEG frames, palette masks, "
        "ImageSets, Middlebury .flo ground-truth flow, mp4 videos).",
    )
    parser.add_argument("--out", required=True, help="output folder (must be empty or missing)")
    parser.add_argument("--sequences", type=int, default=defaults.num_sequences)
    parser.add_argument("--frames", type=int, default=defaults.num_frames)
    parser.add_argument("--height", type=int, default=defaults.height)
    parser.add_argument("--width", type=int, default=defaults.width)
    parser.add_argument("--min-objects", type=int, default=defaults.min_objects)
    parser.add_argument("--max-objects", type=int, default=defaults.max_objects)
    split = parser.add_mutually_exclusive_group()
    split.add_argument("--val-fraction", type=float, default=defaults.val_fraction,
                       help="fraction of sequences listed in val.txt (default 0.5)")
    split.add_argument("--num-val", type=int, default=None,
                       help="exact number of val sequences (instead of --val-fraction)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--motion-scale", type=float, default=defaults.motion_scale,
                        help="scene time between frames: 2 doubles every motion per frame (default 1)")
    parser.add_argument("--camera-zoom", type=float, default=defaults.camera_zoom,
                        help="scale of the camera's zoom and roll (0 = a camera that only pans; default 1)")
    parser.add_argument("--pan-speed", type=float, nargs=2, metavar=("MIN", "MAX"), default=defaults.pan_speed,
                        help="camera pan speed range, fraction of the image diagonal per frame "
                             f"(default {defaults.pan_speed[0]} {defaults.pan_speed[1]})")
    parser.add_argument("--no-flow", action="store_true", help="do not write ground-truth flow")
    parser.add_argument("--no-video", action="store_true", help="do not write mp4 videos")
    parser.add_argument("--flow-cache", metavar="DIR", default=None,
                        help="also write every frame's exact flow to the next frame as the +1 gap of a flow "
                             "cache (DIR/+1/<seq>/<frame>.flo), the layout compute-flow writes and "
                             "train-motion-vos / eval-motion-vos read")
    parser.add_argument("--jpeg-quality", type=int, default=defaults.jpeg_quality)
    parser.add_argument("--fps", type=float, default=defaults.fps, help="frame rate of the mp4s")
    parser.add_argument("--workers", type=int, default=defaults.workers,
                        help="processes (0 = one per CPU, default)")
    parser.add_argument("--overwrite", action="store_true",
                        help="write into a non-empty folder, replacing these sequences")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        config = SyntheticConfig(
            num_sequences=args.sequences,
            num_frames=args.frames,
            height=args.height,
            width=args.width,
            min_objects=args.min_objects,
            max_objects=args.max_objects,
            val_fraction=args.val_fraction,
            num_val=args.num_val,
            seed=args.seed,
            write_flow=not args.no_flow,
            write_video=not args.no_video,
            jpeg_quality=args.jpeg_quality,
            fps=args.fps,
            workers=args.workers,
            motion_scale=args.motion_scale,
            camera_zoom=args.camera_zoom,
            pan_speed=tuple(args.pan_speed),
        )
        start = time.perf_counter()
        names = write_synthetic_davis(
            args.out, config, overwrite=args.overwrite, progress=not args.quiet, flow_root=args.flow_cache
        )
        train, val = split_names(config)
        print(
            f"wrote {len(names)} sequences ({len(train)} train, {len(val)} val) × "
            f"{config.num_frames} frames at {config.height}×{config.width} to {args.out} "
            f"in {time.perf_counter() - start:.1f} s"
        )
        return 0

    return run_main(body)
