"""Score a folder of DAVIS result PNGs with the official J&F definitions.

Writes ``global_results-<set>.csv`` and ``per-sequence_results-<set>.csv`` (the official
format) into the results folder (or ``--out``) and prints a table. Always recomputes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from densessl.eval.davis_metrics import BOUND_TH, TASKS, evaluate_results
from densessl.tools._common import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="eval_davis",
        description="Score DAVIS result PNGs (<results>/<seq>/<frame>.png) with the official "
        "J&F definitions; writes the two official CSVs and prints a table.",
    )
    parser.add_argument(
        "--davis-root",
        required=True,
        type=Path,
        help="DAVIS folder holding JPEGImages/, Annotations/, ImageSets/",
    )
    parser.add_argument(
        "--results",
        required=True,
        type=Path,
        help="folder of result sequences: <results>/<seq>/<frame>.png",
    )
    parser.add_argument(
        "--year",
        type=int,
        choices=(2016, 2017),
        default=2017,
        help="2017: palette masks, several objects; 2016: one object (default 2017)",
    )
    parser.add_argument(
        "--set", dest="split", default="val", help="split name in ImageSets (default val)"
    )
    parser.add_argument(
        "--task",
        choices=TASKS,
        default="semi-supervised",
        help="semi-supervised (default) or unsupervised (one merged foreground per frame, DAVIS-2016 protocol)",
    )
    parser.add_argument("--resolution", default="480p", help="resolution folder (default 480p)")
    parser.add_argument(
        "--sequences",
        default=None,
        help="comma-separated subset of sequences (default: the whole set)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes (default: all cores; 1 = no subprocesses)",
    )
    parser.add_argument(
        "--out", type=Path, default=None, help="folder for the CSVs (default: the results folder)"
    )
    parser.add_argument(
        "--bound-th",
        type=float,
        default=BOUND_TH,
        help=f"boundary tolerance, fraction of the diagonal (default {BOUND_TH})",
    )
    parser.add_argument("--quiet", action="store_true", help="print only the global row")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        sequences = None
        if args.sequences is not None:
            sequences = [name.strip() for name in args.sequences.split(",") if name.strip()]
        scores = evaluate_results(
            args.davis_root,
            args.results,
            year=args.year,
            split=args.split,
            task=args.task,
            resolution=args.resolution,
            num_workers=args.workers,
            sequences=sequences,
            bound_th=args.bound_th,
        )
        global_csv, per_csv = scores.write_csvs(args.out if args.out is not None else args.results)
        print(scores.table(per_object=not args.quiet))
        print(f"\nwrote {global_csv} and {per_csv} ({scores.elapsed_s:.1f} s)")
        return 0

    return run_main(body)
