"""Shared helpers for the command-line jobs."""

from __future__ import annotations

import sys
from typing import Callable

from densessl.errors import InputError


def run_main(body: Callable[[], int | None]) -> int:
    """Run a job's body; turn :class:`InputError` into a one-line message and exit code 2."""
    try:
        return int(body() or 0)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
