"""Pictures: mask overlays (PNG strips and MP4), bar charts of scores, a run's training curves."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np
import torch

from densessl.datasets.palette import davis_palette
from densessl.engine.runlog import read_run_log

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


def evenly_spaced(length: int, count: int) -> list[int]:
    """Up to ``count`` distinct indices into ``range(length)`` spread evenly from the first to the
    last (the frames of a picture strip)."""
    return sorted({int(i) for i in np.linspace(0, length - 1, num=min(count, length)).round()})


def save_overlay_strip(
    path: str | os.PathLike,
    frames: Sequence[np.ndarray],
    masks: Sequence[np.ndarray],
    max_width: int = 1600,
) -> None:
    """Save overlays of a few frames side by side as one PNG (scaled to ``max_width``)."""
    save_strip(path, [overlay_mask(frame, mask) for frame, mask in zip(frames, masks)], max_width)


def feature_pca_images(features: Sequence[torch.Tensor], size: tuple[int, int] | None = None) -> list[np.ndarray]:
    """Pictures of dense features: their first three principal components as RGB.

    The basis, its signs and the colour scale come from the first map alone and are applied to
    every map, so a point whose features stay the same keeps its colour from frame to frame
    (what label propagation relies on). Each component's 1st–99th percentile on the first map
    spans 0–255; values beyond are clipped. Signs: each component's largest loading is positive.

    Args:
        features: maps ``C×h×w`` (or ``1×C×h×w``) of one backbone, any device, C ≥ 1.
        size: ``(H, W)`` to enlarge each picture to (nearest neighbour, so feature cells stay
            visible); default: the feature size.

    Returns:
        ``H×W×3`` uint8 RGB pictures, one per map; components beyond C are black.
    """
    maps = [f.detach().float().reshape(f.shape[-3], -1).T.cpu() for f in features]  # (h·w)×C each
    first = maps[0]
    mean = first.mean(dim=0, keepdim=True)
    covariance = (first - mean).T @ (first - mean) / max(first.shape[0] - 1, 1)
    _, eigenvectors = torch.linalg.eigh(covariance.double())  # ascending eigenvalues
    basis = eigenvectors.flip(-1)[:, :3].float()  # C×k, largest variance first
    strongest = basis.abs().argmax(dim=0)
    basis = basis * torch.sign(basis[strongest, torch.arange(basis.shape[1])])
    reference = (first - mean) @ basis
    low = torch.quantile(reference, 0.01, dim=0)
    high = torch.quantile(reference, 0.99, dim=0)
    scale = (high - low).clamp(min=1e-12)
    pictures = []
    for feature, flat in zip(features, maps):
        height, width = feature.shape[-2:]
        colours = ((flat - mean) @ basis - low) / scale
        rgb = torch.zeros(flat.shape[0], 3)
        rgb[:, : basis.shape[1]] = colours.clamp(0, 1)
        picture = (rgb.reshape(height, width, 3) * 255).round().to(torch.uint8).numpy()
        if size is not None and picture.shape[:2] != tuple(size):
            picture = cv2.resize(picture, (size[1], size[0]), interpolation=cv2.INTER_NEAREST)
        pictures.append(picture)
    return pictures


def _text_band(width: int, texts: Sequence[tuple[int, str]], font_scale: float = 0.45) -> np.ndarray:
    """A white ``22×width×3`` band with black text, each ``(x, text)`` starting at pixel x."""
    band = np.full((22, width, 3), 255, np.uint8)
    for x, text in texts:
        cv2.putText(band, text, (x + 4, 16), cv2.FONT_HERSHEY_SIMPLEX, font_scale, (0, 0, 0), 1, cv2.LINE_AA)
    return band


def position_colours(centres: np.ndarray, size: int) -> np.ndarray:
    """N×3 uint8 RGB colours of points N×2 (x, y) in a ``size``-pixel square: hue runs with x,
    brightness falls with y, so neighbours get similar colours and far points different ones."""
    x = np.clip(centres[:, 0] / size, 0, 1)
    y = np.clip(centres[:, 1] / size, 0, 1)
    hsv = np.stack([x * 150, np.full_like(x, 255), 255 * (1 - 0.6 * y)], axis=1)  # OpenCV hue: 0–179
    return cv2.cvtColor(hsv.round().astype(np.uint8)[None], cv2.COLOR_HSV2RGB)[0]


def save_walk_picture(
    path: str | os.PathLike,
    frames: np.ndarray,
    centres: np.ndarray,
    source_of_last: np.ndarray,
    returns_home: np.ndarray,
    title: str = "",
    min_size: int = 256,
) -> None:
    """Three panels of a random walk on one clip, side by side:

    1. the first frame, each node a dot coloured by its position (:func:`position_colours`);
    2. the last frame, each node coloured as the first-frame node whose walker most likely ends
       there: where the walk follows the scene, the colours move with the content;
    3. the first frame again, nodes whose round trip 0 → last → 0 returns home in colour, the
       others as grey rings.

    Args:
        frames: T×S×S×3 uint8 RGB augmented frames; centres: T×N×2 (x, y) in frame pixels;
            source_of_last: N first-frame node indices; returns_home: N bools.
        min_size: panels are enlarged (nearest) to at least this many pixels.
    """
    size = frames.shape[1]
    scale = max(1, -(-min_size // size))
    colours = position_colours(centres[0], size)
    spacing = size / np.sqrt(len(colours))  # of a square grid of that many nodes
    radius = max(2, int(round(0.3 * scale * spacing)))

    def panel(frame: np.ndarray, points: np.ndarray, fill: np.ndarray, rings: np.ndarray, label: str) -> np.ndarray:
        image = cv2.resize(frame, (size * scale, size * scale), interpolation=cv2.INTER_NEAREST)
        dots = image.copy()
        for (x, y), colour, ring in zip(points * scale, fill, rings):
            centre = (int(round(x)), int(round(y)))
            if ring:
                cv2.circle(dots, centre, radius, (160, 160, 160), max(1, radius // 3))
            else:
                cv2.circle(dots, centre, radius, tuple(int(c) for c in colour), -1)
        image = cv2.addWeighted(dots, 0.8, image, 0.2, 0)
        return np.concatenate([_text_band(image.shape[1], [(0, label)]), image], axis=0)

    last = len(frames) - 1
    none = np.zeros(len(colours), bool)
    tiles = [
        panel(frames[0], centres[0], colours, none, "frame 0: nodes by position"),
        panel(frames[last], centres[last], colours[source_of_last], none, f"frame {last}: where the walk goes"),
        panel(frames[0], centres[0], colours, ~returns_home, f"round trip home: {returns_home.mean():.2f}"),
    ]
    gap = np.full((tiles[0].shape[0], 6, 3), 255, np.uint8)
    save_strip(path, [tiles[0], gap, tiles[1], gap, tiles[2]], max_width=None, title=title)


def save_cis_picture(
    path: str | os.PathLike,
    images: np.ndarray,
    flows: np.ndarray,
    masks: np.ndarray,
    inpainted: np.ndarray,
    title: str = "",
    min_height: int = 128,
) -> None:
    """One row per pair, four columns: the image, its flow (Middlebury colours), the generator's
    soft mask (white = hidden), and the flow with the hidden region (mask > 0.5) replaced by the
    inpainter's reconstruction from the context, in the same colour scale as the flow. Where
    the mask covers a moving object, the reconstruction there should look wrong.

    Args:
        images: B×h×w×3 uint8; flows, inpainted: B×h×w×2 (any common unit); masks: B×h×w in [0, 1].
    """
    from densessl.datasets.flow_io import flow_to_color

    height, width = images.shape[1:3]
    scale = max(1, -(-min_height // height))
    labels = ["image", "flow", "mask (hidden)", "flow, inpainted inside"]

    def enlarge(tile: np.ndarray) -> np.ndarray:
        return cv2.resize(tile, (width * scale, height * scale), interpolation=cv2.INTER_NEAREST)

    rows = []
    for image, flow, mask, recon in zip(images, flows, masks, inpainted):
        largest = float(np.sqrt((flow ** 2).sum(-1)).max()) or 1.0
        hidden = mask[..., None] > 0.5
        composite = np.where(hidden, recon, flow).astype(np.float32)
        grey = (np.clip(mask, 0, 1) * 255).round().astype(np.uint8)
        tiles = [image, flow_to_color(flow.astype(np.float32), largest), np.repeat(grey[..., None], 3, axis=-1),
                 flow_to_color(composite, largest)]
        rows.append(np.concatenate([enlarge(t) for t in tiles], axis=1))
    header = _text_band(rows[0].shape[1], [(column * width * scale, label) for column, label in enumerate(labels)])
    save_strip(path, [np.concatenate([header, *rows], axis=0)], max_width=None, title=title)


def save_strip(
    path: str | os.PathLike, tiles: Sequence[np.ndarray], max_width: int | None = 1600, title: str = "",
) -> None:
    """Save ``H×W×3`` uint8 RGB tiles side by side as one PNG, scaled down to ``max_width``
    (``None``: never), under a band with ``title`` when one is given."""
    strip = np.concatenate(list(tiles), axis=1)
    if title:
        strip = np.concatenate([_text_band(strip.shape[1], [(0, title)], font_scale=0.5), strip], axis=0)
    if max_width is not None and strip.shape[1] > max_width:
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


_NOT_CURVES = {"step", "kind", "time", "epoch", "elapsed_s"}
Curve = tuple[list[float], list[float]]  # (x values, metric values)


def _curve_panels(records: Sequence[dict], x: str = "step") -> dict[str, dict[str, Curve]]:
    """Panel title → metric → (x values, values). Training metrics get a panel each, except the
    per-palindrome ``<name>_k<length>`` metrics, which share one panel per name. Evaluation
    scores (metrics that stay within [-1, 1], such as J&F) share one "evaluation" panel; other
    evaluation metrics (timings) get a panel each, titled ``eval/<name>``.

    ``x``: ``"step"``, or ``"minutes"`` of training time (the records' ``elapsed_s``; records
    without it are left out).
    """
    panels: dict[str, dict[str, Curve]] = {}
    evaluations: dict[str, Curve] = {}
    for record in records:
        if x == "minutes":
            if not isinstance(record.get("elapsed_s"), (int, float)):
                continue
            position = float(record["elapsed_s"]) / 60
        else:
            position = float(record["step"])
        evaluation = record.get("kind") == "eval"
        for key, value in record.items():
            if key in _NOT_CURVES or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            if not math.isfinite(value):
                continue
            if evaluation:
                curve = evaluations.setdefault(key, ([], []))
            else:
                per_length = re.fullmatch(r"(.+)_k\d+", key)
                title = f"{per_length.group(1)}_k*" if per_length else key
                curve = panels.setdefault(title, {}).setdefault(key, ([], []))
            curve[0].append(position)
            curve[1].append(float(value))
    for key, curve in evaluations.items():
        title = "evaluation" if all(-1.0 <= v <= 1.0 for v in curve[1]) else f"eval/{key}"
        panels.setdefault(title, {})[key] = curve
    return panels


def _panel_order(title: str) -> tuple:
    return (title != "loss", title.startswith("eval"), title != "evaluation", title)


def _draw_panels(
    runs: dict[str, dict[str, dict[str, Curve]]], titles: Sequence[str], out_path: str | os.PathLike,
    x_label: str, suptitle: str,
) -> None:
    """One panel per title; in each, one line per (run, metric), labelled when there are several."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = min(3, len(titles))
    rows = math.ceil(len(titles) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4.2 * columns, 2.8 * rows), dpi=100, squeeze=False)
    for ax, title in zip(axes.flat, titles):
        lines = [(run, metric, curve) for run, panels in runs.items()
                 for metric, curve in sorted(panels.get(title, {}).items())]
        for run, metric, (xs, values) in lines:
            parts = [run] if len(runs) > 1 else []
            if len({m for _, m, _ in lines}) > 1:
                parts.append(metric)
            ax.plot(xs, values, marker="o" if len(xs) < 30 else None, markersize=3,
                    label=": ".join(parts) or None)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel(x_label, fontsize=8)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(titles):]:
        ax.axis("off")
    fig.suptitle(suptitle, fontsize=11)
    fig.tight_layout()
    Path(out_path).parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(out_path).with_suffix(".tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, out_path)


def save_training_curves(log_path: str | os.PathLike, out_path: str | os.PathLike) -> list[str]:
    """Plot a run's ``log.jsonl`` (one JSON record per line: ``step``, ``kind``, metrics) against
    the step, one panel per training metric (``loss`` first) and one for the evaluations.

    Returns:
        The panel titles, in the order drawn; nothing is written when the log holds no metric.
    """
    panels = _curve_panels(read_run_log(log_path))
    if not panels:
        return []
    titles = sorted(panels, key=_panel_order)
    _draw_panels({"": panels}, titles, out_path, "step", Path(log_path).parent.name)
    return titles


def save_run_comparison(
    logs: dict[str, str | os.PathLike], out_path: str | os.PathLike, x: str = "step",
    metrics: Sequence[str] | None = None,
) -> list[str]:
    """Several runs' curves on shared panels (one line per run), against the step or the
    training time (``x="minutes"``, for runs of equal time budgets).

    Args:
        logs: label → ``log.jsonl`` of each run.
        metrics: only these metrics (their panels); default: every panel some run has.

    Returns:
        The panel titles, in the order drawn.

    Raises:
        InputError: a log without any record (for ``x="minutes"``: with training time), or
            requested metrics that no run logged.
    """
    from densessl.errors import InputError

    if x not in ("step", "minutes"):
        raise InputError(f"x must be 'step' or 'minutes', got {x!r}")
    runs: dict[str, dict[str, dict[str, Curve]]] = {}
    for label, path in logs.items():
        panels = _curve_panels(read_run_log(path), x=x)
        if not panels:
            what = "metric records with their training time (elapsed_s)" if x == "minutes" else "metric records"
            raise InputError(f"the log holds no {what}", path)
        if metrics:
            panels = {t: {m: c for m, c in p.items() if m in metrics} for t, p in panels.items()}
            panels = {t: p for t, p in panels.items() if p}
        runs[label] = panels
    titles = sorted({t for panels in runs.values() for t in panels}, key=_panel_order)
    if not titles:
        raise InputError(f"no run logged any of the metrics {', '.join(metrics or [])}", "--metrics")
    _draw_panels(runs, titles, out_path, "training minutes" if x == "minutes" else "step",
                 " vs ".join(runs))
    return titles
