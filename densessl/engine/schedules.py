"""Per-step schedules as pure functions (learning rate, weight decay, momentum, temperature)."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def lr_factor(
    step: int,
    total_steps: int,
    name: str = "step",
    milestones: Sequence[float] = (0.8,),
    gamma: float = 0.3,
    warmup_steps: int = 0,
    final_factor: float = 0.0,
) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total_steps``.

    - ``constant``: 1.
    - ``step``: ``gamma ** (number of milestones passed)``; milestones are fractions of training
      (0.8 → ×gamma from step ``round(0.8 · total_steps)`` on).
    - ``cosine``: from 1 to ``final_factor`` along a half cosine (after warmup).
    Linear warmup from ``1/warmup_steps`` to 1 over the first ``warmup_steps`` steps.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps * _after_warmup(warmup_steps, total_steps, name, milestones, gamma, warmup_steps, final_factor)
    return _after_warmup(step, total_steps, name, milestones, gamma, warmup_steps, final_factor)


def _after_warmup(step, total_steps, name, milestones, gamma, warmup_steps, final_factor) -> float:
    if name == "constant":
        return 1.0
    if name == "step":
        passed = sum(1 for m in milestones if step >= round(m * total_steps))
        return float(gamma**passed)
    if name == "cosine":
        span = max(1, total_steps - warmup_steps)
        progress = min(1.0, max(0.0, (step - warmup_steps) / span))
        return final_factor + (1 - final_factor) * 0.5 * (1 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {name!r} (constant, step, cosine)")


SCHEDULES = ("constant", "step", "cosine")


def cosine_schedule(
    start: float, end: float, total_steps: int, warmup_steps: int = 0, warmup_start: float = 0.0
) -> np.ndarray:
    """Precomputed per-step values: linear warmup ``warmup_start → start``, then cosine to ``end``."""
    warm = np.linspace(warmup_start, start, warmup_steps, endpoint=False) if warmup_steps > 0 else np.zeros(0)
    steps = np.arange(max(0, total_steps - warmup_steps))
    cos = end + 0.5 * (start - end) * (1 + np.cos(np.pi * steps / max(1, len(steps))))
    return np.concatenate([warm, cos])[:total_steps]
