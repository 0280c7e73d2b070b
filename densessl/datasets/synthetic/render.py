"""Rendering a scene's layers back to front, and their exact forward optical flow.

The forward flow at ``p`` is ``p' − p`` where ``p'`` is the point of frame ``t+1`` with the same
canonical coordinate on the layer visible at ``p``: ``u'`` solves ``u' + δ_{t+1}(u') = c`` by
fixed-point iteration and ``p' = A_{t+1} u' + o_{t+1}`` (notation of
:mod:`densessl.datasets.synthetic.scene`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

if TYPE_CHECKING:
    from densessl.datasets.synthetic.scene import Layer, Scene

_MAX_FIXED_POINT_STEPS = 12
_FIXED_POINT_TOLERANCE = 1e-3  # canonical pixels


@dataclass
class _ObjectPatch:
    """An object rendered inside its in-frame bounding box ``[y0:y1, x0:x1]``."""

    y0: int
    y1: int
    x0: int
    x1: int
    alpha: np.ndarray  # h×w coverage in [0, 1]
    ux: np.ndarray  # h×w undeformed canonical coordinates
    uy: np.ndarray
    cx: np.ndarray  # h×w canonical (texture) coordinates
    cy: np.ndarray


def _canonical(
    layer: Layer, t: int, xs: np.ndarray, ys: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(ux, uy, cx, cy) on the grid ``ys × xs`` (1-D pixel coordinates); each ``len(ys)×len(xs)``
    float32: undeformed and deformed canonical coordinates."""
    inv = layer.inverse[t].astype(np.float32)
    dx = (xs - layer.origin[t, 0]).astype(np.float32)[None, :]
    dy = (ys - layer.origin[t, 1]).astype(np.float32)[:, None]
    ux = inv[0, 0] * dx + inv[0, 1] * dy
    uy = inv[1, 0] * dx + inv[1, 1] * dy
    if layer.deformation is None:
        return ux, uy, ux, uy
    ddx, ddy = layer.deformation(ux, uy, t)
    return ux, uy, ux + ddx, uy + ddy


def _sample_texture(layer: Layer, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    map_x = cx * np.float32(layer.tex_scale) + np.float32(layer.tex_offset[0])
    map_y = cy * np.float32(layer.tex_scale) + np.float32(layer.tex_offset[1])
    return cv2.remap(
        layer.texture, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )


def _render_object(
    layer: Layer, t: int, height: int, width: int
) -> tuple[_ObjectPatch | None, int, int]:
    """Object coverage in its frame bounding box → (patch or None, amodal area, in-frame area)."""
    extent = float(np.linalg.norm(layer.linear[t], 2)) * layer.reach + 2  # σ_max · reach
    cx0, cy0 = layer.origin[t]
    ax0, ax1 = int(math.floor(cx0 - extent)), int(math.ceil(cx0 + extent)) + 1
    ay0, ay1 = int(math.floor(cy0 - extent)), int(math.ceil(cy0 + extent)) + 1
    xs = np.arange(ax0, ax1, dtype=np.float64)
    ys = np.arange(ay0, ay1, dtype=np.float64)
    ux, uy, cx, cy = _canonical(layer, t, xs, ys)
    center = np.float32(layer.shape_center)
    alpha = cv2.remap(
        layer.shape, cx + center, cy + center, cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_CONSTANT, borderValue=0,
    )
    inside = alpha >= 0.5
    amodal = int(inside.sum())
    x0, x1 = max(ax0, 0), min(ax1, width)
    y0, y1 = max(ay0, 0), min(ay1, height)
    if x0 >= x1 or y0 >= y1:
        return None, amodal, 0
    crop = (slice(y0 - ay0, y1 - ay0), slice(x0 - ax0, x1 - ax0))
    in_frame = int(inside[crop].sum())
    patch = _ObjectPatch(
        y0, y1, x0, x1, alpha[crop], ux[crop], uy[crop], cx[crop], cy[crop]
    )
    return patch, amodal, in_frame


def _layer_flow(
    layer: Layer,
    t: int,
    px: np.ndarray,
    py: np.ndarray,
    ux: np.ndarray,
    uy: np.ndarray,
    cx: np.ndarray,
    cy: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Forward flow t→t+1 of ``layer`` at pixels (px, py) (broadcastable to ``ux``'s shape)
    whose undeformed and deformed canonical coordinates are (ux, uy) and (cx, cy)."""
    nx, ny = ux, uy
    if layer.deformation is not None and ux.size:
        # Solve u' + δ_{t+1}(u') = c by fixed-point iteration from u (δ is a contraction).
        for _ in range(_MAX_FIXED_POINT_STEPS):
            ddx, ddy = layer.deformation(nx, ny, t + 1)
            new_x, new_y = cx - ddx, cy - ddy
            change = max(float(np.abs(new_x - nx).max()), float(np.abs(new_y - ny).max()))
            nx, ny = new_x, new_y
            if change < _FIXED_POINT_TOLERANCE:
                break
    a = layer.linear[t + 1]
    ox, oy = layer.origin[t + 1]
    flow_x = float(a[0, 0]) * nx + float(a[0, 1]) * ny + (float(ox) - px)
    flow_y = float(a[1, 0]) * nx + float(a[1, 1]) * ny + (float(oy) - py)
    return flow_x, flow_y


@dataclass
class FrameOutput:
    image: np.ndarray  # H×W×3 float32 RGB in [0, 255], before photometric effects
    ids: np.ndarray  # H×W uint8
    flow: np.ndarray | None  # H×W×2 float32
    amodal: np.ndarray  # K
    in_frame: np.ndarray  # K
    visible: np.ndarray  # K


def render_frame(scene: Scene, t: int, height: int, width: int, with_flow: bool) -> FrameOutput:
    xs = np.arange(width, dtype=np.float64)
    ys = np.arange(height, dtype=np.float64)
    bg = scene.background
    bux, buy, bcx, bcy = _canonical(bg, t, xs, ys)
    image = _sample_texture(bg, bcx, bcy).astype(np.float32)
    ids = np.zeros((height, width), dtype=np.uint8)
    count = len(scene.objects)
    amodal = np.zeros(count, dtype=np.int64)
    in_frame = np.zeros(count, dtype=np.int64)
    patches: list[_ObjectPatch | None] = []
    for depth, layer in enumerate(scene.objects):
        patch, amodal[depth], in_frame[depth] = _render_object(layer, t, height, width)
        patches.append(patch)
        if patch is None:
            continue
        region = (slice(patch.y0, patch.y1), slice(patch.x0, patch.x1))
        color = _sample_texture(layer, patch.cx, patch.cy).astype(np.float32)
        alpha = patch.alpha[..., None]
        image[region] += alpha * (color - image[region])
        ids[region][patch.alpha >= 0.5] = scene.ids[depth]

    want_flow = with_flow and t + 1 < bg.linear.shape[0]
    flow = None
    if want_flow:
        flow = np.empty((height, width, 2), dtype=np.float32)
        fx, fy = _layer_flow(
            bg, t, xs.astype(np.float32)[None, :], ys.astype(np.float32)[:, None],
            bux, buy, bcx, bcy,
        )
        flow[..., 0], flow[..., 1] = fx, fy
    visible = np.zeros(count, dtype=np.int64)
    for depth, (layer, patch) in enumerate(zip(scene.objects, patches)):
        if patch is None:
            continue
        region = (slice(patch.y0, patch.y1), slice(patch.x0, patch.x1))
        rows, cols = np.nonzero(ids[region] == scene.ids[depth])
        visible[depth] = rows.size
        if flow is None or rows.size == 0:
            continue
        fx, fy = _layer_flow(
            layer, t, (cols + patch.x0).astype(np.float32), (rows + patch.y0).astype(np.float32),
            patch.ux[rows, cols], patch.uy[rows, cols], patch.cx[rows, cols], patch.cy[rows, cols],
        )
        sub = flow[region]
        sub[rows, cols, 0] = fx
        sub[rows, cols, 1] = fy
    order = np.argsort(scene.ids)  # report areas by object id
    return FrameOutput(image, ids, flow, amodal[order], in_frame[order], visible[order])

