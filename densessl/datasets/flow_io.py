"""Optical flow files (Middlebury ``.flo`` and NumPy ``.npy``) and flow visualisation.

A flow field is an ``H×W×2`` float32 array of per-pixel displacements ``(dx, dy)`` in pixels:
pixel ``(x, y)`` of the first frame moves to ``(x + dx, y + dy)`` in the second.

The Middlebury ``.flo`` format is little-endian: the float32 magic ``202021.25`` (the bytes
``PIEH``), the int32 width, the int32 height, then ``H×W×2`` float32 values in row-major order.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from densessl.errors import InputError

FLO_MAGIC = 202021.25
_HEADER_BYTES = 12
# Middlebury marks unknown flow with values above this magnitude.
UNKNOWN_FLOW_THRESHOLD = 1e9


def _check_flow(flow: np.ndarray, path: str | os.PathLike) -> np.ndarray:
    flow = np.asarray(flow)
    if flow.ndim != 3 or flow.shape[2] != 2:
        raise InputError(f"expected an H×W×2 flow array, got shape {flow.shape}", path)
    if flow.shape[0] == 0 or flow.shape[1] == 0:
        raise InputError(f"flow has an empty dimension: shape {flow.shape}", path)
    if not np.issubdtype(flow.dtype, np.number):
        raise InputError(f"flow must be numeric, got dtype {flow.dtype}", path)
    return flow.astype(np.float32, copy=False)


def write_flo(path: str | os.PathLike, flow: np.ndarray) -> None:
    """Write an ``H×W×2`` flow field as a Middlebury ``.flo`` file (parent folders created)."""
    flow = _check_flow(flow, path)
    height, width = flow.shape[:2]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(np.array([FLO_MAGIC], dtype="<f4").tobytes())
        handle.write(np.array([width, height], dtype="<i4").tobytes())
        handle.write(memoryview(np.ascontiguousarray(flow, dtype="<f4")).cast("B"))


def read_flo(path: str | os.PathLike) -> np.ndarray:
    """Read a Middlebury ``.flo`` file into an ``H×W×2`` float32 array.

    Raises :class:`InputError` naming the file when it is missing, has the wrong magic number,
    an impossible size, or a length that does not match its header.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("flow file not found", path)
    data = path.read_bytes()
    if len(data) < _HEADER_BYTES:
        raise InputError(f"not a .flo file: only {len(data)} bytes (header needs 12)", path)
    magic = float(np.frombuffer(data, dtype="<f4", count=1)[0])
    if magic != FLO_MAGIC:
        raise InputError(f"not a .flo file: magic number {magic!r}, expected {FLO_MAGIC}", path)
    width, height = (int(v) for v in np.frombuffer(data, dtype="<i4", count=2, offset=4))
    if width <= 0 or height <= 0:
        raise InputError(f"corrupt .flo header: width {width}, height {height}", path)
    expected = _HEADER_BYTES + 4 * 2 * width * height
    if len(data) != expected:
        raise InputError(
            f"corrupt .flo file: {len(data)} bytes, expected {expected} for {width}×{height}", path
        )
    values = np.frombuffer(data, dtype="<f4", offset=_HEADER_BYTES)
    return values.reshape(height, width, 2).astype(np.float32)


def write_flow(path: str | os.PathLike, flow: np.ndarray) -> None:
    """Write a flow field; the format follows the suffix (``.flo`` or ``.npy``)."""
    suffix = Path(path).suffix.lower()
    if suffix == ".flo":
        write_flo(path, flow)
    elif suffix == ".npy":
        flow = _check_flow(flow, path)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        np.save(path, flow)
    else:
        raise InputError(f"unknown flow file type '{suffix}' (expected .flo or .npy)", path)


def read_flow(path: str | os.PathLike) -> np.ndarray:
    """Read an ``H×W×2`` float32 flow field from a ``.flo`` or ``.npy`` file."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".flo":
        return read_flo(path)
    if suffix != ".npy":
        raise InputError(f"unknown flow file type '{suffix}' (expected .flo or .npy)", path)
    if not path.is_file():
        raise InputError("flow file not found", path)
    try:
        flow = np.load(path, allow_pickle=False)
    except Exception as error:  # numpy raises ValueError / OSError / EOFError for bad files
        raise InputError(f"cannot read .npy flow ({error})", path) from error
    return _check_flow(flow, path)


def _color_wheel() -> np.ndarray:
    """The Baker et al. (Middlebury) colour wheel: ``55×3`` float RGB in [0, 255].

    Six hue transitions with 15, 6, 4, 11, 13 and 6 steps:
    red → yellow → green → cyan → blue → magenta → red.
    """
    segments = [  # (steps, channel that changes, channel held at 255, rising?)
        (15, 1, 0, True),  # red -> yellow: G rises, R full
        (6, 0, 1, False),  # yellow -> green: R falls, G full
        (4, 2, 1, True),  # green -> cyan: B rises, G full
        (11, 1, 2, False),  # cyan -> blue: G falls, B full
        (13, 0, 2, True),  # blue -> magenta: R rises, B full
        (6, 2, 0, False),  # magenta -> red: B falls, R full
    ]
    rows = []
    for steps, moving, full, rising in segments:
        block = np.zeros((steps, 3))
        ramp = np.floor(255 * np.arange(steps) / steps)
        block[:, full] = 255
        block[:, moving] = ramp if rising else 255 - ramp
        rows.append(block)
    return np.concatenate(rows)


_WHEEL = _color_wheel()


def flow_to_color(flow: np.ndarray, max_flow: float | None = None) -> np.ndarray:
    """Colour-code an ``H×W×2`` flow field with the Middlebury wheel → ``H×W×3`` uint8 RGB.

    Hue gives the direction, saturation the magnitude relative to ``max_flow`` (default: the
    largest magnitude in the field); magnitudes beyond it are darkened. Zero flow is white;
    unknown values (NaN or above 1e9) are black.
    """
    flow = _check_flow(flow, "flow")
    u = flow[..., 0].astype(np.float64)
    v = flow[..., 1].astype(np.float64)
    unknown = ~np.isfinite(u) | ~np.isfinite(v)
    unknown |= (np.abs(u) > UNKNOWN_FLOW_THRESHOLD) | (np.abs(v) > UNKNOWN_FLOW_THRESHOLD)
    u = np.where(unknown, 0.0, u)
    v = np.where(unknown, 0.0, v)
    radius = np.sqrt(u * u + v * v)
    scale = float(radius.max()) if max_flow is None else float(max_flow)
    if scale <= 0 or not np.isfinite(scale):
        if max_flow is not None:
            raise InputError(f"max_flow must be a positive number, got {max_flow}", "max_flow")
        scale = 1.0
    u, v, radius = u / scale, v / scale, radius / scale

    num_colors = len(_WHEEL)
    angle = np.arctan2(-v, -u) / np.pi  # in [-1, 1]
    position = (angle + 1) / 2 * (num_colors - 1)
    lower = np.floor(position).astype(np.int64)
    upper = (lower + 1) % num_colors
    frac = (position - lower)[..., None]
    color = ((1 - frac) * _WHEEL[lower] + frac * _WHEEL[upper]) / 255.0
    inside = (radius <= 1)[..., None]
    color = np.where(inside, 1 - radius[..., None] * (1 - color), color * 0.75)
    color[unknown] = 0
    return np.floor(255 * color).astype(np.uint8)
