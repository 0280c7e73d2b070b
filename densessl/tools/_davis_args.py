"""DAVIS data options and output-folder checks shared by the tools (no torch import, so that
worker processes of tools such as ``compute-flow`` start quickly)."""

from __future__ import annotations

import argparse
from pathlib import Path

from densessl.errors import InputError


def add_davis_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("data")
    group.add_argument("--davis-root", required=True, help="DAVIS-style dataset folder")
    group.add_argument("--year", type=int, default=2017, choices=(2016, 2017))
    group.add_argument("--set", "--split", dest="split", default="val", help="image set (default val)")
    group.add_argument("--resolution", default="480p")
    group.add_argument("--sequences", help="comma-separated subset of sequences")


def dataset_from_args(args: argparse.Namespace):
    """The DAVIS set named by the data options (``--davis-root``, ``--year``, ``--set`` ...)."""
    from densessl.datasets.davis import DavisDataset

    sequences = None
    if args.sequences:
        sequences = [name.strip() for name in args.sequences.split(",") if name.strip()]
    return DavisDataset(args.davis_root, year=args.year, split=args.split,
                        resolution=args.resolution, sequences=sequences)


def lies_inside(out: Path, davis_root: Path) -> bool:
    """Whether ``out`` is the dataset folder or lies below it (symlinks resolved)."""
    out_resolved, root_resolved = out.resolve(), davis_root.resolve()
    return out_resolved == root_resolved or root_resolved in out_resolved.parents


def prepare_output(out: Path, overwrite: bool, davis_root: Path) -> None:
    """Refuse non-empty outputs without --overwrite, and outputs inside the dataset."""
    if lies_inside(out, davis_root):
        raise InputError("output folder lies inside the dataset folder; choose another", out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise InputError("output folder is not empty (pass --overwrite)", out)
    out.mkdir(parents=True, exist_ok=True)
