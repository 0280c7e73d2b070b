"""Contextual information separation (CIS; Yang et al., CVPR 2019).

A generator proposes a soft mask ``m``; an inpainter reconstructs the flow ``u`` inside a region
from the flow outside it. With the Charbonnier penalty ``ρ(x) = sqrt(x² + 1e-6)`` and sums over
the ``N = 2·H·W`` flow elements of a sample:

- ``E(m)   = Σ ρ(u − I(u ⊙ (1−m), m)) · m``        (inside ``m``, predicted from outside)
- ``E(1−m) = Σ ρ(u − I(u ⊙ m, 1−m)) · (1−m)``       (the complement, the same way)
- ``D(m)   = Σ ρ(u − I₀) · m + ε·N``                 (``I₀``: the inpainter without any flow)

The generator minimises ``[1 − E(m)/D(m)] + [1 − E(1−m)/D(1−m)]`` (the object's motion should
be unpredictable from its surroundings, and vice versa); the inpainter minimises
``(E(m) + E(1−m) + Σ ρ(u − I₀)) / N``. ``ε`` is given **per flow element**: the reference's
75 for a sum over 384×192×2 elements is ``ε ≈ 5.09e-4``, and it then means the same at any
resolution. Losses are computed per sample and averaged over the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

CHARBONNIER_EPS2 = 1e-6
REFERENCE_EPSILON_PER_ELEMENT = 75.0 / (384 * 192 * 2)


def charbonnier(x: Tensor, eps2: float = CHARBONNIER_EPS2) -> Tensor:
    """``sqrt(x² + eps2)`` elementwise."""
    return torch.sqrt(x * x + eps2)


@dataclass
class CISTerms:
    """Per-sample terms (each of shape ``B``) and the two players' losses (scalars)."""

    error_in: Tensor  # E(m)
    error_out: Tensor  # E(1-m)
    denom_in: Tensor  # D(m), ε included
    denom_out: Tensor  # D(1-m), ε included
    image_only_error: Tensor  # Σ ρ(u − I₀)
    generator_losses: Tensor  # the generator's loss of each sample
    generator_loss: Tensor  # their mean
    inpainter_loss: Tensor


def cis_terms(
    flow: Tensor,
    mask: Tensor,
    recon_in: Tensor,
    recon_out: Tensor,
    recon_image_only: Tensor,
    epsilon_per_element: float = REFERENCE_EPSILON_PER_ELEMENT,
    cap_ratio: bool = False,
) -> CISTerms:
    """The CIS terms of a batch.

    Args:
        flow: ``B×2×H×W`` target flow ``u`` (in the same units as the reconstructions).
        mask: ``B×1×H×W`` soft mask ``m`` in [0, 1].
        recon_in: ``B×2×H×W`` inpainter output given ``u ⊙ (1−m)`` and ``m``.
        recon_out: ``B×2×H×W`` inpainter output given ``u ⊙ m`` and ``1−m``.
        recon_image_only: ``B×2×H×W`` inpainter output given no flow.
        epsilon_per_element: ``ε`` per flow element (``D`` adds ``ε · 2HW``).
        cap_ratio: use ``min(E/D, 1)`` in the generator loss, so that a region where the
            inpainter does worse with context than without (an input that fools it, not
            motion the context cannot explain) earns the generator nothing extra.
    """
    if flow.ndim != 4 or flow.shape[1] != 2:
        raise ValueError(f"flow must be B×2×H×W, got {tuple(flow.shape)}")
    if mask.shape != (flow.shape[0], 1, *flow.shape[2:]):
        raise ValueError(f"mask must be B×1×H×W matching the flow, got {tuple(mask.shape)}")
    for name, value in (("recon_in", recon_in), ("recon_out", recon_out), ("recon_image_only", recon_image_only)):
        if value.shape != flow.shape:
            raise ValueError(f"{name} must have the flow's shape {tuple(flow.shape)}, got {tuple(value.shape)}")
    if epsilon_per_element <= 0:
        raise ValueError(f"epsilon_per_element must be > 0, got {epsilon_per_element}")
    flow, mask = flow.float(), mask.float()
    num_elements = flow[0].numel()
    epsilon = epsilon_per_element * num_elements
    complement = 1.0 - mask
    error_in = (charbonnier(flow - recon_in.float()) * mask).sum(dim=(1, 2, 3))
    error_out = (charbonnier(flow - recon_out.float()) * complement).sum(dim=(1, 2, 3))
    base = charbonnier(flow - recon_image_only.float())
    denom_in = (base * mask).sum(dim=(1, 2, 3)) + epsilon
    denom_out = (base * complement).sum(dim=(1, 2, 3)) + epsilon
    image_only_error = base.sum(dim=(1, 2, 3))
    ratio_in, ratio_out = error_in / denom_in, error_out / denom_out
    if cap_ratio:
        ratio_in, ratio_out = ratio_in.clamp(max=1.0), ratio_out.clamp(max=1.0)
    generator_losses = (1.0 - ratio_in) + (1.0 - ratio_out)
    inpainter_loss = ((error_in + error_out + image_only_error) / num_elements).mean()
    return CISTerms(error_in, error_out, denom_in, denom_out, image_only_error, generator_losses,
                    generator_losses.mean(), inpainter_loss)
