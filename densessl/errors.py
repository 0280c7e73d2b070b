"""Errors raised for bad user input.

Every tool catches :class:`InputError`, prints its one-line message (which names the offending
file or argument) and exits with code 2.
"""

from __future__ import annotations

import os


class InputError(ValueError):
    """Bad user input: a missing or malformed file, a wrong argument."""

    def __init__(self, message: str, path: str | os.PathLike | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{self.path}: {message}" if self.path is not None else message)
