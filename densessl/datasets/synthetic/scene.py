"""Layers and their motion: a background seen by a moving camera and blob-shaped objects.

Layer ``l`` at frame ``t`` maps a frame pixel ``p`` to canonical coordinates

    u = A_t⁻¹ (p − o_t),    c = g_t(p) = u + δ_t(u),

where ``A_t`` is rotation × anisotropic scale, ``o_t`` the layer's position and ``δ_t`` a small
sum of travelling sine waves (Lipschitz constant below 0.45, so ``u ↦ u + δ_t(u)`` is
invertible). The texture colour and the object's shape are read at ``c``, so they stay attached
to the layer. Rendering and flow are in :mod:`densessl.datasets.synthetic.render`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from densessl.datasets.synthetic.config import SyntheticConfig
from densessl.datasets.synthetic.render import render_frame
from densessl.datasets.synthetic.textures import (
    TEXTURE_KINDS,
    color_transform,
    make_texture,
    texture_size,
)

_DEFORM_COMPONENTS = 2  # sine waves per displacement coordinate


@dataclass
class Deformation:
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
class Layer:
    """A textured layer: frame p = A_t u + o_t, canonical c = u + δ_t(u), texture at c·s + off."""

    texture: np.ndarray  # S×S×3 uint8
    tex_scale: float
    tex_offset: np.ndarray  # 2
    linear: np.ndarray  # T×2×2 (A_t)
    inverse: np.ndarray  # T×2×2 (A_t⁻¹)
    origin: np.ndarray  # T×2 (o_t)
    deformation: Deformation | None = None
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
) -> Layer:
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
    return Layer(
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
) -> Layer:
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
    deformation = Deformation(
        amp=slope / wavenumber,
        k=k,
        rate=rng.uniform(0.05, 0.25, size=shape_j) * rng.choice([-1, 1], size=shape_j),
        phase=rng.uniform(0, 2 * np.pi, size=shape_j),
        time_scale=config.motion_scale,
    )
    size = texture.shape[0]
    return Layer(
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
class Scene:
    background: Layer
    objects: list[Layer]  # in depth order, back to front
    ids: list[int]  # object id of each entry of ``objects``


def _draw_objects(
    rng: np.random.Generator,
    config: SyntheticConfig,
    bank: list[np.ndarray],
    background: Layer,
    frames: np.ndarray,
) -> tuple[list[Layer], list[int]]:
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
            texture = color_transform(rng, texture)
        objects.append(_object_layer(rng, config, texture, scale, frames))
    return objects, [int(i) for i in rng.permutation(count) + 1]


def build_scene(config: SyntheticConfig, rng: np.random.Generator) -> Scene:
    """Texture bank, background and objects; objects are redrawn until each one is clearly
    visible in frame 0 (at least 40% of its in-frame area and 0.4% of the frame)."""
    frames = np.arange(config.num_frames, dtype=np.float64) * config.motion_scale  # scene times
    size = texture_size(config.height, config.width)
    bank = [
        make_texture(rng, size, TEXTURE_KINDS[int(rng.integers(len(TEXTURE_KINDS)))])
        for _ in range(int(rng.integers(2, 5)))
    ]
    background = _background_layer(rng, config, bank[0], frames)
    minimum = max(0.004 * config.height * config.width, 4)
    for _ in range(50):
        scene = Scene(background, *_draw_objects(rng, config, bank, background, frames))
        first = render_frame(scene, 0, config.height, config.width, with_flow=False)
        if np.all(first.visible >= np.maximum(0.4 * first.in_frame, minimum)):
            break
    return scene
