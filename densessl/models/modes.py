"""Switching a module's training mode for a block of code."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from torch import nn


@contextlib.contextmanager
def eval_mode(module: nn.Module) -> Iterator[nn.Module]:
    """``module`` in eval mode inside the block; its training flag is set back afterwards (on
    errors too), for every submodule alike, as ``module.train(flag)`` does."""
    was_training = module.training
    module.eval()
    try:
        yield module
    finally:
        module.train(was_training)
