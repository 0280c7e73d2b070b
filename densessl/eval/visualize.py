"""Pictures: mask overlays (PNG strips and MP4) and bar charts of scores."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

from densessl.datasets.palette import davis_palette

_PALETTE = davis_palette()


def overlay_mask(frame: np.ndarray, ids: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """Blend DAVIS palette colours of ``H×W`` ids over an ``H×W×3`` uint8 RGB frame.

    Background (0) is left untouched; object boundaries are drawn opaque.
    """
    if frame.shape[:2] != ids.shape:
        raise ValueError(f"frame {frame.shape[:2]} and mask {ids.shape} differ in size")
    colours = _PALETTE[ids]
    foreground = ids > 0
    out = frame.astype(np.float32)
    out[foreground] = (1 - alpha) * out[foreground] + alpha * colours[foreground]
    edges = np.zeros_like(foreground)
    edges[:-1] |= ids[:-1] != ids[1:]
    edges[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    edges &= foreground | np.roll(foreground, 1, axis=0) | np.roll(foreground, 1, axis=1)
    out[edges] = colours[edges]
    return out.clip(0, 255).astype(np.uint8)


def save_overlay_strip(
    path: str | os.PathLike,
    frames: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    max_width: int = 1600,
) -> None:
    """Save overlays of a few frames side by side as one PNG (scaled to ``max_width``)."""
    tiles = [overlay_mask(frame, mask) for frame, mask in zip(frames, masks)]
    strip = np.concatenate(tiles, axis=1)
    if strip.shape[1] > max_width:
        scale = max_width / strip.shape[1]
        strip = cv2.resize(strip, (max_width, max(1, round(strip.shape[0] * scale))),
                           interpolation=cv2.INTER_AREA)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(os.fspath(path), cv2.cvtColor(strip, cv2.COLOR_RGB2BGR))


class OverlayVideoWriter:
    """Write overlay frames to an MP4 (``mp4v``) one at a time."""

    def __init__(self, path: str | os.PathLike, size: tuple[int, int], fps: float = 12.0):
        height, width = size
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._writer = cv2.VideoWriter(
            os.fspath(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (width, height)
        )
        if not self._writer.isOpened():
            raise RuntimeError(f"{path}: OpenCV cannot open an mp4v writer")

    def write(self, frame: np.ndarray, ids: np.ndarray) -> None:
        self._writer.write(cv2.cvtColor(overlay_mask(frame, ids), cv2.COLOR_RGB2BGR))

    def close(self) -> None:
        self._writer.release()


def save_bar_chart(
    path: str | os.PathLike, scores: dict[str, float], title: str, ylabel: str = "J&F-Mean"
) -> None:
    """Bar chart of one score per method (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(scores)
    values = [scores[name] for name in names]
    fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(names), 3.6), dpi=120)
    bars = ax.bar(names, values, color=[tuple(c / 255) for c in _PALETTE[1 : len(names) + 1]])
    for bar, value in zip(bars, values):
        ax.text(bar.get_x() + bar.get_width() / 2, value + 0.01, f"{value:.3f}",
                ha="center", va="bottom", fontsize=9)
    ax.set_ylim(0, max(1.0, max(values, default=0) + 0.08))
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=15)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
