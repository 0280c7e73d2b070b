"""Training throughput of the CIS motion segmentation model (generator + inpainter).

``python benchmarks/bench_motion_vos.py [--device cuda] [--amp bf16] [--batch 16] [--size 192 384]
[--reference-flow]``

Times full optimisation steps (forward, backward, gradient clipping, Adam) on random inputs
already on the device, cycling through the adversarial schedule (3 generator steps per inpainter
step), after warm-up; prints steps/s, samples/s and the peak CUDA memory. The reference's recipe
is 12.5k steps at 384×192, batch 16.
"""

from __future__ import annotations

import argparse
import time

import torch

from densessl.engine.trainer import configure_cudnn
from densessl.video.motion_vos import MotionVOSModel, MotionVOSNetConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, nargs=2, default=(192, 384), metavar=("H", "W"))
    parser.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--reference-flow", action="store_true",
                        help="no flow normalisations (configs/motion_vos_reference.yaml)")
    parser.add_argument("--warmup", type=int, default=8)
    parser.add_argument("--steps", type=int, default=40)
    args = parser.parse_args()

    device = torch.device(args.device)
    configure_cudnn(device, benchmark=True)  # as train.cudnn_benchmark's default
    net = MotionVOSNetConfig()
    if args.reference_flow:
        net.generator_flow_norm, net.inpainter_context = False, "none"
    model = MotionVOSModel(net).to(device)
    if args.channels_last:
        model = model.to(memory_format=torch.channels_last)
    step_model = torch.compile(model) if args.compile else model
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    h, w = args.size
    batch = {
        "image": torch.rand(args.batch, 3, h, w, device=device),
        "flow": torch.randn(args.batch, 2, h, w, device=device) * 5,
    }
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(args.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=args.amp == "fp16")

    def step() -> None:
        with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
            loss, _ = step_model(batch)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.2)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(args.warmup):
        step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    elapsed = time.perf_counter() - start
    params = sum(p.numel() for p in model.parameters()) / 1e6
    line = (
        f"device {device} ({torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}), "
        f"{params:.2f} M parameters, batch {args.batch} at {h}x{w}, amp {args.amp}: "
        f"{args.steps / elapsed:.2f} steps/s, {args.steps * args.batch / elapsed:.1f} samples/s"
    )
    if device.type == "cuda":
        line += f", peak memory {torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB"
    print(line)
    print(f"12.5k steps would take {12500 / (args.steps / elapsed) / 60:.1f} min")


if __name__ == "__main__":
    main()
