"""Contrastive random walk loss against a naive implementation with explicit matrix products."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from densessl.losses.random_walk import (
    RandomWalkLoss,
    affinities,
    chance_loss,
    cycle_loss,
    palindrome_products,
    stochastic_matrix,
    transition_matrices,
)


def naive_walk(nodes: torch.Tensor, temperature: float, eps: float = 1e-20, min_cycle: int = 2):
    """Loops over batch, palindromes, rows; each matrix product written as a sum."""
    b, t, n, _ = nodes.shape
    nodes = nodes.double()

    def matmul(x, y):
        out = torch.zeros(x.shape[0], y.shape[1], dtype=x.dtype)
        for i in range(x.shape[0]):
            for j in range(y.shape[1]):
                out[i, j] = sum(x[i, m] * y[m, j] for m in range(x.shape[1]))
        return out

    def softmax_rows(a):
        e = torch.exp(a - a.max(dim=1, keepdim=True).values)
        return e / e.sum(dim=1, keepdim=True)

    losses, accs = [], []
    for k in range(min_cycle, t):
        loss_k, acc_k = 0.0, 0.0
        for bi in range(b):
            fwd = []
            bwd = []
            for s in range(k):
                a = torch.zeros(n, n, dtype=torch.float64)
                for i in range(n):
                    for j in range(n):
                        a[i, j] = torch.dot(nodes[bi, s, i], nodes[bi, s + 1, j])
                fwd.append(softmax_rows(a / temperature))
                bwd.append(softmax_rows(a.T / temperature))
            p = fwd[0]
            for m in fwd[1:]:
                p = matmul(p, m)
            for m in reversed(bwd):
                p = matmul(p, m)
            for i in range(n):
                loss_k += -math.log(p[i, i].item() + eps)
                acc_k += float(int(torch.argmax(p[i]).item()) == i)
        losses.append(loss_k / (b * n))
        accs.append(acc_k / (b * n))
    return sum(losses) / len(losses), sum(accs) / len(accs), losses


def random_nodes(b=2, t=4, n=5, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(b, t, n, d, generator=g, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("t,min_cycle", [(3, 2), (4, 2), (5, 1)])
def test_loss_matches_naive(t, min_cycle):
    nodes = random_nodes(t=t, seed=t)
    loss_fn = RandomWalkLoss(temperature=0.3, edge_dropout=0.0, min_cycle=min_cycle)
    out = loss_fn(nodes)
    ref_loss, ref_acc, ref_losses = naive_walk(nodes, 0.3, min_cycle=min_cycle)
    assert sorted(out.cycle_losses) == list(range(min_cycle, t))
    assert out.loss.item() == pytest.approx(ref_loss, rel=1e-9)
    assert out.accuracy.item() == pytest.approx(ref_acc)
    for k, ref in zip(sorted(out.cycle_losses), ref_losses):
        assert out.cycle_losses[k].item() == pytest.approx(ref, rel=1e-9)


def test_palindromes_only_from_turning_frame_two():
    """With T=4 the paper's palindromes are 0→1→2→1→0 and 0→1→2→3→2→1→0 (not 0→1→0)."""
    nodes = random_nodes(t=4)
    fwd, bwd = transition_matrices(nodes, 0.5)
    products = palindrome_products(fwd, bwd, min_cycle=2)
    assert sorted(products) == [2, 3]
    expected = fwd[0] @ fwd[1] @ fwd[2] @ bwd[2] @ bwd[1] @ bwd[0]
    torch.testing.assert_close(products[3], expected)
    # return matrices are row-stochastic
    torch.testing.assert_close(products[2].sum(-1), torch.ones(2, 5, dtype=torch.float64))


def test_chance_level_with_uniform_features():
    nodes = torch.ones(3, 4, 49, 8) / math.sqrt(8)
    out = RandomWalkLoss(temperature=0.05, edge_dropout=0.0)(nodes)
    assert out.loss.item() == pytest.approx(math.log(49), rel=1e-5)
    assert chance_loss(49) == pytest.approx(3.8918, abs=1e-4)


def test_near_chance_with_random_features_at_high_temperature():
    g = torch.Generator().manual_seed(1)
    nodes = F.normalize(torch.randn(4, 4, 49, 128, generator=g), dim=-1)
    out = RandomWalkLoss(temperature=10.0, edge_dropout=0.0)(nodes)
    assert abs(out.loss.item() - math.log(49)) < 0.01


def test_identical_frames_give_low_loss_and_full_accuracy():
    g = torch.Generator().manual_seed(2)
    frame = F.normalize(torch.randn(1, 1, 16, 32, generator=g), dim=-1)
    nodes = frame.expand(2, 4, 16, 32)
    out = RandomWalkLoss(temperature=0.05, edge_dropout=0.0)(nodes)
    assert out.accuracy.item() == 1.0
    assert out.loss.item() < 0.1 * math.log(16)


def test_gradient_flows_and_matches_finite_differences():
    nodes = random_nodes(b=1, t=3, n=3, d=4).requires_grad_(True)
    loss_fn = RandomWalkLoss(temperature=0.5, edge_dropout=0.0)
    assert torch.autograd.gradcheck(lambda x: loss_fn(x).loss, (nodes,))


def test_edge_dropout_does_not_modify_affinity_and_directions_are_independent():
    torch.manual_seed(0)
    nodes = F.normalize(torch.randn(8, 2, 40, 16), dim=-1)
    logits = affinities(nodes)[:, 0]
    before = logits.clone()
    stochastic_matrix(logits, 0.05, edge_dropout=0.3)
    torch.testing.assert_close(logits, before)  # no in-place write into the affinity

    fwd, bwd = transition_matrices(nodes, 0.05, edge_dropout=0.3)
    dropped_f = fwd[0] == 0
    dropped_b = bwd[0].transpose(-1, -2) == 0
    rate_f = dropped_f.float().mean().item()
    rate_b = dropped_b.float().mean().item()
    both = (dropped_f & dropped_b).float().mean().item()
    assert 0.27 < rate_f < 0.33 and 0.27 < rate_b < 0.33
    # independent masks overlap on ~p² of the edges; the aliasing bug would give ~p
    assert abs(both - 0.09) < 0.02


def test_dropout_only_in_training_mode():
    nodes = random_nodes(t=4)
    loss_fn = RandomWalkLoss(temperature=0.3, edge_dropout=0.5)
    loss_fn.eval()
    a = loss_fn(nodes).loss
    b = loss_fn(nodes).loss
    assert a.item() == b.item()
    loss_fn.train()
    torch.manual_seed(3)
    c = loss_fn(nodes).loss
    assert c.item() != a.item()


def test_the_walk_stays_float32_under_autocast():
    torch.manual_seed(0)
    nodes = F.normalize(torch.randn(2, 4, 49, 128), dim=-1)
    walk = RandomWalkLoss(temperature=0.05, edge_dropout=0.0)
    exact = walk(nodes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = walk(nodes)
    assert mixed.loss.dtype == torch.float32
    torch.testing.assert_close(mixed.loss, exact.loss, atol=1e-6, rtol=1e-6)


def test_cycle_loss_uses_eps_and_accuracy():
    p = torch.tensor([[[0.0, 1.0], [0.0, 1.0]]])
    loss, acc = cycle_loss(p, eps=1e-8)
    assert loss.item() == pytest.approx((-math.log(1e-8) - math.log(1 + 1e-8)) / 2)
    assert acc.item() == 0.5


def test_rejects_too_short_clips_and_bad_args():
    with pytest.raises(ValueError, match="frames"):
        RandomWalkLoss(min_cycle=2)(random_nodes(t=2))
    with pytest.raises(ValueError):
        RandomWalkLoss(temperature=0)
    with pytest.raises(ValueError):
        RandomWalkLoss(edge_dropout=1.0)
