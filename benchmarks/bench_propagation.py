#!/usr/bin/env python
"""Label-propagation speed and memory, end to end (decode, features, search, PNG writing).

    python benchmarks/bench_propagation.py                       # mini DAVIS if present
    python benchmarks/bench_propagation.py --davis-root DIR --year 2017 --device cuda
    python benchmarks/bench_propagation.py --synthetic 4 --frames 30   # generated 480p set

Prints frames/s, seconds per frame and (on CUDA) peak GPU memory, plus the time of the
neighbour search alone on random 480p-sized features.
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from densessl.datasets.davis import DavisDataset
from densessl.models.backbones import create_backbone
from densessl.video.davis_propagation import propagate_dataset, resolve_device
from densessl.tools._propagation_args import protocol_config
from densessl.video.propagation import PropagationConfig, propagate_labels

MINI = Path(__file__).resolve().parents[2] / "shared" / "data" / "davis2016_mini"


def search_only(device: torch.device, frames: int, channels: int, config: PropagationConfig) -> float:
    """Seconds per frame of the neighbour search + label gathering on 60×107 features."""
    generator = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(frames, channels, 60, 107, generator=generator), dim=1)
    features = features.to(device)
    first = torch.rand(3, 60, 107, device=device)
    propagate_labels(features[:3], first, 3, config)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    propagate_labels(features, first, frames, config)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / (frames - 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--davis-root", type=Path)
    parser.add_argument("--year", type=int, default=2016)
    parser.add_argument("--sequences", help="comma-separated subset")
    parser.add_argument("--synthetic", type=int, default=0,
                        help="generate this many 480p sequences instead of reading a set")
    parser.add_argument("--frames", type=int, default=30, help="frames per synthetic sequence")
    parser.add_argument("--backbone", default="resnet18-crw")
    parser.add_argument("--protocol", default="crw")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    parser.add_argument("--search-frames", type=int, default=12)
    parser.add_argument("--opt", action="append", default=[], metavar="KEY=VALUE",
                        help="protocol override, e.g. search_precision=bf16 or tile=6")
    args = parser.parse_args()
    config = protocol_config(args.protocol, args.opt)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)

    with tempfile.TemporaryDirectory() as scratch:
        if args.synthetic:
            from densessl.datasets.synthetic import SyntheticConfig, write_synthetic_davis

            root, year = Path(scratch) / "data", 2017
            write_synthetic_davis(root, SyntheticConfig(
                num_sequences=args.synthetic, num_frames=args.frames, num_val=args.synthetic,
                write_flow=False, write_video=False), progress=False)
        else:
            root, year = (args.davis_root or MINI), args.year
        sequences = args.sequences.split(",") if args.sequences else None
        dataset = DavisDataset(root, year=year, split="val", sequences=sequences)
        torch.manual_seed(0)
        backbone = create_backbone(args.backbone)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        timing = propagate_dataset(backbone, dataset, Path(scratch) / "out",
                                   config, device=device, progress=False)
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None

    search = search_only(device, args.search_frames, 256, config)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads")
    print(f"device: {name}; torch {torch.__version__}; {args.backbone}, protocol {args.protocol}"
          + (f" with {', '.join(args.opt)}" if args.opt else ""))
    print("| set | frames | seconds | frames/s | s/frame | peak GPU GiB | search-only s/frame |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    print(f"| {root.name} | {timing['frames']} | {timing['seconds']:.1f} | "
          f"{timing['frames_per_second']:.2f} | {1 / timing['frames_per_second']:.3f} | "
          f"{'-' if peak is None else f'{peak:.2f}'} | {search:.3f} |")


if __name__ == "__main__":
    main()
