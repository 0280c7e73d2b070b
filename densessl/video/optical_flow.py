"""Dense optical flow with OpenCV's DIS (Dense Inverse Search, Kroeger et al. 2016).

A flow field is an ``H×W×2`` float32 array of displacements ``(dx, dy)`` in pixels: pixel
``(x, y)`` of the first frame moves to ``(x + dx, y + dy)`` in the second (the convention of
:mod:`densessl.datasets.flow_io` and :mod:`densessl.datasets.flow_cache`).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from densessl.datasets.flow_cache import DEFAULT_GAPS, gap_folder
from densessl.errors import InputError

PRESETS: dict[str, int] = {
    "ultrafast": cv2.DISOPTICAL_FLOW_PRESET_ULTRAFAST,
    "fast": cv2.DISOPTICAL_FLOW_PRESET_FAST,
    "medium": cv2.DISOPTICAL_FLOW_PRESET_MEDIUM,
}
DEFAULT_PRESET = "medium"


def create_dis(preset: str = DEFAULT_PRESET) -> cv2.DISOpticalFlow:
    """A DIS instance for ``preset`` (ultrafast, fast or medium); InputError for other names."""
    if preset not in PRESETS:
        raise InputError(f"unknown DIS preset '{preset}' (choose {', '.join(PRESETS)})", "--preset")
    return cv2.DISOpticalFlow_create(PRESETS[preset])


def to_gray(image: np.ndarray) -> np.ndarray:
    """``H×W×3`` RGB or ``H×W`` gray uint8 → ``H×W`` uint8 gray (contiguous)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise InputError(f"frames must be uint8, got dtype {image.dtype}", "frame")
    if image.ndim == 2:
        return np.ascontiguousarray(image)
    if image.ndim == 3 and image.shape[2] == 3:
        return cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2GRAY)
    raise InputError(f"expected an H×W×3 RGB or H×W gray frame, got shape {image.shape}", "frame")


def dis_flow(
    img0: np.ndarray,
    img1: np.ndarray,
    preset: str = DEFAULT_PRESET,
    *,
    dis: cv2.DISOpticalFlow | None = None,
) -> np.ndarray:
    """DIS flow from ``img0`` to ``img1`` (RGB ``H×W×3`` or gray ``H×W`` uint8) → ``H×W×2``.

    Pass ``dis`` (from :func:`create_dis`) to reuse one instance over many pairs; ``preset`` is
    then ignored. Each call starts from zero flow, so results do not depend on earlier calls.
    """
    gray0, gray1 = to_gray(img0), to_gray(img1)
    if gray0.shape != gray1.shape:
        raise InputError(f"frames differ in size: {gray0.shape} and {gray1.shape}", "frame")
    if dis is None:
        dis = create_dis(preset)
    return dis.calc(gray0, gray1, None).astype(np.float32, copy=False)


def warp_by_flow(values: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Backward warping: ``values`` (``H×W`` or ``H×W×C``, float) sampled at ``x + flow(x)``.

    With the flow from frame t to frame s, this brings frame s's values (a probability map, an
    image) into frame t: pixel x of frame t takes the value that its match in frame s has.
    Bilinear; matches outside frame s take the nearest border value. Returns float32 of
    ``values``' shape.
    """
    values = np.asarray(values, dtype=np.float32)
    flow = np.asarray(flow, dtype=np.float32)
    if values.ndim not in (2, 3) or flow.shape != (*values.shape[:2], 2):
        raise ValueError(f"expected values H×W[×C] and flow H×W×2 of the same H×W, got "
                         f"{values.shape} and {flow.shape}")
    height, width = values.shape[:2]
    map_x = flow[..., 0] + np.arange(width, dtype=np.float32)[None, :]
    map_y = flow[..., 1] + np.arange(height, dtype=np.float32)[:, None]
    warped = cv2.remap(values, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return warped.reshape(values.shape)


def compute_sequence_flows(
    frames: Sequence[np.ndarray],
    gaps: Sequence[int] = DEFAULT_GAPS,
    preset: str = DEFAULT_PRESET,
) -> dict[int, list[np.ndarray | None]]:
    """Flows from every frame to the frame ``gap`` later, for each gap.

    Args:
        frames: ``T`` frames, ``H×W×3`` RGB (or ``H×W`` gray) uint8, all the same size.
        gaps: nonzero frame offsets (negative = backward flow).
        preset: DIS preset (ultrafast, fast, medium).

    Returns:
        ``{gap: [flow_0, ..., flow_{T-1}]}`` where ``flow_t`` is the ``H×W×2`` float32 flow from
        frame ``t`` to frame ``t + gap``, or None when ``t + gap`` is outside the sequence.
    """
    for gap in gaps:
        gap_folder(gap)  # refuses 0
    dis = create_dis(preset)
    gray = [to_gray(frame) for frame in frames]  # each frame converted once for all gaps
    count = len(gray)
    out: dict[int, list[np.ndarray | None]] = {}
    for gap in gaps:
        out[int(gap)] = [
            dis_flow(gray[t], gray[t + gap], dis=dis) if 0 <= t + gap < count else None
            for t in range(count)
        ]
    return out
