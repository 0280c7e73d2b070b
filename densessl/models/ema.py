"""Exponential moving averages of a network's weights (Polyak averaging).

``update_ema_(average, model, decay)`` moves every floating-point parameter and buffer of
``average`` towards ``model``'s: ``a ← decay · a + (1 − decay) · w``; integer buffers (BatchNorm's
``num_batches_tracked``) are copied. The BatchNorm running statistics are averaged like the
weights, as in timm's ``ModelEmaV2``.

``warmed_up_decay(decay, updates)`` is ``min(decay, (1 + n) / (10 + n))`` after ``n`` earlier
updates (TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``): early on, the average
forgets the initial weights quickly instead of carrying them for ``~1 / (1 − decay)`` updates.
"""

from __future__ import annotations

import torch
from torch import nn


def warmed_up_decay(decay: float, updates: int) -> float:
    """The decay to use for update number ``updates + 1``."""
    return min(decay, (1.0 + updates) / (10.0 + updates))


@torch.no_grad()
def update_ema_(average: nn.Module, model: nn.Module, decay: float) -> None:
    """In place: ``average``'s weights and buffers ← ``decay · average + (1 − decay) · model``.

    Both modules must have the same architecture (the same state-dict keys and shapes).
    """
    if not 0.0 <= decay <= 1.0:
        raise ValueError(f"decay must lie in [0, 1], got {decay}")
    averaged, current = average.state_dict(keep_vars=True), model.state_dict(keep_vars=True)
    if averaged.keys() != current.keys():
        raise ValueError("the averaged module and the model have different state-dict keys")
    floats_avg, floats_cur = [], []
    for key, target in averaged.items():
        if not isinstance(target, torch.Tensor):
            continue  # extra state
        source = current[key].detach()
        if target.shape != source.shape:
            raise ValueError(f"{key}: shape {tuple(target.shape)} against the model's {tuple(source.shape)}")
        if target.is_floating_point():
            floats_avg.append(target.data)
            floats_cur.append(source.to(target.dtype))
        else:
            target.data.copy_(source)
    if floats_avg:
        torch._foreach_lerp_(floats_avg, floats_cur, 1.0 - decay)
