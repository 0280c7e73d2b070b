#!/usr/bin/env python
"""CRW training speed: model step (fp32 / bf16 + channels_last / + torch.compile / roi mode)
and the data path (decode + device augmentation of 256p clips with N workers, from mp4s or from
folders of JPEG frames).

Model step = device augmentation + encoder + walk loss + backward + Adam step, on synthetic
uint8 clips already on the device; reports clips/s and peak GPU memory. The paper setting is
batch 20 clips × 4 frames × 49 patches of 64×64 (ResNet-18, layer4).

    python benchmarks/bench_crw.py                 # GPU: all model variants + data path
    python benchmarks/bench_crw.py --quick         # CPU-sized smoke run
    python benchmarks/bench_crw.py --skip-data --variants fp32 bf16-cl roi-bf16-cl
    python benchmarks/bench_crw.py --skip-model --source frames   # data path from JPEG folders
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import torch

from densessl.augment.crw import CRWAugment
from densessl.engine.trainer import configure_cudnn
from densessl.models.backbones import create_backbone
from densessl.video.crw import CRW, CRWTrainModel

# name -> (mode, amp dtype, channels_last, compile)
VARIANTS: dict[str, tuple[str, torch.dtype | None, bool, bool]] = {
    "fp32": ("patch", None, False, False),
    "bf16-cl": ("patch", torch.bfloat16, True, False),
    "bf16-cl-compile": ("patch", torch.bfloat16, True, True),
    "roi-fp32": ("roi", None, False, False),
    "roi-bf16-cl": ("roi", torch.bfloat16, True, False),
    "roi-bf16-cl-compile": ("roi", torch.bfloat16, True, True),
}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_model(variant: str, args: argparse.Namespace, device: torch.device) -> dict:
    mode, amp, channels_last, compile_ = VARIANTS[variant]
    torch.manual_seed(0)
    backbone = create_backbone("resnet18-crw", out_layer="layer4")
    augment = CRWAugment(frame_size=args.frame_size, patch_size=args.patch_size, patch_stride=args.patch_stride,
                         with_patches=mode == "patch")
    model = CRWTrainModel(augment, CRW(backbone, mode=mode, channels_last=channels_last)).to(device).train()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if compile_ else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    h, w = args.frame_size, int(args.frame_size * 4 / 3)
    clips = torch.randint(0, 256, (args.batch, args.frames, h, w, 3), dtype=torch.uint8, device=device)

    def step() -> float:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, _ = step_model(clips)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    for _ in range(args.warmup):
        step()
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync(device)
    elapsed = time.perf_counter() - start
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else float("nan")
    return {
        "variant": variant, "mode": mode, "batch": args.batch, "frames": args.frames,
        "patches": augment.num_patches, "patch_size": args.patch_size,
        "clips_per_s": args.batch * args.steps / elapsed, "step_ms": 1000 * elapsed / args.steps,
        "peak_gib": peak, "loss": float(loss.detach()),
    }


def moving_texture(rng: np.random.Generator, frames: int, height: int, width: int) -> Iterator[np.ndarray]:
    """``frames`` BGR uint8 frames of a smooth random texture panning right and down."""
    base = rng.integers(0, 256, (height // 8, width // 8, 3), dtype=np.uint8)
    base = cv2.resize(base, (width * 2, height * 2), interpolation=cv2.INTER_CUBIC)
    for t in range(frames):
        yield np.ascontiguousarray(base[t : t + height, 2 * t : 2 * t + width])


def write_videos(folder: Path, count: int, frames: int, height: int = 256, width: int = 341) -> None:
    """``count`` mp4s (Kinetics-like 4:3 at 256p, 24 fps) in ``folder``."""
    rng = np.random.default_rng(0)
    for i in range(count):
        writer = cv2.VideoWriter(str(folder / f"v{i:03d}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"), 24.0, (width, height))
        for frame in moving_texture(rng, frames, height, width):
            writer.write(frame)
        writer.release()


def write_frame_folders(folder: Path, count: int, frames: int, height: int = 256, width: int = 455) -> None:
    """``count`` folders of JPEG frames (DAVIS-like 16:9 at short side 256, JPEG quality 95)."""
    rng = np.random.default_rng(0)
    for i in range(count):
        sequence = folder / f"s{i:03d}"
        sequence.mkdir()
        for t, frame in enumerate(moving_texture(rng, frames, height, width)):
            cv2.imwrite(str(sequence / f"{t:05d}.jpg"), frame, [cv2.IMWRITE_JPEG_QUALITY, 95])


def bench_data(args: argparse.Namespace, device: torch.device) -> list[dict]:
    from torch.utils.data import DataLoader

    from densessl.datasets.video import ClipSampler, build_clip_dataset, collate_clips

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-crw-") as tmp:
        if args.data_root is not None:
            folder = args.data_root
        else:
            folder = Path(tmp) / args.source
            folder.mkdir()
            if args.source == "videos":
                write_videos(folder, args.videos, args.video_frames)
            else:
                write_frame_folders(folder, args.videos, args.video_frames)
        # frame folders are taken to be at 8 fps already, as DAVIS-style training sets usually are
        dataset = build_clip_dataset(**{args.source: folder}, clip_len=args.frames, target_fps=8.0,
                                     short_side=256, cache_dir=Path(tmp) / "cache")
        augment = CRWAugment(frame_size=args.frame_size, patch_size=args.patch_size,
                             patch_stride=args.patch_stride).to(device)
        for workers in args.workers:
            sampler = ClipSampler(dataset.clip_counts(), clips_per_video=0, seed=0)
            loader = DataLoader(dataset, batch_size=args.batch, sampler=sampler, num_workers=workers,
                                collate_fn=collate_clips, drop_last=True, pin_memory=device.type == "cuda")
            clips = 0
            decode_s = augment_s = 0.0
            start = time.perf_counter()
            tick = start
            first_batch_at = None
            for batch in loader:
                got = time.perf_counter()
                decode_s += got - tick
                if first_batch_at is None:
                    first_batch_at, first_clips = got, batch.shape[0]
                if not args.loader_only:
                    augment(batch.to(device, non_blocking=True))
                    sync(device)
                tick = time.perf_counter()
                augment_s += tick - got
                clips += batch.shape[0]
                if clips >= args.data_clips:
                    break
            if first_batch_at is None:
                raise SystemExit(f"{folder}: fewer clips than one batch of {args.batch} (lower --batch)")
            elapsed = time.perf_counter() - start
            row = {
                "workers": workers, "clips": clips, "clips_per_s": clips / elapsed,
                # with 0 workers: one process's decode rate; with N: the loader waited on that long
                "loader_clips_per_s": clips / max(decode_s, 1e-9),
                # after the first batch, so without the workers' start
                "steady_clips_per_s": (clips - first_clips) / max(tick - first_batch_at, 1e-9),
            }
            if not args.loader_only:
                row["augment_clips_per_s"] = clips / max(augment_s, 1e-9)
            results.append(row)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="CPU-sized run (batch 2, 128 px frames, few steps)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--variants", nargs="*", default=None, choices=list(VARIANTS))
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--frames", type=int, default=4)
    parser.add_argument("--frame-size", type=int, default=256)
    parser.add_argument("--patch-size", type=int, default=64)
    parser.add_argument("--patch-stride", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--skip-model", action="store_true")
    parser.add_argument("--skip-data", action="store_true")
    parser.add_argument("--workers", type=int, nargs="*", default=[0, 4, 8, 16])
    parser.add_argument("--source", choices=["videos", "frames"], default="videos",
                        help="data path from mp4s (256×341) or from folders of JPEG frames (256×455, at 8 fps)")
    parser.add_argument("--videos", type=int, default=16, help="number of mp4s or frame folders")
    parser.add_argument("--data-root", type=Path, default=None,
                        help="measure on these videos (--source videos) or frame folders (--source frames) "
                             "instead of generated ones")
    parser.add_argument("--video-frames", type=int, default=72)
    parser.add_argument("--data-clips", type=int, default=400)
    parser.add_argument("--loader-only", action="store_true",
                        help="time the data loader alone (no augmentation): what N workers deliver")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)

    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    configure_cudnn(device, benchmark=True)  # as train.cudnn_benchmark's default
    if args.quick:
        args.batch, args.frame_size, args.patch_size, args.patch_stride = 2, 128, 32, 16
        args.steps, args.warmup = 2, 1
        args.workers, args.videos, args.video_frames, args.data_clips = [0, 2], 4, 40, 16
    variants = args.variants or (
        list(VARIANTS) if device.type == "cuda" else ["fp32", "bf16-cl", "roi-fp32", "roi-bf16-cl"]
    )
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}, torch {torch.__version__}, batch {args.batch} clips × {args.frames} frames, "
          f"{args.frame_size}px frames, patches {args.patch_size}/{args.patch_stride}")
    report: dict = {"device": name, "torch": torch.__version__, "args": vars(args) | {"out": str(args.out)}}
    if not args.skip_model:
        report["model"] = []
        print(f"{'variant':<22}{'clips/s':>10}{'step ms':>10}{'peak GiB':>10}")
        for variant in variants:
            try:
                row = bench_model(variant, args, device)
            except Exception as error:  # e.g. compile unavailable: report and go on
                print(f"{variant:<22} failed: {type(error).__name__}: {error}".splitlines()[0])
                continue
            report["model"].append(row)
            print(f"{variant:<22}{row['clips_per_s']:>10.1f}{row['step_ms']:>10.1f}{row['peak_gib']:>10.2f}")
            if device.type == "cuda":
                torch.cuda.empty_cache()
    if not args.skip_data:
        source = (f"{args.source} under {args.data_root}" if args.data_root is not None
                  else "mp4s 256×341" if args.source == "videos" else "JPEG frame folders 256×455")
        count = "" if args.data_root is not None else f"{args.videos} "
        then = "" if args.loader_only else ", then device augmentation"
        print(f"data path: {count}{source}, decode + resize + collate{then}")
        report["data"] = bench_data(args, device)
        for row in report["data"]:
            augment = "" if args.loader_only else f", augmentation alone {row['augment_clips_per_s']:8.1f}"
            print(f"  workers {row['workers']:>2}: {row['clips_per_s']:8.1f} clips/s end to end "
                  f"({row['steady_clips_per_s']:8.1f} after the first batch), loader alone "
                  f"{row['loader_clips_per_s']:8.1f}{augment} clips/s")
    if args.out is not None:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
