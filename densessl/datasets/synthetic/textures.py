"""Procedural textures: a per-sequence bank shared by the background and the objects, so that
raw-pixel matching is ambiguous."""

from __future__ import annotations

import functools
import math

import cv2
import numpy as np
import scipy.fft


def texture_size(height: int, width: int) -> int:
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


def make_texture(rng: np.random.Generator, size: int, kind: str) -> np.ndarray:
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


TEXTURE_KINDS = ("noise", "stripes", "checker", "blobs")


def color_transform(rng: np.random.Generator, texture: np.ndarray) -> np.ndarray:
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
