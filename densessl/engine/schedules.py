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
    progress: float | None = None,
) -> float:
    """Multiplier of the base learning rate at ``step`` (0-based) of ``total_steps``.

    - ``constant``: 1.
    - ``step``: ``gamma ** (number of milestones passed)``; milestones are fractions of training
      (0.8 → ×gamma from step ``round(0.8 · total_steps)`` on).
    - ``cosine``: from 1 to ``final_factor`` along a half cosine (after warmup).
    Linear warmup from ``1/warmup_steps`` to 1 over the first ``warmup_steps`` steps.

    ``progress`` (in [0, 1]), when given, is the fraction of training done, in place of
    ``step / total_steps`` (e.g. the fraction of a time budget spent); warmup still counts steps.
    """
    if warmup_steps > 0 and step < warmup_steps:
        at_end = _after_warmup(warmup_steps, total_steps, name, milestones, gamma, warmup_steps, final_factor, progress)
        return (step + 1) / warmup_steps * at_end
    return _after_warmup(step, total_steps, name, milestones, gamma, warmup_steps, final_factor, progress)


def _after_warmup(step, total_steps, name, milestones, gamma, warmup_steps, final_factor, progress) -> float:
    if name == "constant":
        return 1.0
    if name == "step":
        if progress is not None:
            passed = sum(1 for m in milestones if progress >= m)
        else:
            passed = sum(1 for m in milestones if step >= round(m * total_steps))
        return float(gamma**passed)
    if name == "cosine":
        if progress is None:
            span = max(1, total_steps - warmup_steps)
            progress = (step - warmup_steps) / span
        progress = min(1.0, max(0.0, progress))
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
