"""Atomic checkpoint writing and ``weights_only`` loading."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from densessl.errors import InputError


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``state`` to ``path`` atomically (temporary file in the same folder + ``os.replace``).

    ``state`` must hold only tensors, python scalars, strings and dicts/lists/tuples of them,
    so that it loads with ``torch.load(weights_only=True)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        torch.save(state, tmp)
        with open(tmp, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; InputError naming the file when it cannot."""
    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint does not exist", path)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # truncated file, foreign pickle, ...
        raise InputError(f"cannot load checkpoint: {error}", path) from None
    if not isinstance(state, dict):
        raise InputError("checkpoint does not hold a dict", path)
    return state
