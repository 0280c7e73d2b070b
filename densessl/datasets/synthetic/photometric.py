"""Per-sequence illumination change (gain, tint, gradient, a moving light spot), blur and sensor
noise, applied on top of the clean render."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from densessl.datasets.synthetic.config import SyntheticConfig


@dataclass
class Photometric:
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


def photometric_params(rng: np.random.Generator, config: SyntheticConfig) -> Photometric:
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
    return Photometric(
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


def apply_photometric(image: np.ndarray, p: Photometric, t: int) -> np.ndarray:
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

