"""Layout of a cached optical-flow tree: ``<flow_root>/<gap>/<seq>/<frame>.flo``.

``<gap>`` is a signed frame offset written with its sign (``+1``, ``-1``, ``+2``, ``-2``): the file
of frame ``t`` in folder ``+2`` holds the flow from frame ``t`` to frame ``t + 2`` (pixel ``(x, y)``
of frame ``t`` moves to ``(x + dx, y + dy)`` in frame ``t + 2``). Frames without a partner (the
last two frames for ``+2``) have no file. ``<frame>`` is the frame's file stem (``00000``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Sequence

import numpy as np

from densessl.datasets.flow_io import read_flow
from densessl.errors import InputError

DEFAULT_GAPS: tuple[int, ...] = (1, -1, 2, -2)
FLOW_SUFFIXES = (".flo", ".npy")
_GAP_PATTERN = re.compile(r"^[+-][1-9][0-9]*$")


def gap_folder(gap: int) -> str:
    """``1 -> '+1'``, ``-2 -> '-2'``; a gap of 0 is refused."""
    gap = int(gap)
    if gap == 0:
        raise InputError("a flow gap must be a nonzero frame offset, got 0")
    return f"{gap:+d}"


def parse_gap(text: str) -> int:
    """``'+1'``, ``'1'`` or ``'-2'`` → int; refuses 0 and non-integers, naming the text."""
    try:
        gap = int(str(text).strip())
    except ValueError:
        raise InputError(f"a flow gap must be a nonzero integer such as +1 or -2, got '{text}'") from None
    if gap == 0:
        raise InputError("a flow gap must be a nonzero frame offset, got 0")
    return gap


def parse_gaps(texts: Sequence[str]) -> list[int]:
    """``['+1', '-1,+2']`` → ``[1, -1, 2]`` (commas allowed, duplicates dropped, order kept)."""
    gaps: list[int] = []
    for text in texts:
        for part in str(text).split(","):
            if part.strip():
                gap = parse_gap(part)
                if gap not in gaps:
                    gaps.append(gap)
    if not gaps:
        raise InputError("no flow gaps given", "--gaps")
    return gaps


def flow_path(flow_root: str | os.PathLike, gap: int, sequence: str, frame_name: str, suffix: str = ".flo") -> Path:
    """Path of the cached flow from frame ``frame_name`` to the frame ``gap`` frames later."""
    if suffix not in FLOW_SUFFIXES:
        raise InputError(f"flow files are {' or '.join(FLOW_SUFFIXES)}, got '{suffix}'")
    return Path(flow_root) / gap_folder(gap) / sequence / f"{frame_name}{suffix}"


def available_gaps(flow_root: str | os.PathLike) -> list[int]:
    """Gaps present as ``+k`` / ``-k`` folders under ``flow_root``, sorted by |gap| then sign."""
    root = Path(flow_root)
    if not root.is_dir():
        raise InputError("flow folder not found", root)
    gaps = [int(p.name) for p in root.iterdir() if p.is_dir() and _GAP_PATTERN.match(p.name)]
    return sorted(gaps, key=lambda g: (abs(g), -g))


def find_flow(flow_root: str | os.PathLike, gap: int, sequence: str, frame_name: str) -> Path | None:
    """The cached ``.flo`` or ``.npy`` file of a frame and gap, or None when there is none."""
    for suffix in FLOW_SUFFIXES:
        path = flow_path(flow_root, gap, sequence, frame_name, suffix)
        if path.is_file():
            return path
    return None


def read_cached_flow(flow_root: str | os.PathLike, gap: int, sequence: str, frame_name: str) -> np.ndarray:
    """``H×W×2`` float32 flow of a frame and gap; InputError naming the expected file if absent."""
    path = find_flow(flow_root, gap, sequence, frame_name)
    if path is None:
        raise InputError(
            f"no cached flow for sequence '{sequence}', frame {frame_name}, gap {gap_folder(gap)} "
            "(run tools/compute_flow.py)",
            flow_path(flow_root, gap, sequence, frame_name),
        )
    return read_flow(path)


def read_frame_flow(path: str | os.PathLike, frame_size: tuple[int, int]) -> np.ndarray:
    """``H×W×2`` float32 flow of a frame of size ``frame_size = (H, W)``; InputError naming the
    file when the flow has another size."""
    flow = read_flow(path)
    if flow.shape[:2] != tuple(frame_size):
        raise InputError(
            f"flow size {flow.shape[1]}x{flow.shape[0]} differs from the frame size "
            f"{frame_size[1]}x{frame_size[0]}",
            path,
        )
    return flow
