"""Contrastive random walk (CRW) loss: cycle-consistent walks along palindromes of a clip.

Nodes of consecutive frames are connected by transition matrices
``A_t = softmax(<q_t, q_{t+1}> / tau)`` (row-stochastic); the backward matrices use the
transposed affinity. For every palindrome ``0 -> 1 -> ... -> k -> ... -> 1 -> 0`` the product of
forward and backward matrices should return each node to itself, so the loss is the
cross-entropy of ``log(P + eps)`` against the identity, averaged over the palindromes
(k = ``min_cycle`` ... T-1; the reference uses k >= 2).

Edge dropout sets random affinity logits to a large negative value before the softmax. Unlike
the reference implementation (which writes the dropout in place into the affinity tensor, so
the backward direction, a transposed view of the same storage, sees the forward direction's
dropped edges), each direction here draws its own mask on its own tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

# Value used for dropped logits: finite so that a row whose edges are all dropped gives a
# uniform distribution instead of NaN. Softmax is always computed in float32.
_DROPPED_LOGIT = -1e20


@dataclass
class WalkOutput:
    """Result of :class:`RandomWalkLoss`.

    ``loss``: scalar (mean over palindromes, batch and nodes). ``cycle_losses`` and
    ``cycle_accuracies``: one scalar per palindrome, keyed by its turning frame k.
    ``accuracy``: mean cycle accuracy (fraction of nodes whose most probable return is
    themselves) over the palindromes.
    """

    loss: Tensor
    accuracy: Tensor
    cycle_losses: dict[int, Tensor]
    cycle_accuracies: dict[int, Tensor]


def affinities(nodes: Tensor) -> Tensor:
    """Similarities of consecutive frames' nodes.

    Args:
        nodes: B×T×N×D node embeddings (usually L2-normalised).

    Returns:
        B×(T-1)×N×N (at least float32), entry [b, t, i, j] = <nodes[b, t, i], nodes[b, t+1, j]>.
    """
    if nodes.dim() != 4:
        raise ValueError(f"nodes must be B×T×N×D, got shape {tuple(nodes.shape)}")
    q = nodes.to(torch.promote_types(nodes.dtype, torch.float32))
    return torch.einsum("btnd,btmd->btnm", q[:, :-1], q[:, 1:])


def stochastic_matrix(logits: Tensor, temperature: float, edge_dropout: float = 0.0) -> Tensor:
    """Row-wise softmax of ``logits / temperature`` with optional edge dropout.

    Args:
        logits: ...×N×M affinities (not modified).
        temperature: softmax temperature τ.
        edge_dropout: probability of dropping each edge (logit → -1e20) before the softmax.

    Returns:
        ...×N×M (at least float32), rows sum to 1.
    """
    scaled = logits.to(torch.promote_types(logits.dtype, torch.float32)) / temperature
    if edge_dropout > 0:
        drop = torch.rand_like(scaled) < edge_dropout
        scaled = scaled.masked_fill(drop, _DROPPED_LOGIT)
    return torch.softmax(scaled, dim=-1)


def transition_matrices(
    nodes: Tensor, temperature: float, edge_dropout: float = 0.0
) -> tuple[list[Tensor], list[Tensor]]:
    """Forward and backward transition matrices of a clip.

    Args:
        nodes: B×T×N×D.

    Returns:
        (forward, backward): T-1 matrices B×N×N each; ``forward[t]`` = softmax of the affinity
        frame t → t+1, ``backward[t]`` = softmax of its transpose (t+1 → t). Each direction
        draws its own edge-dropout mask.
    """
    logits = affinities(nodes)
    steps = range(logits.shape[1])
    forward = [stochastic_matrix(logits[:, i], temperature, edge_dropout) for i in steps]
    backward = [stochastic_matrix(logits[:, i].transpose(-1, -2), temperature, edge_dropout) for i in steps]
    return forward, backward


def palindrome_products(forward: list[Tensor], backward: list[Tensor], min_cycle: int = 2) -> dict[int, Tensor]:
    """Return-probability matrices of the palindromes 0→…→k→…→0.

    Args:
        forward: T-1 matrices B×N×N, ``forward[t]`` = transitions frame t → t+1.
        backward: T-1 matrices B×N×N, ``backward[t]`` = transitions frame t+1 → t.
        min_cycle: smallest turning frame k (the reference uses 2).

    Returns:
        {k: B×N×N}, P_k = F_0 F_1 … F_{k-1} B_{k-1} … B_0 for k = min_cycle … T-1.
    """
    products: dict[int, Tensor] = {}
    walk = None  # F_0 … F_{k-1}
    for k in range(1, len(forward) + 1):
        walk = forward[0] if walk is None else walk @ forward[k - 1]
        if k < min_cycle:
            continue
        product = walk
        for t in range(k - 1, -1, -1):
            product = product @ backward[t]
        products[k] = product
    return products


def cycle_loss(product: Tensor, eps: float = 1e-20) -> tuple[Tensor, Tensor]:
    """Cross-entropy of ``log(P + eps)`` against the identity, and the cycle accuracy.

    Args:
        product: B×N×N return-probability matrix.
        eps: added before the log (the reference's 1e-20).

    Returns:
        (loss, accuracy) scalars, averaged over batch and nodes.
    """
    n = product.shape[-1]
    diagonal = torch.diagonal(product, dim1=-2, dim2=-1)  # B×N
    loss = -torch.log(diagonal + eps).mean()
    target = torch.arange(n, device=product.device)
    accuracy = (product.argmax(dim=-1) == target).float().mean()
    return loss, accuracy


class RandomWalkLoss(nn.Module):
    """Contrastive random walk loss over a clip's nodes.

    Args:
        temperature: softmax temperature τ (paper 0.05).
        edge_dropout: edge dropout rate, applied only in training mode (paper 0.1).
        eps: added to P before the log.
        min_cycle: shortest palindrome turning frame k (paper 2, so T >= 3 is needed).
    """

    def __init__(
        self, temperature: float = 0.05, edge_dropout: float = 0.1, eps: float = 1e-20, min_cycle: int = 2
    ) -> None:
        super().__init__()
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0 <= edge_dropout < 1:
            raise ValueError(f"edge_dropout must be in [0, 1), got {edge_dropout}")
        if min_cycle < 1:
            raise ValueError(f"min_cycle must be >= 1, got {min_cycle}")
        self.temperature = temperature
        self.edge_dropout = edge_dropout
        self.eps = eps
        self.min_cycle = min_cycle

    def forward(self, nodes: Tensor) -> WalkOutput:
        """Args: nodes B×T×N×D. Returns a :class:`WalkOutput`."""
        t = nodes.shape[1]
        if t - 1 < self.min_cycle:
            raise ValueError(
                f"clip of {t} frames has no palindrome with turning frame >= {self.min_cycle}; "
                f"use at least {self.min_cycle + 1} frames"
            )
        drop = self.edge_dropout if self.training else 0.0
        losses: dict[int, Tensor] = {}
        accuracies: dict[int, Tensor] = {}
        # the walk in float32 even under autocast: the N×N products are cheap, and bf16 logits
        # (÷ τ = 0.05) and products of several stochastic matrices lose too much precision
        with torch.autocast(nodes.device.type, enabled=False):
            forward, backward = transition_matrices(
                nodes.to(torch.promote_types(nodes.dtype, torch.float32)), self.temperature, drop
            )
            for k, product in palindrome_products(forward, backward, self.min_cycle).items():
                losses[k], accuracies[k] = cycle_loss(product, self.eps)
        loss = torch.stack(list(losses.values())).mean()
        accuracy = torch.stack(list(accuracies.values())).mean()
        return WalkOutput(loss=loss, accuracy=accuracy, cycle_losses=losses, cycle_accuracies=accuracies)


def chance_loss(num_nodes: int) -> float:
    """The loss of a walk that returns uniformly at random: ln(N)."""
    return math.log(num_nodes)
