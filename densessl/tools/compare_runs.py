"""Compare training runs: their logged curves on shared panels, one line per run.

    densessl compare-runs runs/crw-patch runs/crw-roi --x minutes --out compare.png
    densessl compare-runs runs/a runs/b runs/c --metrics loss cycle_acc 'J&F-Mean' --labels a b c

Each run folder's ``log.jsonl`` (written by every training job) is read; ``--x minutes`` puts the
training time on the x axis (resumed sessions included), for runs of equal time budgets.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from densessl.errors import InputError
from densessl.tools._common import run_main


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compare_runs",
        description="Plot the logged curves of several training runs on shared panels.",
        epilog="example: densessl compare-runs runs/crw-patch runs/crw-roi --x minutes --out compare.png",
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run folders (each with its log.jsonl)")
    parser.add_argument("--out", type=Path, default=Path("compare.png"), help="picture to write (default compare.png)")
    parser.add_argument("--x", choices=("step", "minutes"), default="step",
                        help="x axis: the step (default) or the training time in minutes")
    parser.add_argument("--metrics", nargs="+", default=None,
                        help="only these metrics, e.g. loss cycle_acc J&F-Mean (default: all)")
    parser.add_argument("--labels", nargs="+", default=None, help="one label per run (default: the folder names)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out picture")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        from densessl.eval.visualize import save_run_comparison

        labels = args.labels or [run.name for run in args.runs]
        if len(labels) != len(args.runs):
            raise InputError(f"{len(labels)} labels for {len(args.runs)} runs", "--labels")
        if len(set(labels)) != len(labels):
            raise InputError("the runs' labels are not distinct (give --labels)", "--labels")
        logs = {}
        for label, run in zip(labels, args.runs):
            log = run / "log.jsonl"
            if not log.is_file():
                raise InputError("not a run folder (no log.jsonl)", run)
            logs[label] = log
        if args.out.exists() and not args.overwrite:
            raise InputError("exists (pass --overwrite to replace it)", args.out)
        titles = save_run_comparison(logs, args.out, x=args.x, metrics=args.metrics)
        print(f"wrote {args.out}: {', '.join(titles)}")
        return 0

    return run_main(body)
