"""Predict motion segmentation masks for every frame and score them (DAVIS-2016 unsupervised).

``python tools/eval_motion_vos.py --checkpoint runs/cis/checkpoints/motion_vos.pt --davis-root
DAVIS --flow-root FLOWS --out results/cis [--flip] [--crf]``; ``--baseline flow-magnitude``
(Otsu threshold of |flow|) or ``--baseline camera-compensated`` (Otsu threshold of the residual of
a robust camera-motion fit) scores a baseline instead of a model.

Writes ``<out>/raw/<seq>/<frame>.png`` (0/255 masks in the official format) with the official
CSVs beside them, ``<out>/temporal/...`` likewise with ``--temporal`` (flow-guided temporal
smoothing of the probabilities), ``<out>/crf/...`` with ``--crf`` (DenseCRF of the raw
probabilities) and ``<out>/temporal_crf/...`` with both, overlay strips of the raw masks under
``<out>/overlays/``, and prints the raw and each refined score separately. ``--objective`` also
reports the CIS objective of the model's masks against the baselines' and the annotations' (a
diagnostic: does the generator miss better answers to its own objective?); ``--descend-steps N``
first trains the generator alone for N more steps against the checkpoint's frozen inpainter (a
diagnostic: can it reach those answers when the inpainter stops adapting?). No choice is made using
the ground truth: it is read only to score the final masks.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np

from densessl.datasets.flow_cache import DEFAULT_GAPS, parse_gaps
from densessl.errors import InputError
from densessl.tools._common import run_main
from densessl.tools._davis_args import add_davis_args, dataset_from_args, prepare_output


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eval_motion_vos",
        description="Segment moving objects in every frame from cached flow and score the masks "
        "with the DAVIS-2016 unsupervised protocol (J and F per sequence).",
        epilog="example: tools/eval_motion_vos.py --checkpoint runs/cis/checkpoints/motion_vos.pt "
        "--davis-root /data/DAVIS2016 --flow-root /data/DAVIS2016_flows --out results/cis --flip",
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="motion_vos.pt (exported) or a training checkpoint last.pt")
    source.add_argument("--baseline", choices=("flow-magnitude", "camera-compensated"),
                        help="score a baseline instead of a model: flow-magnitude (Otsu on |flow|) or "
                             "camera-compensated (Otsu on |flow − robust quadratic camera-motion fit|)")
    add_davis_args(parser)
    parser.set_defaults(year=2016)
    parser.add_argument("--flow-root", required=True, help="cached flow (<flow-root>/<gap>/<seq>/<frame>.flo)")
    parser.add_argument("--gaps", nargs="+", default=[f"{g:+d}" for g in DEFAULT_GAPS],
                        help="flow gaps averaged per frame (default +1 -1 +2 -2)")
    parser.add_argument("--size", nargs=2, type=int, default=(192, 384), metavar=("H", "W"),
                        help="network input size (default 192 384, the training size)")
    parser.add_argument("--flip", action="store_true", help="also average the mirrored prediction")
    parser.add_argument("--threshold", type=float, default=0.5, help="foreground probability threshold")
    parser.add_argument("--temporal", action="store_true",
                        help="also smooth over time: average each frame's probabilities with those of the "
                             "frames at --gaps, warped into it by the cached flow (scored separately, temporal/)")
    parser.add_argument("--crf", action="store_true",
                        help="also refine with DenseCRF (crf/; with --temporal also temporal_crf/; "
                             "pip install 'densessl[crf]')")
    parser.add_argument("--out", required=True, help="output folder (raw/, crf/, overlays/, CSVs)")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty output folder")
    parser.add_argument("--overlays", type=int, default=4, help="overlay frames per sequence (0: none)")
    parser.add_argument("--generator", choices=("average", "trained"), default="average",
                        help="with a checkpoint trained with model.generator_ema: predict with the moving "
                        "average of the generator's weights (default) or with the weights as trained")
    parser.add_argument("--objective", action="store_true",
                        help="also report the CIS objective (the generator's loss under the checkpoint's "
                        "inpainter) of the model's masks against the flow baselines' masks and the "
                        "annotations, at the first of --gaps (objective.md / objective.json)")
    parser.add_argument("--descend-steps", type=int, default=0, metavar="N",
                        help="diagnostic: first train the generator alone for N more steps against the "
                        "checkpoint's frozen inpainter on these frames (flow at the first of --gaps, no "
                        "annotation read), then predict and score with it (descent.json has the losses)")
    parser.add_argument("--descend-lr", type=float, default=1e-4, help="Adam lr of --descend-steps")
    parser.add_argument("--descend-batch-size", type=int, default=8, help="batch size of --descend-steps")
    parser.add_argument("--descend-objective", choices=("model", "soft", "thresholded"), default="model",
                        help="what --descend-steps minimises: the checkpoint's own generator loss (default), "
                        "the soft masks' terms, or the thresholded masks' terms (straight-through gradients)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    return parser


def _write_masks(folder: Path, sequence, masks: np.ndarray) -> None:
    folder = folder / sequence.name
    folder.mkdir(parents=True, exist_ok=True)
    for name, mask in zip(sequence.frame_names, masks):
        path = folder / f"{name}.png"
        if not cv2.imwrite(str(path), np.where(mask, 255, 0).astype(np.uint8)):
            raise InputError("cannot write the mask", path)


def _descend(model, dataset, flow_root: Path, args: argparse.Namespace, gap: int, device, out: Path):
    """The model with its generator trained further against its frozen inpainter (``--descend-steps``)."""
    from densessl.video.motion_vos_eval import DescentConfig, descend_generator

    hard_weights = {"model": None, "soft": False, "thresholded": True}[args.descend_objective]
    config = DescentConfig(steps=args.descend_steps, lr=args.descend_lr, batch_size=args.descend_batch_size,
                           hard_weights=hard_weights)
    result = descend_generator(model, dataset, flow_root, tuple(args.size), gap, config, device, progress=True)
    window = max(1, min(50, len(result.losses) // 5))
    first, last = np.mean(result.losses[:window]), np.mean(result.losses[-window:])
    print(f"generator descent against the frozen inpainter ({result.frames} frames, gap {gap:+d}): "
          f"loss {first:.3f} over the first {window} steps, {last:.3f} over the last {window}")
    record = {"steps": config.steps, "lr": config.lr, "batch_size": config.batch_size, "grad_clip": config.grad_clip,
              "seed": config.seed, "objective": args.descend_objective, "gap": gap, "frames": result.frames,
              "losses": result.losses}
    (out / "descent.json").write_text(json.dumps(record) + "\n")
    return result.model


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from densessl.eval.davis_metrics import DavisScores
        from densessl.eval.visualize import evenly_spaced, save_overlay_strip
        from densessl.video.davis_propagation import resolve_device
        from densessl.video.motion_vos_eval import (
            MotionPredictConfig, baseline_predictor, evaluate_predictor, load_motion_vos, model_predictor,
            score_sequence, smooth_over_time,
        )

        if args.objective and not args.checkpoint:
            raise InputError("--objective needs --checkpoint: it scores masks under a model's objective")
        if args.descend_steps and not args.checkpoint:
            raise InputError("--descend-steps needs --checkpoint: it trains a model's generator further")
        if args.descend_steps < 0 or args.descend_lr <= 0 or args.descend_batch_size < 1:
            raise InputError("--descend-steps must be >= 0, --descend-lr > 0 and --descend-batch-size >= 1, got "
                             f"{args.descend_steps}, {args.descend_lr} and {args.descend_batch_size}")
        if not 0.0 < args.threshold < 1.0:
            raise InputError(f"--threshold must lie in (0, 1), got {args.threshold}")
        if min(args.size) < 8:
            raise InputError(f"--size must be at least 8×8, got {args.size}")
        gaps = tuple(parse_gaps(args.gaps))
        flow_root = Path(args.flow_root)
        if not flow_root.is_dir():
            raise InputError("flow folder not found (compute it with tools/compute_flow.py)", flow_root)
        if args.crf:
            from densessl.eval.crf import crf_available

            if not crf_available():
                raise InputError("--crf needs pydensecrf: pip install 'densessl[crf]'")
        dataset = dataset_from_args(args)
        out = Path(args.out)
        prepare_output(out, args.overwrite, Path(args.davis_root))
        config = MotionPredictConfig(size=tuple(args.size), gaps=gaps, flip=args.flip, threshold=args.threshold)
        if args.checkpoint:
            device = resolve_device(args.device)
            model = load_motion_vos(args.checkpoint, generator=args.generator)
            if args.descend_steps:
                model = _descend(model, dataset, flow_root, args, gaps[0], device, out)
            predictor = model_predictor(model.to(device), config, device)
        else:
            predictor = baseline_predictor(args.baseline)

        refinements = (["temporal"] if args.temporal else []) + (["crf"] if args.crf else [])
        if args.temporal and args.crf:
            refinements.append("temporal_crf")
        refined_objects: dict[str, list] = {kind: [] for kind in refinements}

        def on_sequence(sequence, probs: np.ndarray) -> None:
            masks = probs > config.threshold
            _write_masks(out / "raw", sequence, masks)
            if args.overlays > 0:
                picks = evenly_spaced(sequence.num_frames, args.overlays)
                save_overlay_strip(out / "overlays" / f"{sequence.name}.png", [sequence.frame(i) for i in picks],
                                   [masks[i].astype(np.uint8) for i in picks])
            refined_probs = {}
            if args.temporal:
                refined_probs["temporal"] = smooth_over_time(sequence, probs, flow_root, gaps)
            if args.crf:
                from densessl.eval.crf import refine_foreground

                for kind, source in (("crf", probs), ("temporal_crf", refined_probs.get("temporal"))):
                    if source is not None:
                        refined_probs[kind] = np.stack([refine_foreground(sequence.frame(t), source[t])
                                                        for t in range(sequence.num_frames)])
            for kind, refined in refined_probs.items():
                # CRF outputs are thresholded at 0.5 (a two-label posterior), the others at --threshold
                refined_masks = refined > (0.5 if kind.endswith("crf") else config.threshold)
                _write_masks(out / kind, sequence, refined_masks)
                refined_objects[kind].extend(score_sequence(sequence, refined_masks))

        scores = evaluate_predictor(dataset, flow_root, predictor, config, on_sequence=on_sequence, progress=True)
        results = {"raw": scores}
        for kind in refinements:
            results[kind] = DavisScores(refined_objects[kind])
        summary = {}
        for kind, result in results.items():
            result.task, result.year, result.split = "unsupervised", dataset.year, args.split
            result.write_csvs(out / kind)
            summary[kind] = result.global_row
            print(f"\n{kind} masks ({f'{args.baseline} baseline' if args.baseline else args.checkpoint}):")
            print(result.table())
        objective = None
        if args.objective:
            from dataclasses import asdict

            from densessl.video.motion_vos_eval import objective_report, objective_table

            rows = objective_report(model, dataset, flow_root, tuple(args.size), gaps[0], device, progress=True)
            table = objective_table(rows)
            print(f"\nCIS objective of each source of masks (gap {gaps[0]:+d}; lower generator loss = "
                  f"preferred by the objective):\n{table}")
            (out / "objective.md").write_text(table + "\n")
            objective = [asdict(row) for row in rows]
            (out / "objective.json").write_text(json.dumps(objective, indent=2) + "\n")
        settings = {
            "checkpoint": args.checkpoint, "baseline": args.baseline, "davis_root": args.davis_root,
            "year": dataset.year, "split": args.split, "flow_root": str(flow_root), "gaps": list(gaps),
            "size": list(args.size), "flip": args.flip, "threshold": args.threshold,
            "temporal": args.temporal, "crf": args.crf, "generator": args.generator if args.checkpoint else None,
            "descend_steps": args.descend_steps, "scores": summary, "objective": objective,
        }
        (out / "settings.json").write_text(json.dumps(settings, indent=2) + "\n")
        return 0

    return run_main(body)


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main())
