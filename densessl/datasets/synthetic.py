"""Synthetic DAVIS-style videos with exact object masks and ground-truth optical flow.

Every sequence is a stack of layers: a textured background seen by a panning, zooming and
slightly rotating camera, and 1–K textured, blob-shaped (non-convex) objects in a fixed depth
order that translate, bounce partly out of the frame, rotate, change scale, stretch and deform
non-rigidly, and occlude one another. Textures come from a small per-sequence bank of procedural
textures shared by the background and the objects, so raw-pixel matching is ambiguous.
Illumination changes, blur and sensor noise are applied on top.

Geometry. Layer ``l`` at frame ``t`` maps a frame pixel ``p`` to canonical coordinates

    u = A_t⁻¹ (p − o_t),    c = g_t(p) = u + δ_t(u),

where ``A_t`` is rotation × anisotropic scale, ``o_t`` the layer's position and ``δ_t`` a small
sum of travelling sine waves (Lipschitz constant below 0.45, so ``u ↦ u + δ_t(u)`` is
invertible). The texture colour and the object's shape are read at ``c``, so they stay attached
to the layer. The forward flow at ``p`` is ``p' − p`` where ``p'`` is the point of frame ``t+1``
with the same canonical coordinate on the layer visible at ``p``: ``u'`` solves
``u' + δ_{t+1}(u') = c`` by fixed-point iteration and ``p' = A_{t+1} u' + o_{t+1}``.

Everything is deterministic given ``(seed, sequence index)``, independent of the number of
sequences and of the number of worker processes.
"""

from __future__ import annotations

import functools
import json
import math
import os
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np
import scipy.fft

from densessl.datasets.flow_io import write_flo
from densessl.datasets.palette import write_indexed_png
from densessl.errors import InputError

RESOLUTION_FOLDER = "480p"  # DAVIS folder name, kept whatever the frame size
_MAX_FIXED_POINT_STEPS = 12
_FIXED_POINT_TOLERANCE = 1e-3  # canonical pixels
_DEFORM_COMPONENTS = 2  # sine waves per displacement coordinate


@dataclass(frozen=True)
class SyntheticConfig:
    """Settings of a synthetic DAVIS-style set.

    ``num_val`` (when given) overrides ``val_fraction``; ``workers = 0`` uses one process per
    available CPU (at most one per sequence).
    """

    num_sequences: int = 30
    num_frames: int = 60
    height: int = 480
    width: int = 854
    min_objects: int = 1
    max_objects: int = 4
    val_fraction: float = 0.5
    seed: int = 0
    write_flow: bool = True
    write_video: bool = True
    jpeg_quality: int = 95
    fps: float = 24.0
    workers: int = 0
    num_val: int | None = None
    motion_scale: float = 1.0  # scene time between frames: 2.0 doubles every motion per frame
    camera_zoom: float = 1.0  # scale of the camera's zoom and roll amplitudes (0: the camera only pans)
    pan_speed: tuple[float, float] = (0.0, 0.006)  # camera pan speed range, fraction of the diagonal per frame

    def validate(self) -> None:
        """Raise :class:`InputError` naming the first bad setting."""

        def bad(name: str, why: str) -> InputError:
            flag = "--" + name.replace("_", "-")
            return InputError(f"{name} ({flag}) {why}")

        if self.num_sequences < 1:
            raise bad("num_sequences", f"must be at least 1, got {self.num_sequences}")
        if self.num_frames < 2:
            raise bad("num_frames", f"must be at least 2, got {self.num_frames}")
        if self.height < 16 or self.width < 16:
            raise bad("height", f"and width must be at least 16, got {self.height}×{self.width}")
        if self.min_objects < 1:
            raise bad("min_objects", f"must be at least 1, got {self.min_objects}")
        if self.max_objects < self.min_objects:
            raise bad("max_objects", f"must be ≥ min_objects ({self.min_objects}), got "
                      f"{self.max_objects}")
        if self.max_objects > 254:
            raise bad("max_objects", f"must be at most 254 (ids are bytes), got {self.max_objects}")
        if not 0.0 <= self.val_fraction <= 1.0:
            raise bad("val_fraction", f"must lie in [0, 1], got {self.val_fraction}")
        if self.num_val is not None and not 0 <= self.num_val <= self.num_sequences:
            raise bad("num_val", f"must lie in [0, num_sequences], got {self.num_val}")
        if not 1 <= self.jpeg_quality <= 100:
            raise bad("jpeg_quality", f"must lie in [1, 100], got {self.jpeg_quality}")
        if not self.fps > 0:
            raise bad("fps", f"must be positive, got {self.fps}")
        if not self.motion_scale > 0:
            raise bad("motion_scale", f"must be positive, got {self.motion_scale}")
        if not self.camera_zoom >= 0:
            raise bad("camera_zoom", f"must be ≥ 0, got {self.camera_zoom}")
        if len(self.pan_speed) != 2 or not 0 <= self.pan_speed[0] <= self.pan_speed[1]:
            raise bad("pan_speed", f"must be (min, max) with 0 ≤ min ≤ max, got {self.pan_speed}")
        if self.workers < 0:
            raise bad("workers", f"must be ≥ 0 (0 = automatic), got {self.workers}")


@dataclass
class SyntheticSequence:
    """One generated sequence, in memory.

    Attributes:
        name: ``synth-XXX``.
        frames: ``T×H×W×3`` uint8 RGB.
        masks: ``T×H×W`` uint8 object ids (0 background, 1..K objects).
        flows: ``(T−1)×H×W×2`` float32 forward flow ``(dx, dy)`` in pixels from frame t to t+1
            (the motion of whatever is visible at each pixel of frame t), or None.
        num_objects: K.
        amodal_area: ``T×K`` pixels each object covers on the unbounded image plane.
        in_frame_area: ``T×K`` pixels it covers inside the frame, ignoring occlusion.
        visible_area: ``T×K`` pixels where it is visible (equals the mask pixel count).
    """

    name: str
    frames: np.ndarray
    masks: np.ndarray
    flows: np.ndarray | None
    num_objects: int
    amodal_area: np.ndarray
    in_frame_area: np.ndarray
    visible_area: np.ndarray


def sequence_name(index: int) -> str:
    """The name of sequence ``index``: ``synth-000``, ``synth-001``, ..."""
    return f"synth-{index:03d}"


def split_names(config: SyntheticConfig) -> tuple[list[str], list[str]]:
    """(train, val) sequence names: the last ``num_val`` (or ``round(val_fraction·N)``) are val."""
    names = [sequence_name(i) for i in range(config.num_sequences)]
    if config.num_val is not None:
        num_val = config.num_val
    else:
        num_val = int(math.floor(config.val_fraction * config.num_sequences + 0.5))
    return names[: len(names) - num_val], names[len(names) - num_val :]


# --------------------------------------------------------------------------------------------
# Procedural textures
# --------------------------------------------------------------------------------------------


def _texture_size(height: int, width: int) -> int:
    """Side of the square procedural textures: a power of two ≥ half the long side, ≤ 512."""
    return int(min(512, max(32, 2 ** math.ceil(math.log2(max(height, width) / 2)))))


@functools.lru_cache(maxsize=8)
def _log_frequency(size: int) -> np.ndarray:
    """log |f| on the ``size × (size//2 + 1)`` rfft grid (0 at the DC term)."""
    fy = np.fft.fftfreq(size)[:, None]
    fx = np.fft.rfftfreq(size)[None, :]
    radius = np.sqrt(fx * fx + fy * fy)
    radius[0, 0] = 1.0
    return np.log(radius).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, size: int, beta: float) -> np.ndarray:
    """``size×size`` float32 noise with power spectrum ∝ 1/f^beta, normalised to about [0, 1]."""
    spectrum = scipy.fft.rfft2(rng.standard_normal((size, size), dtype=np.float32))
    spectrum *= np.exp(np.float32(-beta / 2) * _log_frequency(size))
    spectrum[0, 0] = 0.0
    field = scipy.fft.irfft2(spectrum, s=(size, size))
    # mean ± 2.5 std → [0, 1] (about the 1st and 99th percentiles of a Gaussian field)
    mean, std = float(field.mean()), max(float(field.std()), 1e-8)
    return np.clip((field - mean) / (5 * std) + 0.5, 0, 1)


def _colormap(field: np.ndarray, colors: np.ndarray) -> np.ndarray:
    """Map a [0, 1] field through a piecewise-linear palette ``n×3`` → ``H×W×3`` float32."""
    levels = np.linspace(0, 1, 256)
    stops = np.linspace(0, 1, len(colors))
    table = np.stack([np.interp(levels, stops, colors[:, c]) for c in range(3)], -1)
    codes = np.clip(field * 255 + 0.5, 0, 255).astype(np.uint8)
    lut = np.clip(table + 0.5, 0, 255).astype(np.uint8).reshape(256, 1, 3)
    return cv2.LUT(cv2.merge([codes, codes, codes]), lut).astype(np.float32)


def _random_colors(rng: np.random.Generator, count: int) -> np.ndarray:
    return rng.uniform(0, 255, size=(count, 3)).astype(np.float32)


def _rotated_grid(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    angle = rng.uniform(0, np.pi)
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32)
    return (xs * np.cos(angle) + ys * np.sin(angle), -xs * np.sin(angle) + ys * np.cos(angle))


def _make_texture(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
    """One procedural texture: ``size×size×3`` uint8 RGB."""
    if kind == "noise":
        field = 0.7 * _smooth_noise(rng, size, rng.uniform(1.8, 2.6))
        field += 0.3 * _smooth_noise(rng, size, rng.uniform(1.0, 1.6))
        image = _colormap(field, _random_colors(rng, int(rng.integers(3, 6))))
    elif kind == "stripes":
        along, _ = _rotated_grid(rng, size)
        period = size / rng.uniform(4, 14)
        warp = _smooth_noise(rng, size, 3.0) * rng.uniform(0.0, 2.0)
        wave = np.sin(2 * np.pi * (along / period + warp))
        field = 0.5 + 0.5 * np.tanh(rng.uniform(1.5, 6.0) * wave)
        image = _colormap(field, _random_colors(rng, 2))
    elif kind == "checker":
        a, b = _rotated_grid(rng, size)
        cell = size / rng.uniform(4, 12)
        parity = (np.floor(a / cell) + np.floor(b / cell)) % 2
        image = _colormap(parity.astype(np.float32), _random_colors(rng, 2))
        image = cv2.GaussianBlur(image, (0, 0), 0.8)
    elif kind == "blobs":
        field = _smooth_noise(rng, size, rng.uniform(2.8, 3.6))
        levels = int(rng.integers(3, 7))
        palette = _random_colors(rng, levels)
        image = palette[np.minimum((field * levels).astype(np.int64), levels - 1)]
        image = cv2.GaussianBlur(image, (0, 0), 1.0)
    else:  # pragma: no cover - internal
        raise ValueError(kind)
    # Fine multiplicative detail so that every texture has local structure to match.
    detail = _smooth_noise(rng, size, 1.2)
    image = image * (0.8 + 0.4 * detail)[..., None]
    return np.clip(image + 0.5, 0, 255).astype(np.uint8)


_TEXTURE_KINDS = ("noise", "stripes", "checker", "blobs")


def _color_transform(rng: np.random.Generator, texture: np.ndarray) -> np.ndarray:
    """Recolour a texture: hue rotation about the grey axis, gain and offset."""
    angle = rng.uniform(np.pi / 3, 5 * np.pi / 3)
    axis = np.ones(3) / np.sqrt(3)
    cross = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    cos, sin = np.cos(angle), np.sin(angle)
    rotation = cos * np.eye(3) + sin * cross + (1 - cos) * np.outer(axis, axis)  # Rodrigues
    gain = rng.uniform(0.7, 1.3)
    offset = rng.uniform(-25, 25)
    matrix = np.concatenate([gain * rotation, np.full((3, 1), offset)], 1)
    return cv2.transform(texture, matrix)  # saturating uint8 arithmetic


# --------------------------------------------------------------------------------------------
# Layers and their motion
# --------------------------------------------------------------------------------------------


@dataclass
class _Deformation:
    """δ_t(u)_d = Σ_j amp[d, j] · sin(k[d, j] · u + rate[d, j] · t + phase[d, j])."""

    amp: np.ndarray  # 2×J
    k: np.ndarray  # 2×J×2
    rate: np.ndarray  # 2×J, per unit of scene time
    phase: np.ndarray  # 2×J
    time_scale: float = 1.0  # scene time per frame

    def __call__(self, ux: np.ndarray, uy: np.ndarray, t: int) -> tuple[np.ndarray, np.ndarray]:
        out = []
        for d in range(2):
            total = np.zeros_like(ux)
            for j in range(self.amp.shape[1]):
                # Python floats keep float32 arrays float32 (NumPy scalars would promote).
                arg = float(self.k[d, j, 0]) * ux + float(self.k[d, j, 1]) * uy
                arg += float(self.rate[d, j] * t * self.time_scale + self.phase[d, j])
                total += float(self.amp[d, j]) * np.sin(arg)
            out.append(total)
        return out[0], out[1]

    @property
    def max_displacement(self) -> float:
        return float(np.abs(self.amp).sum(axis=1).max())


@dataclass
class _Layer:
    """A textured layer: frame p = A_t u + o_t, canonical c = u + δ_t(u), texture at c·s + off."""

    texture: np.ndarray  # S×S×3 uint8
    tex_scale: float
    tex_offset: np.ndarray  # 2
    linear: np.ndarray  # T×2×2 (A_t)
    inverse: np.ndarray  # T×2×2 (A_t⁻¹)
    origin: np.ndarray  # T×2 (o_t)
    deformation: _Deformation | None = None
    shape: np.ndarray | None = None  # R×R float32 coverage raster of the object, None: background
    shape_center: float = 0.0  # raster coordinate of canonical (0, 0)
    reach: float = 0.0  # canonical radius that bounds the deformed shape


def _similarity(angle: np.ndarray, scale_x: np.ndarray, scale_y: np.ndarray) -> np.ndarray:
    """T×2×2 matrices R(angle) · diag(scale_x, scale_y)."""
    cos, sin = np.cos(angle), np.sin(angle)
    top = np.stack([cos * scale_x, -sin * scale_y], -1)
    bottom = np.stack([sin * scale_x, cos * scale_y], -1)
    return np.stack([top, bottom], -2)


def _fold(values: np.ndarray, low: float, high: float) -> np.ndarray:
    """Reflect values into [low, high] (a bouncing trajectory)."""
    span = high - low
    phase = np.mod(values - low, 2 * span)
    return low + np.where(phase > span, 2 * span - phase, phase)


def _radial_profile(theta: np.ndarray, amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """r(θ) = max(1 + Σ_k a_k cos(kθ + φ_k), 0.35) for harmonics k = 2, 3, ..."""
    harmonics = np.arange(2, 2 + len(amps)).reshape((-1,) + (1,) * theta.ndim)
    amps = amps.reshape(harmonics.shape)
    phases = phases.reshape(harmonics.shape)
    return np.maximum(1 + (amps * np.cos(harmonics * theta + phases)).sum(0), 0.35)


def _random_shape(rng: np.random.Generator, radius: float) -> tuple[np.ndarray, float]:
    """A smooth, non-convex random radial blob of maximum radius ``radius``.

    Returns the coverage raster (float32 in [0, 1], 0.5 on the outline) and the raster
    coordinate of the blob's centre. Shapes are redrawn until clearly non-convex (area / hull
    area below 0.93).
    """
    angles = np.linspace(0, 2 * np.pi, 720, endpoint=False)
    for _ in range(30):
        amps = rng.uniform(0.05, 0.35, size=5) / np.arange(2, 7) ** 0.6
        phases = rng.uniform(0, 2 * np.pi, size=5)
        profile = _radial_profile(angles, amps, phases)
        outline = np.stack([np.cos(angles), np.sin(angles)], -1) * profile[:, None]
        outline = outline.astype(np.float32)
        solidity = cv2.contourArea(outline) / cv2.contourArea(cv2.convexHull(outline))
        if solidity < 0.93:
            break
    half = int(math.ceil(radius)) + 3
    ys, xs = np.mgrid[-half : half + 1, -half : half + 1].astype(np.float64)
    edge = radius / profile.max() * _radial_profile(np.arctan2(ys, xs), amps, phases)
    # A 1.5-pixel soft edge: the 0.5 level is the outline, remapping gives anti-aliased alpha.
    coverage = np.clip(0.5 + (edge - np.hypot(xs, ys)) / 1.5, 0, 1).astype(np.float32)
    return coverage, float(half)


def _background_layer(
    rng: np.random.Generator, config: SyntheticConfig, texture: np.ndarray, frames: np.ndarray
) -> _Layer:
    height, width = config.height, config.width
    diag = math.hypot(height, width)
    size = texture.shape[0]
    zoom = np.exp(config.camera_zoom * rng.uniform(0.05, 0.25)
                  * np.sin(2 * np.pi * frames / rng.uniform(40, 120) + rng.uniform(0, 2 * np.pi)))
    angle = config.camera_zoom * rng.uniform(0.0, 0.08) * np.sin(2 * np.pi * frames / rng.uniform(60, 150)
                                                                  + rng.uniform(0, 2 * np.pi))
    direction = rng.uniform(0, 2 * np.pi)
    speed = rng.uniform(*config.pan_speed) * diag
    wobble = rng.uniform(0, 0.03) * diag
    pan = speed * frames[:, None] * np.array([np.cos(direction), np.sin(direction)])
    pan += wobble * np.sin(2 * np.pi * frames[:, None] / rng.uniform(30, 90) + rng.uniform(0, 6, 2))
    linear = _similarity(angle, zoom, zoom)
    return _Layer(
        texture=texture,
        tex_scale=size / max(height, width) * rng.uniform(0.6, 1.0),
        tex_offset=np.array([size / 2, size / 2]),
        linear=linear,
        inverse=np.linalg.inv(linear),
        origin=np.array([width / 2, height / 2]) + pan,
    )


def _object_layer(
    rng: np.random.Generator,
    config: SyntheticConfig,
    texture: np.ndarray,
    tex_scale: float,
    frames: np.ndarray,
) -> _Layer:
    height, width = config.height, config.width
    diag = math.hypot(height, width)
    radius = rng.uniform(0.14, 0.3) * min(height, width)
    shape, center = _random_shape(rng, radius)

    start = np.array([rng.uniform(0.15, 0.85) * width, rng.uniform(0.15, 0.85) * height])
    direction = rng.uniform(0, 2 * np.pi)
    speed = rng.uniform(0.003, 0.012) * diag
    path = start + speed * frames[:, None] * np.array([np.cos(direction), np.sin(direction)])
    path += rng.uniform(0, 0.05) * min(height, width) * np.sin(
        2 * np.pi * frames[:, None] / rng.uniform(20, 60) + rng.uniform(0, 2 * np.pi, 2)
    )
    # Bounce with the centre allowed 0.6 radius beyond the border: objects partly leave.
    margin = 0.6 * radius
    origin = np.stack(
        [_fold(path[:, 0], -margin, width + margin), _fold(path[:, 1], -margin, height + margin)],
        -1,
    )

    angle = rng.uniform(0, 2 * np.pi) + rng.choice([-1, 1]) * rng.uniform(0.005, 0.04) * frames
    scale = np.exp(rng.uniform(0.05, 0.3) * np.sin(2 * np.pi * frames / rng.uniform(30, 90)
                                                    + rng.uniform(0, 2 * np.pi)))
    stretch = np.exp(rng.uniform(0.0, 0.15) * np.sin(2 * np.pi * frames / rng.uniform(20, 60)
                                                      + rng.uniform(0, 2 * np.pi)))
    linear = _similarity(angle, scale * stretch, scale / stretch)

    # Travelling waves with Σ|amp·k| ≤ 0.3 per coordinate keep u ↦ u + δ(u) invertible.
    shape_j = (2, _DEFORM_COMPONENTS)
    wavelength = rng.uniform(0.8, 2.5, size=shape_j) * radius
    wave_dir = rng.uniform(0, 2 * np.pi, size=shape_j)
    wavenumber = 2 * np.pi / wavelength
    k = np.stack([np.cos(wave_dir), np.sin(wave_dir)], -1) * wavenumber[..., None]
    slope = rng.uniform(0.03, 0.15, size=shape_j)
    deformation = _Deformation(
        amp=slope / wavenumber,
        k=k,
        rate=rng.uniform(0.05, 0.25, size=shape_j) * rng.choice([-1, 1], size=shape_j),
        phase=rng.uniform(0, 2 * np.pi, size=shape_j),
        time_scale=config.motion_scale,
    )
    size = texture.shape[0]
    return _Layer(
        texture=texture,
        tex_scale=tex_scale,
        tex_offset=rng.uniform(0, size, size=2),
        linear=linear,
        inverse=np.linalg.inv(linear),
        origin=origin,
        deformation=deformation,
        shape=shape,
        shape_center=center,
        reach=radius + deformation.max_displacement + 2,
    )


@dataclass
class _Scene:
    background: _Layer
    objects: list[_Layer]  # in depth order, back to front
    ids: list[int]  # object id of each entry of ``objects``


def _draw_objects(
    rng: np.random.Generator,
    config: SyntheticConfig,
    bank: list[np.ndarray],
    background: _Layer,
    frames: np.ndarray,
) -> tuple[list[_Layer], list[int]]:
    """Objects in depth order (back to front) and their ids (a random permutation of 1..K)."""
    count = int(rng.integers(config.min_objects, config.max_objects + 1))
    base_scale = bank[0].shape[0] / max(config.height, config.width)
    objects = []
    for _ in range(count):
        if rng.random() < 0.4:  # the background's own texture at another scale
            texture = bank[0]
            scale = background.tex_scale * rng.choice([0.5, 1.8]) * rng.uniform(0.85, 1.15)
        else:
            texture = bank[int(rng.integers(len(bank)))]
            scale = base_scale * rng.uniform(0.6, 1.6)
        if rng.random() < 0.5:
            texture = _color_transform(rng, texture)
        objects.append(_object_layer(rng, config, texture, scale, frames))
    return objects, [int(i) for i in rng.permutation(count) + 1]


def _build_scene(config: SyntheticConfig, rng: np.random.Generator) -> _Scene:
    """Texture bank, background and objects; objects are redrawn until each one is clearly
    visible in frame 0 (at least 40% of its in-frame area and 0.4% of the frame)."""
    frames = np.arange(config.num_frames, dtype=np.float64) * config.motion_scale  # scene times
    size = _texture_size(config.height, config.width)
    bank = [
        _make_texture(rng, size, _TEXTURE_KINDS[int(rng.integers(len(_TEXTURE_KINDS)))])
        for _ in range(int(rng.integers(2, 5)))
    ]
    background = _background_layer(rng, config, bank[0], frames)
    minimum = max(0.004 * config.height * config.width, 4)
    for _ in range(50):
        scene = _Scene(background, *_draw_objects(rng, config, bank, background, frames))
        first = _render_frame(scene, 0, config.height, config.width, with_flow=False)
        if np.all(first.visible >= np.maximum(0.4 * first.in_frame, minimum)):
            break
    return scene


# --------------------------------------------------------------------------------------------
# Rendering and flow
# --------------------------------------------------------------------------------------------


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
    layer: _Layer, t: int, xs: np.ndarray, ys: np.ndarray
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


def _sample_texture(layer: _Layer, cx: np.ndarray, cy: np.ndarray) -> np.ndarray:
    map_x = cx * np.float32(layer.tex_scale) + np.float32(layer.tex_offset[0])
    map_y = cy * np.float32(layer.tex_scale) + np.float32(layer.tex_offset[1])
    return cv2.remap(
        layer.texture, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101
    )


def _render_object(
    layer: _Layer, t: int, height: int, width: int
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
    layer: _Layer,
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
class _FrameOutput:
    image: np.ndarray  # H×W×3 float32 RGB in [0, 255], before photometric effects
    ids: np.ndarray  # H×W uint8
    flow: np.ndarray | None  # H×W×2 float32
    amodal: np.ndarray  # K
    in_frame: np.ndarray  # K
    visible: np.ndarray  # K


def _render_frame(scene: _Scene, t: int, height: int, width: int, with_flow: bool) -> _FrameOutput:
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
    return _FrameOutput(image, ids, flow, amodal[order], in_frame[order], visible[order])


@dataclass
class _Photometric:
    """Per-sequence illumination, blur and noise parameters."""

    gain: tuple[float, float, float]  # amplitude, period, phase
    tint: np.ndarray  # 3×3 amplitude, period, phase per channel
    gradient: np.ndarray  # 2×3 (x, y) amplitude, period, phase
    spot: tuple[float, float, np.ndarray, np.ndarray]  # strength, width, start, velocity
    blur: tuple[float, float, float]  # base sigma, amplitude, period
    noise_sigma: float
    noise_bank: np.ndarray  # N×(H+P)×(W+P)×3 float32 standard normal
    offsets: np.ndarray  # T×3 (bank index, dy, dx)


_NOISE_PAD = 32


def _photometric_params(rng: np.random.Generator, config: SyntheticConfig) -> _Photometric:
    height, width, count = config.height, config.width, config.num_frames
    diag = math.hypot(height, width)
    bank = rng.standard_normal((2, height + _NOISE_PAD, width + _NOISE_PAD, 3), dtype=np.float32)
    offsets = np.stack(
        [
            rng.integers(0, 2, count),
            rng.integers(0, _NOISE_PAD + 1, count),
            rng.integers(0, _NOISE_PAD + 1, count),
        ],
        -1,
    )
    return _Photometric(
        gain=(rng.uniform(0.05, 0.25), rng.uniform(30, 120), rng.uniform(0, 2 * np.pi)),
        tint=np.stack([rng.uniform(0, 0.06, 3), rng.uniform(30, 120, 3),
                       rng.uniform(0, 2 * np.pi, 3)], -1),
        gradient=np.stack([rng.uniform(0, 0.3, 2), rng.uniform(40, 150, 2),
                           rng.uniform(0, 2 * np.pi, 2)], -1),
        spot=(
            rng.uniform(-0.25, 0.35),
            rng.uniform(0.15, 0.4) * diag,
            np.array([rng.uniform(0, width), rng.uniform(0, height)]),
            rng.uniform(-0.006, 0.006, 2) * diag,
        ),
        blur=(rng.uniform(0.0, 0.8), rng.uniform(0.0, 0.6), rng.uniform(20, 60)),
        noise_sigma=rng.uniform(1.0, 5.0),
        noise_bank=bank,
        offsets=offsets,
    )


def _wave(params: np.ndarray | tuple, t: int) -> float:
    amplitude, period, phase = params
    return float(amplitude * math.sin(2 * math.pi * t / period + phase))


def _apply_photometric(image: np.ndarray, p: _Photometric, t: int) -> np.ndarray:
    """Illumination (global gain, tint, gradient, moving light spot), blur and noise → uint8."""
    height, width = image.shape[:2]
    base, amplitude, period = p.blur
    sigma = base + amplitude * (0.5 + 0.5 * math.sin(2 * math.pi * t / period))
    if sigma > 0.3:
        image = cv2.GaussianBlur(image, (0, 0), sigma)
    scale = max(height, width)
    xs = (np.arange(width, dtype=np.float32) - width / 2) / scale
    ys = (np.arange(height, dtype=np.float32) - height / 2) / scale
    strength, spread, start, velocity = p.spot
    center = start + velocity * t
    spot_x = np.exp(-0.5 * ((np.arange(width) - center[0]) / spread) ** 2).astype(np.float32)
    spot_y = np.exp(-0.5 * ((np.arange(height) - center[1]) / spread) ** 2).astype(np.float32)
    # gain + linear gradient + a moving Gaussian light spot (separable, built from 1-D factors)
    row = (1 + _wave(p.gain, t)) + _wave(p.gradient[0], t) * xs
    column = _wave(p.gradient[1], t) * ys
    light = np.add.outer(column, row) + np.multiply.outer(np.float32(strength) * spot_y, spot_x)
    light3 = cv2.merge([light * np.float32(1 + _wave(p.tint[c], t)) for c in range(3)])
    index, dy, dx = p.offsets[t]
    noise = p.noise_bank[index, dy : dy + height, dx : dx + width]
    # saturate(image · light + sigma · noise), rounded to uint8
    return cv2.addWeighted(
        cv2.multiply(image, light3), 1.0, noise, float(p.noise_sigma), 0.0, dtype=cv2.CV_8U
    )


def _rngs(config: SyntheticConfig, index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent geometry and photometric random streams: switching the photometric effects
    off leaves the geometry unchanged."""
    seq = np.random.SeedSequence([config.seed, index])
    geometry, photometric = seq.spawn(2)
    return np.random.default_rng(geometry), np.random.default_rng(photometric)


def _iter_frames(
    config: SyntheticConfig, index: int, with_flow: bool, photometric: bool
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None, _FrameOutput]]:
    """Yield (BGR uint8 frame, ids, flow to the next frame or None, raw output) per frame.

    Textures are drawn with random colours, so their channel order is arbitrary: rendering
    treats them as BGR, which OpenCV writes without a conversion.
    """
    scene = _build_scene(config, _rngs(config, index)[0])
    effects = _photometric_params(_rngs(config, index)[1], config) if photometric else None
    for t in range(config.num_frames):
        out = _render_frame(scene, t, config.height, config.width, with_flow)
        if effects is None:
            frame = np.clip(out.image + 0.5, 0, 255).astype(np.uint8)
        else:
            frame = _apply_photometric(out.image, effects, t)
        yield frame, out.ids, out.flow, out


def generate_sequence(
    config: SyntheticConfig,
    index: int,
    *,
    with_flow: bool | None = None,
    photometric: bool = True,
) -> SyntheticSequence:
    """Generate sequence ``index`` in memory.

    Args:
        config: the set's settings (frame size, frame count, object counts, seed).
        index: sequence number; the content depends only on ``(config.seed, index)`` and sizes.
        with_flow: compute ground-truth flow (default: ``config.write_flow``).
        photometric: apply illumination change, blur and noise (False gives the clean render,
            which the flow describes exactly).

    Returns:
        A :class:`SyntheticSequence` (frames ``T×H×W×3``, masks ``T×H×W``, flows
        ``(T−1)×H×W×2`` or None).
    """
    config.validate()
    if index < 0:
        raise InputError(f"sequence index must be ≥ 0, got {index}", "index")
    with_flow = config.write_flow if with_flow is None else with_flow
    frames, masks, flows, stats = [], [], [], []
    for frame, ids, flow, out in _iter_frames(config, index, with_flow, photometric):
        frames.append(frame[..., ::-1])  # BGR → RGB
        masks.append(ids)
        if flow is not None:
            flows.append(flow)
        stats.append((out.amodal, out.in_frame, out.visible))
    amodal, in_frame, visible = (np.stack(s) for s in zip(*stats))
    return SyntheticSequence(
        name=sequence_name(index),
        frames=np.stack(frames),
        masks=np.stack(masks),
        flows=np.stack(flows) if with_flow else None,
        num_objects=int(amodal.shape[1]),
        amodal_area=amodal,
        in_frame_area=in_frame,
        visible_area=visible,
    )


# --------------------------------------------------------------------------------------------
# Writing the DAVIS layout
# --------------------------------------------------------------------------------------------


def _sequence_paths(root: Path, name: str) -> list[Path]:
    return [
        root / "JPEGImages" / RESOLUTION_FOLDER / name,
        root / "Annotations" / RESOLUTION_FOLDER / name,
        root / "Flows" / "gt" / RESOLUTION_FOLDER / name,
        root / "Videos" / f"{name}.mp4",
    ]


def _cache_flow_dir(flow_root: Path, name: str) -> Path:
    """The ``+1`` folder of a sequence in a flow-cache tree (:mod:`densessl.datasets.flow_cache`)."""
    from densessl.datasets.flow_cache import gap_folder

    return flow_root / gap_folder(1) / name


def _write_sequence(job: tuple[str, SyntheticConfig, int, str | None]) -> dict:
    """Generate and write one sequence (runs in a worker process). Returns its summary."""
    root_text, config, index, flow_root = job
    cv2.setNumThreads(1)
    root = Path(root_text)
    name = sequence_name(index)
    image_dir, mask_dir, flow_dir, video_path = _sequence_paths(root, name)
    cache_dir = None if flow_root is None else _cache_flow_dir(Path(flow_root), name)
    for folder in (image_dir, mask_dir) + ((flow_dir,) if config.write_flow else ()) + ((cache_dir,) if cache_dir else ()):
        folder.mkdir(parents=True, exist_ok=True)
    # a flow cache needs the flow of the last frame too: the scene is rendered one frame further
    render = config if cache_dir is None else replace(config, num_frames=config.num_frames + 1)
    with_flow = config.write_flow or cache_dir is not None
    writer = None
    if config.write_video:
        video_path.parent.mkdir(parents=True, exist_ok=True)
        writer = cv2.VideoWriter(
            str(video_path), cv2.VideoWriter_fourcc(*"mp4v"), float(config.fps),
            (config.width, config.height),
        )
        if not writer.isOpened():
            raise InputError("cannot open the video for writing (mp4v)", video_path)
    params = [cv2.IMWRITE_JPEG_QUALITY, int(config.jpeg_quality)]
    num_objects = 0
    try:
        for t, (frame, ids, flow, out) in enumerate(_iter_frames(render, index, with_flow, photometric=True)):
            if t == config.num_frames:
                break
            num_objects = len(out.amodal)
            bgr = frame
            jpg = image_dir / f"{t:05d}.jpg"
            if not cv2.imwrite(str(jpg), bgr, params):
                raise InputError("cannot write image", jpg)
            write_indexed_png(mask_dir / f"{t:05d}.png", ids)
            if flow is not None and config.write_flow and t + 1 < config.num_frames:  # T−1 files
                write_flo(flow_dir / f"{t:05d}.flo", flow)
            if flow is not None and cache_dir is not None:
                write_flo(cache_dir / f"{t:05d}.flo", flow)
            if writer is not None:
                writer.write(bgr)
    finally:
        if writer is not None:
            writer.release()
    return {"name": name, "num_objects": num_objects, "num_frames": config.num_frames}


def _resolve_workers(config: SyntheticConfig) -> int:
    if config.workers > 0:
        return min(config.workers, config.num_sequences)
    try:
        available = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        available = os.cpu_count() or 1
    return max(1, min(available, config.num_sequences))


_README = """Synthetic DAVIS-style video set generated by densessl.datasets.synthetic.

Layout (DAVIS-2017; the folder is called 480p whatever the frame size):
  JPEGImages/480p/<seq>/00000.jpg     RGB frames
  Annotations/480p/<seq>/00000.png    palette PNG, pixel = object id (0 background, 1..K)
  Flows/gt/480p/<seq>/00000.flo       forward optical flow frame t -> t+1 (Middlebury .flo,
                                      H x W x 2 float32 (dx, dy) in pixels; T-1 files)
  Videos/<seq>.mp4                    the frames as an mp4 (mp4v)
  ImageSets/2017/train.txt, val.txt   sequence names, one per line
  meta.json                           settings and per-sequence object counts

The flow is exact for the noise-free render: at each pixel it is the motion of the layer
visible there (background or object), including where that point becomes occluded or leaves
the frame in the next frame. The frames add illumination change, blur and noise on top.
Settings: {settings}
"""


def write_synthetic_davis(
    root: str | os.PathLike,
    config: SyntheticConfig,
    overwrite: bool = False,
    *,
    progress: bool = True,
    flow_root: str | os.PathLike | None = None,
) -> list[str]:
    """Generate ``config.num_sequences`` sequences and write them in the DAVIS-2017 layout.

    Args:
        root: output folder; must be empty or missing unless ``overwrite`` (then the folders and
            videos of the sequences being written are replaced; other files are left alone).
        config: the settings.
        progress: show a progress bar over sequences.
        flow_root: also write the exact forward flow of *every* frame as the ``+1`` gap of a
            flow-cache tree (``<flow_root>/+1/<seq>/<frame>.flo``, the layout that
            ``tools/compute_flow.py`` writes and the motion-segmentation tools read). The scene is
            rendered one frame further so that the last frame has its flow too; that extra frame
            is not written. The ``+1/<seq>`` folders must not exist unless ``overwrite``.

    With more than one worker the sequences are written by spawned processes, so a script that
    calls this must guard its entry point with ``if __name__ == "__main__":``.

    Returns:
        The sequence names, e.g. ``["synth-000", "synth-001", ...]``.
    """
    from tqdm import tqdm

    config.validate()
    if config.write_video and (config.height % 2 or config.width % 2):
        raise InputError(
            f"the mp4 encoder needs an even frame size, got {config.height}×{config.width}; "
            "change --height/--width or pass --no-video"
        )
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise InputError("output path exists and is not a folder", root)
    if root.is_dir() and any(root.iterdir()) and not overwrite:
        raise InputError("output folder is not empty (pass --overwrite to write into it)", root)
    names = [sequence_name(i) for i in range(config.num_sequences)]
    cache_dirs = [] if flow_root is None else [_cache_flow_dir(Path(flow_root), name) for name in names]
    if flow_root is not None:
        if Path(flow_root).exists() and not Path(flow_root).is_dir():
            raise InputError("flow cache path exists and is not a folder", flow_root)
        taken = [d for d in cache_dirs if d.exists()]
        if taken and not overwrite:
            raise InputError("the flow cache already holds this sequence (pass --overwrite to replace it)", taken[0])
    if overwrite:
        for path in cache_dirs:
            if path.is_dir():
                shutil.rmtree(path)
        for name in names:
            for path in _sequence_paths(root, name):
                if path.is_dir():
                    shutil.rmtree(path)
                elif path.exists():
                    path.unlink()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InputError(f"cannot create the output folder ({error})", root) from error

    cache_text = None if flow_root is None else str(flow_root)
    jobs = [(str(root), config, i, cache_text) for i in range(config.num_sequences)]
    workers = _resolve_workers(config)
    bar = tqdm(total=len(jobs), desc="synthetic DAVIS", unit="seq", disable=not progress)
    summaries: list[dict] = []
    if workers == 1:
        for job in jobs:
            summaries.append(_write_sequence(job))
            bar.update(1)
    else:
        import multiprocessing

        # spawn: safe regardless of threads in the parent (OpenCV, torch).
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            for summary in pool.imap(_write_sequence, jobs):
                summaries.append(summary)
                bar.update(1)
            pool.close()
            pool.join()
    bar.close()

    train, val = split_names(config)
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    (sets / "train.txt").write_text("".join(f"{n}\n" for n in train))
    (sets / "val.txt").write_text("".join(f"{n}\n" for n in val))
    split_of = {**{n: "train" for n in train}, **{n: "val" for n in val}}
    settings = asdict(config)
    meta = {
        "generator": "densessl.datasets.synthetic",
        "config": settings,
        "resolution_folder": RESOLUTION_FOLDER,
        "flow": "forward, frame t -> t+1, Middlebury .flo, (dx, dy) pixels" if config.write_flow
        else None,
        "flow_cache": None if flow_root is None else str(flow_root),
        "sequences": [{**s, "split": split_of[s["name"]]} for s in summaries],
    }
    (root / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
    (root / "README.txt").write_text(_README.format(settings=json.dumps(settings)))
    return names
