"""The DAVIS colour palette and indexed ('P' mode) PNG input/output.

DAVIS annotations and result files are single-channel PNGs whose pixel values are object ids
(0 = background, 255 = void). The palette is the PASCAL VOC colour map, generated here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image

from densessl.errors import InputError


def davis_palette(num_colors: int = 256) -> np.ndarray:
    """The DAVIS / PASCAL VOC palette: ``num_colors × 3`` uint8 RGB, id 0 black, id 1 red, ..."""
    palette = np.zeros((num_colors, 3), dtype=np.uint8)
    for index in range(num_colors):
        r = g = b = 0
        value = index
        for bit in range(8):
            r |= ((value >> 0) & 1) << (7 - bit)
            g |= ((value >> 1) & 1) << (7 - bit)
            b |= ((value >> 2) & 1) << (7 - bit)
            value >>= 3
        palette[index] = (r, g, b)
    return palette


_PALETTE_BYTES = davis_palette().reshape(-1).tobytes()


def write_indexed_png(path: str | os.PathLike, ids: np.ndarray) -> None:
    """Write an ``H×W`` integer id map as a palette PNG (ids must lie in [0, 255])."""
    ids = np.asarray(ids)
    if ids.ndim != 2:
        raise InputError(f"expected an H×W id map, got shape {ids.shape}", path)
    if ids.size and (ids.min() < 0 or ids.max() > 255):
        raise InputError(f"ids must lie in [0, 255], got [{ids.min()}, {ids.max()}]", path)
    image = Image.fromarray(ids.astype(np.uint8), mode="P")
    image.putpalette(_PALETTE_BYTES)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    image.save(path)


def read_id_png(path: str | os.PathLike, *, allow_grayscale: bool = True) -> np.ndarray:
    """Read an indexed ('P') or grayscale ('L', 'LA', 'I;16') PNG into an ``H×W`` uint8 id map.

    Palette images give their raw indices. Grayscale images give their gray values (DAVIS-2016
    masks are 0/255). RGB images are rejected: ids cannot be recovered from colours reliably.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", path)
    try:
        image = Image.open(path)
        image.load()
    except Exception as error:  # PIL raises many types for corrupt files
        raise InputError(f"cannot read image ({error})", path) from error
    if image.mode == "P":
        return np.array(image, dtype=np.uint8)
    if image.mode in ("L", "LA", "1") and allow_grayscale:
        return np.array(image.convert("L") if image.mode != "L" else image, dtype=np.uint8)
    raise InputError(
        f"expected a single-channel indexed ('P') or grayscale PNG, got mode '{image.mode}'", path
    )
