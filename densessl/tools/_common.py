"""Shared helpers for the command-line jobs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from densessl.errors import InputError


def run_main(body: Callable[[], int | None]) -> int:
    """Run a job's body; turn :class:`InputError` into a one-line message and exit code 2."""
    try:
        return int(body() or 0)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def training_main(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    epilog: str,
    config_class: type,
    train: Callable[..., Any],
) -> int:
    """The command line shared by the training jobs: ``--config YAML [key=value ...] [--resume]
    [--overwrite]``; ``train(config, resume=..., overwrite=...)`` runs the job."""
    from densessl.engine.config import load_config

    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog)
    parser.add_argument("--config", type=Path, default=None, help="YAML config (default: the built-in recipe)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.lr=3e-4")
    parser.add_argument("--resume", action="store_true", help="continue runs/<name> from checkpoints/last.pt")
    parser.add_argument("--overwrite", action="store_true", help="start over in an existing run folder")
    args = parser.parse_intermixed_args(argv)

    def body() -> int:
        config = load_config(config_class, args.config, args.overrides)
        if args.resume and args.overwrite:
            raise InputError("--resume and --overwrite exclude each other")
        train(config, resume=args.resume, overwrite=args.overwrite)
        return 0

    return run_main(body)
