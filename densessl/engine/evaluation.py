"""Periodic label-propagation evaluation (DAVIS J&F) during training."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from densessl.errors import InputError


@dataclass
class DavisEvalConfig:
    """The ``eval`` section: label propagation on a DAVIS-style set during training."""

    davis_root: str | None = None  # None: no evaluation
    every: int = 0  # steps between evaluations (0: only at the end)
    at_start: bool = False  # also evaluate the initial weights
    year: int = 2017
    split: str = "val"
    sequences: list[str] | None = None  # restrict to these sequences
    layer: str = "layer3"  # backbone layer whose features are propagated (CRW ResNets)
    protocol: str = "crw"
    options: dict[str, Any] = field(default_factory=dict)  # propagation settings, e.g. radius, topk
    save_predictions: bool = False  # keep the result PNGs under <run>/eval/step_<N>/


def layer_copy(backbone: nn.Module, name: str, layer: str, device: torch.device) -> nn.Module:
    """A fresh ``create_backbone(name, out_layer=layer)`` holding ``backbone``'s weights."""
    from densessl.models.backbones import create_backbone

    copy = create_backbone(name, out_layer=layer)
    result = copy.load_state_dict(backbone.state_dict(), strict=False)
    if result.missing_keys:
        raise InputError(
            f"eval.layer={layer}: the trained backbone lacks {len(result.missing_keys)} weights of that layer "
            f"(e.g. {result.missing_keys[:3]}); choose a layer up to the one trained"
        )
    return copy.to(device).eval()


def make_davis_evaluator(
    cfg: DavisEvalConfig,
    eval_backbone: Callable[[], nn.Module],
    device: torch.device,
    run_dir: Path,
) -> Callable[[int], dict[str, float]] | None:
    """``evaluate(step) -> {'J&F-Mean': ..., 'J-Mean': ..., ...}`` or None without ``davis_root``.

    ``eval_backbone()`` returns the module to evaluate (called at every evaluation, so it sees
    the current weights).
    """
    if not cfg.davis_root:
        return None
    root = Path(cfg.davis_root)
    if not root.is_dir():
        raise InputError("eval.davis_root is not a folder", root)

    def evaluate(step: int) -> dict[str, float]:
        from densessl.video.davis_propagation import evaluate_backbone_on_davis

        out_dir = run_dir / "eval" / f"step_{step:07d}" if cfg.save_predictions else None
        backbone = eval_backbone()
        with torch.no_grad():
            scores = evaluate_backbone_on_davis(
                backbone, root, year=cfg.year, split=cfg.split, protocol=cfg.protocol, device=device,
                out_dir=out_dir, sequences=cfg.sequences, **cfg.options,
            )
        return {k: float(v) for k, v in scores.items()}

    return evaluate
