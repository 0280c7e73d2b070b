"""Moving averages of weights: the update against its definition, the decay's warm-up."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from densessl.models.ema import update_ema_, warmed_up_decay


def small_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 2, 1))


def test_update_matches_the_definition_on_weights_and_buffers():
    torch.manual_seed(0)
    model = small_net()
    average = copy.deepcopy(model)
    model(torch.randn(2, 3, 8, 8))  # moves the BatchNorm running statistics and its counter
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    before = {k: v.clone() for k, v in average.state_dict().items()}
    update_ema_(average, model, 0.9)
    after, current = average.state_dict(), model.state_dict()
    for key, value in after.items():
        if value.is_floating_point():
            torch.testing.assert_close(value, 0.9 * before[key] + 0.1 * current[key])
            assert not torch.equal(value, before[key]), key
        else:  # num_batches_tracked
            assert torch.equal(value, current[key]) and not torch.equal(value, before[key])
    assert all(p.grad is None for p in average.parameters())


def test_decay_bounds_and_mismatched_modules():
    model, average = small_net(), small_net()
    update_ema_(average, model, 1.0)
    assert not torch.equal(average[0].weight, model[0].weight)
    update_ema_(average, model, 0.0)
    assert all(torch.equal(a, b) for a, b in zip(average.state_dict().values(), model.state_dict().values()))
    with pytest.raises(ValueError, match="decay"):
        update_ema_(average, model, 1.5)
    with pytest.raises(ValueError, match="keys"):
        update_ema_(nn.Linear(2, 2), model, 0.5)
    with pytest.raises(ValueError, match="shape"):
        update_ema_(nn.Linear(2, 3), nn.Linear(2, 2), 0.5)


def test_decay_warm_up():
    assert warmed_up_decay(0.999, 0) == pytest.approx(0.1)  # the first update keeps 90 % of the weights
    assert warmed_up_decay(0.999, 90) == pytest.approx(91 / 100)
    assert warmed_up_decay(0.999, 100_000) == 0.999
    decays = [warmed_up_decay(0.99, n) for n in range(2000)]
    assert all(a <= b for a, b in zip(decays, decays[1:])) and decays[-1] == 0.99
