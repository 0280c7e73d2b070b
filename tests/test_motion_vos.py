"""Motion VOS (CIS): loss against a naive reference, networks, schedule, paired augmentation,
foreground orientation, and the train / eval tools end to end on synthetic data."""

from __future__ import annotations

import copy
import csv
import json

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compiled_counting_graphs, make_motion_set

from densessl.datasets.davis import DavisDataset
from densessl.datasets.motion_pairs import (
    MotionPairDataset, PairAugmentConfig, crop_flip_resize, resize_flow, resize_image,
)
from densessl.errors import InputError
from densessl.losses.cis import REFERENCE_EPSILON_PER_ELEMENT, charbonnier, cis_terms
from densessl.models.unet import UNet
import densessl.video.motion_vos as motion_vos
from densessl.video.motion_vos import (
    FlowInpainter, MotionVOSModel, MotionVOSNetConfig, border_coverage, camera_compensated_foreground,
    MaskGenerator, context_flow_fit, fit_background_motion, flow_magnitude_foreground, hide_region, motion_basis,
    orient_foreground, random_ellipse_masks, robust_motion_fit, standardize_flow,
)

TINY_NET = dict(generator_widths=(4, 8), inpainter_widths=(4, 8), dilations=(2,))


# --------------------------------------------------------------------------------------- loss


def naive_cis(flow, mask, r_in, r_out, r_img, eps, cap=False):
    """Per-sample loops over every element, straight from the definitions (``cap``: the
    ratios E/D capped at 1)."""
    batch, channels, height, width = flow.shape
    g_losses, i_losses = [], []
    for b in range(batch):
        e_in = e_out = d_in = d_out = base_all = 0.0
        for c in range(channels):
            for y in range(height):
                for x in range(width):
                    u, m = float(flow[b, c, y, x]), float(mask[b, 0, y, x])
                    rho = lambda v: (v * v + 1e-6) ** 0.5  # noqa: E731
                    e_in += rho(u - float(r_in[b, c, y, x])) * m
                    e_out += rho(u - float(r_out[b, c, y, x])) * (1 - m)
                    base = rho(u - float(r_img[b, c, y, x]))
                    d_in += base * m
                    d_out += base * (1 - m)
                    base_all += base
        n = channels * height * width
        d_in += eps * n
        d_out += eps * n
        ratio_in, ratio_out = e_in / d_in, e_out / d_out
        if cap:
            ratio_in, ratio_out = min(ratio_in, 1.0), min(ratio_out, 1.0)
        g_losses.append((1 - ratio_in) + (1 - ratio_out))
        i_losses.append((e_in + e_out + base_all) / n)
    return float(np.mean(g_losses)), float(np.mean(i_losses))


def test_cis_terms_match_naive_definition():
    gen = torch.Generator().manual_seed(0)
    shape = (3, 2, 5, 7)
    flow = torch.randn(shape, generator=gen, dtype=torch.float64)
    mask = torch.rand((3, 1, 5, 7), generator=gen, dtype=torch.float64)
    recons = [torch.randn(shape, generator=gen, dtype=torch.float64) for _ in range(3)]
    eps = 0.01
    terms = cis_terms(flow, mask, *recons, epsilon_per_element=eps)
    want_g, want_i = naive_cis(flow, mask, *recons, eps)
    assert float(terms.generator_loss) == pytest.approx(want_g, rel=1e-5)
    assert float(terms.inpainter_loss) == pytest.approx(want_i, rel=1e-5)
    assert torch.allclose(charbonnier(torch.tensor([0.0, 3.0])), torch.tensor([1e-3, (9 + 1e-6) ** 0.5]))
    # random reconstructions are often worse than the image-only one: the cap changes the loss
    capped = cis_terms(flow, mask, *recons, epsilon_per_element=eps, cap_ratio=True)
    want_capped, _ = naive_cis(flow, mask, *recons, eps, cap=True)
    assert float(capped.generator_loss) == pytest.approx(want_capped, rel=1e-5)
    assert abs(want_capped - want_g) > 1e-3
    for b in range(3):  # each sample's loss, the batch's being their mean
        one = [t[b : b + 1] for t in (flow, mask, *recons)]
        assert float(capped.generator_losses[b]) == pytest.approx(naive_cis(*one, eps, cap=True)[0], rel=1e-5)
    assert float(capped.inpainter_loss) == pytest.approx(want_i, rel=1e-5)


def test_cis_epsilon_is_per_element_so_losses_do_not_depend_on_resolution():
    gen = torch.Generator().manual_seed(1)
    flow = torch.randn(2, 2, 6, 8, generator=gen)
    mask = torch.rand(2, 1, 6, 8, generator=gen)
    recons = [torch.randn(2, 2, 6, 8, generator=gen) for _ in range(3)]
    up = lambda t: t.repeat_interleave(2, -1).repeat_interleave(2, -2)  # noqa: E731
    small = cis_terms(flow, mask, *recons)
    large = cis_terms(up(flow), up(mask), *[up(r) for r in recons])
    assert float(large.generator_loss) == pytest.approx(float(small.generator_loss), rel=1e-5)
    assert float(large.inpainter_loss) == pytest.approx(float(small.inpainter_loss), rel=1e-5)
    # the reference's sum-ε of 75 at 384×192×2 is this per-element value
    assert REFERENCE_EPSILON_PER_ELEMENT * 384 * 192 * 2 == pytest.approx(75.0)


def test_cis_rewards_a_mask_whose_flow_the_context_cannot_explain():
    # an oracle inpainter: a context holding any background predicts the background motion (1, 0)
    # everywhere, a context of object pixels only (or nothing) predicts zero; so does the image alone
    flow = torch.zeros(1, 2, 16, 16)
    flow[:, 0] = 1.0
    obj = torch.zeros(1, 1, 16, 16)
    obj[..., 4:9, 5:11] = 1
    flow[:, 0] += 3 * obj[:, 0]

    def oracle(context: torch.Tensor) -> torch.Tensor:
        out = torch.zeros_like(flow)
        if float((context * (1 - obj)).sum()) > 0:
            out[:, 0] = 1.0
        return out

    def loss(mask):
        return float(cis_terms(flow, mask, oracle(1 - mask), oracle(mask), torch.zeros_like(flow)).generator_loss)

    half = torch.zeros_like(obj)
    half[..., :8] = 1
    assert loss(obj) == pytest.approx(0.25, abs=0.01)  # 1 - 3/4 inside, 0 outside
    assert loss(obj) < loss(half) - 0.5
    assert loss(obj) < loss(torch.zeros_like(obj)) - 0.5
    assert loss(obj) < loss(torch.ones_like(obj)) - 0.5
    with pytest.raises(ValueError, match="mask"):
        cis_terms(flow, obj[:, :, :8], flow, flow, flow)


# ------------------------------------------------------------------------------- networks


def test_unet_keeps_odd_sizes():
    net = UNet(5, 2, widths=(4, 8, 16), dilations=(2, 4))
    assert net(torch.randn(2, 5, 37, 53)).shape == (2, 2, 37, 53)


def test_step_counter_is_saved_and_old_checkpoints_load():
    model = MotionVOSModel(MotionVOSNetConfig(**TINY_NET))
    model.steps_done = 7
    state = model.state_dict()
    restored = MotionVOSModel(MotionVOSNetConfig(**TINY_NET))
    restored.load_state_dict(state)
    assert restored.steps_done == 7
    # checkpoints written when the counter was a buffer named steps_done
    legacy = {k: v for k, v in state.items() if k != "_extra_state"}
    legacy["steps_done"] = torch.tensor(11)
    restored.load_state_dict(legacy)
    assert restored.steps_done == 11
    assert model.to(torch.float64).steps_done == 7  # not a tensor: moving the model leaves it alone


def test_generator_average_follows_generator_steps_and_makes_the_predictions():
    from densessl.engine.trainer import TrainConfig, build_optimizer
    from densessl.models.ema import warmed_up_decay

    torch.manual_seed(0)
    model = MotionVOSModel(MotionVOSNetConfig(**TINY_NET, generator_steps=2, inpainter_warmup_steps=1,
                                              generator_ema=0.5))
    for step in range(12):  # the closed form against counting
        assert model.generator_steps_before(step) == sum(not model.is_inpainter_step(s) for s in range(step))
    optimizer = build_optimizer(model, TrainConfig(lr=1e-2))
    optimized = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in model.generator_ema.parameters()}
    expected = {k: v.clone() for k, v in model.generator_ema.state_dict().items()}
    updates = 0
    batch = {"image": torch.rand(2, 3, 24, 32), "flow": torch.randn(2, 2, 24, 32)}
    model.train()
    for step in range(7):  # inpainter, generator, generator, inpainter, ...
        loss, metrics = model(batch)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        before = {k: v.clone() for k, v in model.generator_ema.state_dict().items()}
        model.after_optimizer_step()
        after = model.generator_ema.state_dict()
        if metrics["inpainter_step"] == 1:
            assert all(torch.equal(after[k], before[k]) for k in after)
            continue
        decay = warmed_up_decay(0.5, updates)
        updates += 1
        for key, value in model.generator.state_dict().items():
            if value.is_floating_point():
                expected[key] = decay * expected[key] + (1 - decay) * value
            else:
                expected[key] = value.clone()
            torch.testing.assert_close(after[key], expected[key])
    assert updates == 4
    assert not all(torch.equal(a, b) for a, b in zip(model.generator_ema.parameters(), model.generator.parameters()))
    model.eval()
    assert model.inference_generator is model.generator_ema
    image, flow = model.normalize(batch["image"], batch["flow"])
    torch.testing.assert_close(model.foreground_logits(batch["image"], batch["flow"]), model.generator_ema(image, flow))
    restored = MotionVOSModel(model.config)
    restored.load_state_dict(model.state_dict())
    assert all(torch.equal(a, b) for a, b in zip(restored.generator_ema.state_dict().values(), after.values()))
    plain = MotionVOSModel(MotionVOSNetConfig(**TINY_NET))
    assert plain.generator_ema is None and plain.inference_generator is plain.generator
    with pytest.raises(InputError, match="model.generator_ema"):
        MotionVOSNetConfig(generator_ema=1.0).validate()


def test_loading_picks_the_average_or_the_trained_generator(tmp_path):
    from dataclasses import asdict

    from densessl.engine.checkpoint import save_checkpoint
    from densessl.tools.eval_motion_vos import build_parser
    from densessl.video.motion_vos_eval import load_motion_vos

    torch.manual_seed(0)
    model = MotionVOSModel(MotionVOSNetConfig(**TINY_NET, generator_ema=0.99))
    with torch.no_grad():  # an average that differs from the trained weights
        for p in model.generator_ema.parameters():
            p.add_(torch.randn_like(p))
    path = tmp_path / "motion_vos.pt"
    save_checkpoint({"net_config": asdict(model.config), "state_dict": model.state_dict()}, path)
    image, flow = torch.rand(1, 3, 24, 32), torch.randn(1, 2, 24, 32)
    model.eval()
    x, u = model.normalize(image, flow)
    for choice, expected in (("average", model.generator_ema(x, u)), ("trained", model.generator(x, u))):
        loaded = load_motion_vos(path, generator=choice)
        torch.testing.assert_close(loaded.foreground_logits(image, flow), expected)
    assert not torch.allclose(model.generator_ema(x, u), model.generator(x, u))
    with pytest.raises(InputError, match="generator"):
        load_motion_vos(path, generator="ema")
    args = ["--checkpoint", str(path), "--davis-root", "d", "--flow-root", "f", "--out", "o"]
    assert build_parser().parse_args(args).generator == "average"
    assert build_parser().parse_args(args + ["--generator", "trained"]).generator == "trained"


@pytest.mark.parametrize("warm_start_steps", [0, 6])
def test_compiled_model_does_not_recompile_as_the_schedule_advances(warm_start_steps):
    """Under torch.compile the step counter must not reach the graph: a guard on its value would
    compile the forward again at every step (and fall back to eager at dynamo's limit)."""
    torch.manual_seed(0)
    model = MotionVOSModel(MotionVOSNetConfig(**TINY_NET, generator_warm_start_steps=warm_start_steps))
    batch = {"image": torch.rand(2, 3, 24, 32), "flow": torch.randn(2, 2, 24, 32)}
    counts = []
    with compiled_counting_graphs(model) as (compiled, graphs):
        for _ in range(20):  # five cycles of three generator steps and one inpainter step
            loss, _ = compiled(batch)
            loss.backward()
            model.zero_grad(set_to_none=True)
            counts.append(len(graphs))
    assert model.steps_done == 20
    # every graph exists once the schedule has shown each kind of step after the warm start
    settled = warm_start_steps + 4
    assert counts[settled - 1] == counts[-1], counts


def test_random_ellipse_masks_cover_the_asked_area_inside_the_frame():
    torch.manual_seed(0)
    masks = random_ellipse_masks(500, 48, 96, area=(0.05, 0.4))
    assert masks.shape == (500, 1, 48, 96) and set(masks.unique().tolist()) == {0.0, 1.0}
    covered = masks.mean(dim=(1, 2, 3))
    assert covered.min() > 0.04 and covered.max() < 0.41  # discretised ellipses of 5–40 %
    assert 0.2 < covered.mean() < 0.25  # uniform in the range (less where an ellipse would not fit)
    rows, cols = masks.amax(dim=3), masks.amax(dim=2)  # 1×48 and 1×96 extents: one run each
    assert ((rows[..., 1:] - rows[..., :-1]).abs().sum(-1) <= 2).all()
    assert ((cols[..., 1:] - cols[..., :-1]).abs().sum(-1) <= 2).all()


def test_inpainter_steps_fill_random_masks_for_the_asked_share_of_the_batch(monkeypatch):
    calls = []

    def left_half(count, height, width, **kwargs):
        calls.append(count)
        mask = torch.zeros(count, 1, height, width, **kwargs)
        mask[..., : width // 2] = 1.0
        return mask

    monkeypatch.setattr(motion_vos, "random_ellipse_masks", left_half)
    model = MotionVOSModel(MotionVOSNetConfig(**TINY_NET, inpainter_random_masks=0.5))
    batch = {"image": torch.rand(4, 3, 24, 32), "flow": torch.randn(4, 2, 24, 32)}
    seen = []
    monkeypatch.setattr(model, "terms", lambda image, flow, mask: seen.append(mask) or
                        MotionVOSModel.terms(model, image, flow, mask))
    model.steps_done = 3  # an inpainter step: two of four samples fill the left half
    model(batch)
    assert calls == [2]
    assert (seen[-1][:2, :, :, :8] == 1).all() and (seen[-1][:2, :, :, 8:] == 0).all()  # 12×16 at stride 2
    generator_masks = model.generator.mask(model.generator(*model.normalize(batch["image"], batch["flow"])))
    torch.testing.assert_close(seen[-1][2:], generator_masks[2:])
    model(batch)  # a generator step: the generator's masks only
    model.eval()
    model.steps_done = 3
    model(batch)  # not training: the generator's masks only
    assert calls == [2]
    with pytest.raises(InputError, match="inpainter_random_masks"):
        MotionVOSNetConfig(inpainter_random_masks=1.5).validate()


def test_schedule_and_which_network_gets_gradients():
    model = MotionVOSModel(MotionVOSNetConfig(**TINY_NET, generator_steps=3, inpainter_warmup_steps=2))
    assert [model.is_inpainter_step(s) for s in range(10)] == [True, True, False, False, False, True,
                                                               False, False, False, True]
    batch = {"image": torch.rand(2, 3, 24, 32), "flow": torch.randn(2, 2, 24, 32)}
    model.steps_done = 2  # a generator step
    loss, metrics = model(batch)
    loss.backward()
    assert all(p.grad is None for p in model.inpainter.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.generator.parameters())
    assert all(p.requires_grad for p in model.inpainter.parameters())
    assert int(model.steps_done) == 3 and metrics["inpainter_step"] == 0
    model.zero_grad(set_to_none=True)
    model.steps_done = 5  # an inpainter step
    loss, metrics = model(batch)
    loss.backward()
    assert all(p.grad is None for p in model.generator.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.inpainter.parameters())
    assert metrics["inpainter_step"] == 1 and torch.isfinite(loss)


def test_standardize_flow_removes_mean_and_magnitude():
    flow = torch.randn(3, 2, 10, 14) * torch.tensor([0.1, 1.0, 30.0]).view(3, 1, 1, 1) + 5.0
    out = standardize_flow(flow)
    assert torch.allclose(out.mean(dim=(2, 3)), torch.zeros(3, 2), atol=1e-5)
    assert torch.allclose(out.square().mean(dim=(1, 2, 3)), torch.ones(3), atol=1e-3)
    assert torch.allclose(standardize_flow(7.0 * flow - 2.0), out, atol=1e-4)


def _naive_context_fit(flow, hidden, b, model):
    """Weighted least squares over the visible pixels of sample ``b`` with numpy, and the scale."""
    h, w = flow.shape[-2:]
    rows, targets = [], []
    for y in range(h):
        for x in range(w):
            if hidden[b, 0, y, x] == 0:
                gx, gy = -1 + 2 * x / (w - 1), -1 + 2 * y / (h - 1)
                rows.append([1.0] if model == "mean" else [1.0, gx, gy])
                targets.append([float(flow[b, 0, y, x]), float(flow[b, 1, y, x])])
    rows, targets = np.array(rows), np.array(targets)
    params = np.linalg.lstsq(rows, targets, rcond=None)[0]
    gy, gx = np.meshgrid(np.linspace(-1, 1, h), np.linspace(-1, 1, w), indexing="ij")
    full = np.stack([np.ones_like(gx)] if model == "mean" else [np.ones_like(gx), gx, gy], -1)
    fit = (full @ params).transpose(2, 0, 1)
    residual = ((targets - rows @ params) ** 2).mean()
    scale = (residual + 1e-8) ** 0.5 + 0.1 * ((targets**2).mean() + 1e-8) ** 0.5
    return fit, scale


@pytest.mark.parametrize("model", ["mean", "affine"])
def test_context_fit_uses_only_the_visible_flow(model):
    torch.manual_seed(0)
    flow = torch.randn(2, 2, 9, 11)
    hidden = (torch.rand(2, 1, 9, 11) > 0.6).float()
    fit, scale = context_flow_fit(flow * (1 - hidden), hidden, model)
    for b in range(2):
        expected_fit, expected_scale = _naive_context_fit(flow, hidden, b, model)
        assert np.allclose(fit[b].numpy(), expected_fit, atol=1e-3)
        assert abs(float(scale[b]) - expected_scale) < 1e-3
    changed = flow + 100.0 * hidden  # the hidden flow is not looked at, even unmasked
    assert torch.allclose(context_flow_fit(changed, hidden, model)[0], fit, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # fitted in float32 whatever the input
        low = context_flow_fit((flow * (1 - hidden)).bfloat16(), hidden.bfloat16(), model)[0]
    assert low.dtype == torch.float32 and torch.allclose(low, fit, atol=0.05)
    no_context, unit = context_flow_fit(torch.zeros(1, 2, 4, 4), torch.ones(1, 1, 4, 4), model)
    assert torch.equal(no_context, torch.zeros(1, 2, 4, 4)) and torch.equal(unit, torch.ones(1, 1, 1, 1))


@pytest.mark.parametrize("model", ["mean", "affine"])
def test_context_inpainter_corrects_the_fit_and_follows_the_flow_scale(model):
    torch.manual_seed(0)
    net = FlowInpainter(widths=(4, 8), dilations=(2,), norm="none", context=model).eval()
    image = torch.rand(1, 3, 16, 20)
    hidden = torch.zeros(1, 1, 16, 20)
    hidden[..., 4:12, 6:14] = 1.0
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 20), indexing="ij")
    camera = torch.stack([2.0 + 0.5 * xs - 0.3 * ys, -1.0 + 0.2 * xs + 0.4 * ys])[None]  # zoom + shear + pan
    flow = camera + 0.05 * torch.randn(1, 2, 16, 20)
    with torch.no_grad():
        out = net(image, flow * (1 - hidden), hidden)
        # the network's output is in the context's units: scaling the visible flow scales the fill
        assert torch.allclose(net(image, 10.0 * flow * (1 - hidden), hidden), 10.0 * out, rtol=1e-3, atol=1e-4)
        # with a zero head the fill is the fit of the visible flow
        net.decoder.head.weight.zero_()
        net.decoder.head.bias.zero_()
        fill = net(image, flow * (1 - hidden), hidden)
    inside = hidden.bool().expand_as(flow)
    if model == "mean":
        visible_mean = (flow * (1 - hidden)).sum(dim=(2, 3)) / (1 - hidden).sum()
        assert torch.allclose(fill, visible_mean.view(1, 2, 1, 1).expand_as(fill), atol=1e-5)
    else:  # an affine camera is extrapolated into the hole
        assert (fill - camera)[inside].abs().max() < 0.05
    with pytest.raises(ValueError, match="context"):
        FlowInpainter(widths=(4,), context="quadratic")


def test_hard_weights_give_the_thresholded_masks_terms_with_the_soft_masks_gradient():
    """``hard_weights``: the terms of the soft mask are those of the mask thresholded at 0.5, and
    its gradient is the gradient of the soft-weight loss at the thresholded mask (straight-through)."""
    torch.manual_seed(0)
    soft_model = MotionVOSModel(MotionVOSNetConfig(**TINY_NET)).eval()
    hard_model = MotionVOSModel(MotionVOSNetConfig(**TINY_NET, hard_weights=True)).eval()
    hard_model.load_state_dict(soft_model.state_dict())
    image, flow = torch.rand(2, 3, 16, 16), torch.randn(2, 2, 16, 16)
    soft = torch.rand(2, 1, 16, 16, requires_grad=True)
    thresholded = (soft.detach() > 0.5).float().requires_grad_(True)
    with torch.no_grad():
        assert not torch.allclose(soft_model.terms(image, flow, soft).generator_losses,
                                  soft_model.terms(image, flow, thresholded).generator_losses)
    hard_terms = hard_model.terms(image, flow, soft)
    reference = soft_model.terms(image, flow, thresholded)
    for name in ("error_in", "error_out", "denom_in", "denom_out", "generator_losses", "inpainter_loss"):
        torch.testing.assert_close(getattr(hard_terms, name), getattr(reference, name))
    hard_terms.generator_loss.backward()
    reference.generator_loss.backward()
    torch.testing.assert_close(soft.grad, thresholded.grad)
    assert soft.grad.abs().sum() > 0


def test_hidden_region_is_the_thresholded_mask_with_a_minimum_size():
    torch.manual_seed(0)
    undecided = torch.rand(2, 1, 10, 10) * 0.4  # below 0.5 everywhere
    assert hide_region(undecided).sum() == 0  # the reference threshold hides nothing
    hidden = hide_region(undecided, 0.1)
    for b in range(2):  # exactly its 10 likeliest pixels
        top = set(undecided[b].flatten().topk(10).indices.tolist())
        assert set(hidden[b].flatten().nonzero().flatten().tolist()) == top
    decided = undecided.clone()
    decided[..., :5, :] += 0.5  # half the frame above 0.5: the minimum changes nothing
    assert torch.equal(hide_region(decided, 0.1), (decided > 0.5).float())
    model = MotionVOSModel(MotionVOSNetConfig(**TINY_NET, min_hidden_fraction=0.1))
    image, flow = torch.rand(2, 3, 10, 10), torch.randn(2, 2, 10, 10)
    seen = []
    model.inpainter.decode = lambda features, masked, hidden: seen.append(hidden) or torch.zeros_like(masked)
    model._reconstruct(image, flow, undecided)
    inside, outside = seen[0][:2], seen[0][2:4]
    assert torch.equal(inside, hidden) and torch.equal(outside, torch.ones_like(outside))
    with pytest.raises(InputError, match="min_hidden_fraction"):
        MotionVOSNetConfig(min_hidden_fraction=1.0).validate()


def test_zero_normalizer_skips_the_image_only_call_and_input_stride_shrinks_the_work():
    model = MotionVOSModel(MotionVOSNetConfig(**TINY_NET, normalizer="zero", input_stride=2))
    image, flow = model.normalize(torch.rand(2, 3, 24, 32), torch.randn(2, 2, 24, 32))
    assert image.shape == (2, 3, 12, 16) and flow.shape == (2, 2, 12, 16)
    _, _, image_only = model._reconstruct(image, flow, torch.rand(2, 1, 12, 16))
    assert torch.equal(image_only, torch.zeros_like(flow))
    # a constant flow field normalises to the same value at any input size and stride
    constant = torch.ones(1, 2, 40, 60) * 3.0
    _, small = MotionVOSModel(MotionVOSNetConfig(**TINY_NET, input_stride=1)).normalize(torch.rand(1, 3, 40, 60), constant)
    _, strided = model.normalize(torch.rand(1, 3, 40, 60), constant)
    assert torch.allclose(small.mean(), strided.mean()) and torch.allclose(strided, strided.flatten()[0])
    with pytest.raises(ValueError, match="normalizer"):
        MotionVOSModel(MotionVOSNetConfig(**TINY_NET, normalizer="mean"))


# --------------------------------------------------------------------------- augmentation


def test_crop_flip_resize_transforms_image_and_flow_identically():
    height, width = 60, 90
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.zeros((height, width, 3), dtype=np.uint8)
    image[..., 0] = np.round(xs / (width - 1) * 255)  # the red channel encodes x
    image[..., 1] = np.round(ys / (height - 1) * 255)  # the green channel encodes y
    flow = np.stack([0.1 * xs + 1.0, 0.05 * ys - 2.0], axis=-1)
    before = (image.copy(), flow.copy())
    size = (24, 40)
    flips = set()
    for seed in range(12):
        rng = np.random.default_rng(seed)
        out_img, out_flow = crop_flip_resize(image, flow, rng, size, min_scale=0.6, flip=True)
        assert out_img.shape == (*size, 3) and out_flow.shape == (*size, 2)
        x = out_img[..., 0].astype(np.float64) / 255 * (width - 1)
        y = out_img[..., 1].astype(np.float64) / 255 * (height - 1)
        flipped = x[:, 0].mean() > x[:, -1].mean()
        flips.add(flipped)
        # crop size from the recovered coordinates' span
        crop_w = (x.max() - x.min()) * size[1] / (size[1] - 1)
        crop_h = (y.max() - y.min()) * size[0] / (size[0] - 1)
        sx, sy = size[1] / crop_w, size[0] / crop_h
        want_x = (0.1 * x + 1.0) * sx * (-1 if flipped else 1)
        want_y = (0.05 * y - 2.0) * sy
        inner = (slice(2, -2), slice(2, -2))
        assert np.abs(out_flow[..., 0][inner] - want_x[inner]).max() < 0.05 * np.abs(want_x).max() + 0.05
        assert np.abs(out_flow[..., 1][inner] - want_y[inner]).max() < 0.05 * np.abs(want_y).max() + 0.05
    assert flips == {True, False}
    assert np.array_equal(before[0], image) and np.array_equal(before[1], flow)  # inputs untouched


def test_resize_flow_scales_vectors():
    flow = np.ones((10, 20, 2), dtype=np.float32) * np.array([2.0, -1.0], dtype=np.float32)
    out = resize_flow(flow, (5, 40))
    assert out.shape == (5, 40, 2)
    assert np.allclose(out[..., 0], 4.0) and np.allclose(out[..., 1], -0.5)


# ---------------------------------------------------------------------- orientation, baseline


def test_orient_foreground_takes_the_complement_of_a_border_covering_mask():
    prob = np.zeros((50, 80), dtype=np.float32)
    prob[15:35, 25:55] = 1
    assert np.array_equal(orient_foreground(prob), prob)
    assert border_coverage(1 - prob) == 1.0
    assert np.array_equal(orient_foreground(1 - prob), prob)
    # a mask touching a small part of the border is kept
    touching = prob.copy()
    touching[15:35, 0:55] = 1
    assert np.array_equal(orient_foreground(touching), touching)


def test_flow_magnitude_baseline_finds_a_moving_object_on_either_moving_layer():
    obj = np.zeros((40, 60), dtype=bool)
    obj[10:30, 20:45] = True
    flow = np.zeros((40, 60, 2), dtype=np.float32)
    flow[obj] = (3.0, 1.0)
    assert np.array_equal(flow_magnitude_foreground(flow) > 0.5, obj)
    panning = np.zeros_like(flow)
    panning[~obj] = (2.0, 0.0)  # camera pans, the object is still in the image
    assert np.array_equal(flow_magnitude_foreground(panning) > 0.5, obj)
    assert not flow_magnitude_foreground(np.zeros_like(flow)).any()


def _zooming_scene(model: str) -> tuple[np.ndarray, np.ndarray]:
    """A camera that zooms, rotates and pans (quadratic terms too for ``model='quadratic'``)
    over the background, and an object moving its own way in front of it."""
    height, width = 48, 80
    ys, xs = np.meshgrid(np.linspace(-1, 1, height), np.linspace(-1, 1, width), indexing="ij")
    camera = np.stack([1.5 + 4.0 * xs - 1.0 * ys, -0.5 + 1.0 * xs + 4.0 * ys], axis=-1)
    if model == "quadratic":
        camera += np.stack([1.5 * xs * xs, -1.0 * xs * ys], axis=-1)
    obj = (ys - 0.1) ** 2 / 0.2 + (xs + 0.2) ** 2 / 0.12 < 1
    flow = camera.astype(np.float32)
    flow[obj] = (-2.0, 1.5)
    return flow, obj


@pytest.mark.parametrize("model", ["affine", "quadratic"])
def test_fitted_camera_motion_ignores_the_object_and_the_compensated_baseline_finds_it(model):
    flow, obj = _zooming_scene(model)
    fitted = fit_background_motion(flow, model)
    background_error = np.linalg.norm(fitted - flow, axis=-1)[~obj]
    assert background_error.max() < 0.05  # exact up to the robust weights' pull of the object
    mask = camera_compensated_foreground(flow, model) > 0.5
    iou = (mask & obj).sum() / (mask | obj).sum()
    assert iou > 0.95
    magnitude = flow_magnitude_foreground(flow) > 0.5
    assert (magnitude & obj).sum() / (magnitude | obj).sum() < 0.5  # the zoom fools |flow|
    if model == "quadratic":  # an affine fit cannot follow the quadratic terms
        assert np.linalg.norm(fit_background_motion(flow, "affine") - flow, axis=-1)[~obj].max() > 0.3
    with pytest.raises(ValueError, match="model"):
        fit_background_motion(flow, "homography")


def test_batched_baselines_on_the_device_equal_the_numpy_ones():
    """otsu_foreground against cv2's Otsu on uint8, and camera_compensated_target against
    camera_compensated_foreground, sample by sample in one batch (an object that covers the
    border, so the orientation flips; an all-zero flow; noisy fields)."""
    import cv2

    from densessl.video.motion_vos import camera_compensated_target, otsu_foreground

    rng = np.random.default_rng(0)
    fields = [_zooming_scene("quadratic")[0], _zooming_scene("affine")[0], np.zeros((48, 80, 2), np.float32)]
    big = _zooming_scene("affine")[0]
    big[:, :50] = (-2.0, 1.5)  # the "object" now covers most of the border
    fields.append(big)
    for _ in range(4):
        fields.append((fields[0] + rng.normal(0, rng.uniform(0.1, 2.0), fields[0].shape)).astype(np.float32))
    batch = torch.from_numpy(np.stack(fields)).permute(0, 3, 1, 2)
    targets = camera_compensated_target(batch)
    assert targets.shape == (len(fields), 1, 48, 80)
    for field, target in zip(fields, targets):
        np.testing.assert_array_equal(target[0].numpy(), camera_compensated_foreground(field))
    assert targets[3].mean() < 0.5 and not targets[2].any()

    values = [rng.gamma(k, 1.0, (30, 40)) for k in (0.5, 2.0, 8.0)] + [rng.uniform(0, 1, (30, 40)) ** 3]
    values.append(np.full((30, 40), 2.0))
    mine = otsu_foreground(torch.from_numpy(np.stack(values))[:, None])
    for value, got in zip(values, mine):
        scaled = np.round(value / value.max() * 255).astype(np.uint8)
        _, binary = cv2.threshold(scaled, 0, 1, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
        np.testing.assert_array_equal(got[0].numpy(), binary)


def test_warm_start_fits_the_camera_compensated_masks_then_hands_over_to_cis():
    from densessl.video.motion_vos import CAMERA_FIT_MIN_SCALE, camera_compensated_target

    torch.manual_seed(0)
    model = MotionVOSModel(MotionVOSNetConfig(**TINY_NET, generator_warm_start_steps=2)).train()
    flow, _ = _zooming_scene("quadratic")
    batch = {"image": torch.rand(2, 3, 48, 80), "flow": torch.from_numpy(np.stack([flow, flow[:, ::-1] * -1])).permute(0, 3, 1, 2)}
    for step in range(5):  # generator, generator, generator, inpainter, generator
        generator = copy.deepcopy(model.generator)
        image, net_flow = model.normalize(batch["image"], batch["flow"])
        loss, metrics = model(batch)
        loss = float(loss.detach())
        if step < 2:  # cross-entropy of the soft mask against the baseline's mask, written out
            with torch.no_grad():
                generator.train()
                m = generator.mask(generator(image, net_flow)).double().clamp(1e-12, 1 - 1e-12)
            t = camera_compensated_target(net_flow, CAMERA_FIT_MIN_SCALE).double()
            assert 0 < float(t.mean()) < 0.5
            want = -(t * m.log() + (1 - t) * (1 - m).log()).mean()
            assert loss == pytest.approx(float(want), rel=1e-4)
            assert loss != pytest.approx(float(metrics["loss"]), rel=1e-2)
        elif step == 3:
            assert loss == float(metrics["inpainter_loss"])
        else:
            assert loss == float(metrics["loss"])  # the CIS generator loss again
    model.eval()
    loss, metrics = model(batch)
    assert float(loss.detach()) == float(metrics["loss"])
    with pytest.raises(InputError, match="model.generator_warm_start_steps"):
        MotionVOSNetConfig(generator_warm_start_steps=-1).validate()


def naive_irls_fit(flow: np.ndarray, model: str, iterations: int = 6, min_scale: float = 0.1) -> np.ndarray:
    """IRLS with Cauchy weights written out per pixel (every pixel used, no subsampling)."""
    height, width = flow.shape[:2]
    rows = []
    for y in range(height):
        for x in range(width):
            cx, cy = -1 + 2 * x / (width - 1), -1 + 2 * y / (height - 1)
            rows.append([1, cx, cy] + ([cx * cx, cx * cy, cy * cy] if model == "quadratic" else []))
    basis = np.array(rows, dtype=np.float64)
    target = flow.reshape(-1, 2).astype(np.float64)
    weights = np.ones(len(target))
    for _ in range(iterations):
        gram = sum(weights[i] * np.outer(basis[i], basis[i]) for i in range(len(target)))
        moments = sum(weights[i] * np.outer(basis[i], target[i]) for i in range(len(target)))
        params = np.linalg.solve(gram, moments)
        residual = np.linalg.norm(target - basis @ params, axis=1)
        sigma = max(1.4826 * np.median(residual), min_scale)
        weights = 1.0 / (1.0 + (residual / (2.385 * sigma)) ** 2)
    return (basis @ params).reshape(height, width, 2)


@pytest.mark.parametrize("model", ["affine", "quadratic"])
def test_robust_motion_fit_matches_a_naive_irls_and_fits_each_sample_of_a_batch(model):
    flows = [_zooming_scene(model)[0][::3, ::4], np.random.default_rng(0).normal(size=(16, 20, 2)).astype(np.float32)]
    batch = torch.from_numpy(np.stack(flows)).permute(0, 3, 1, 2)
    fitted = robust_motion_fit(batch, model, grid=64)  # grid >= the frame: every pixel is used
    assert fitted.shape == batch.shape and fitted.dtype == batch.dtype
    for k, flow in enumerate(flows):
        expected = naive_irls_fit(flow, model)
        assert np.abs(fitted[k].permute(1, 2, 0).numpy() - expected).max() < 1e-4
    assert motion_basis(3, 4, model).shape == (12, 3 if model == "affine" else 6)
    with pytest.raises(ValueError, match="B×2×H×W"):
        robust_motion_fit(batch[:, :1])


def test_generator_with_a_camera_fit_ignores_the_camera_motion():
    """The IRLS fit is equivariant to adding a field of its model, so a generator that sees
    the flow minus the fit gives the same logits whatever the camera does."""
    torch.manual_seed(0)
    generator = MaskGenerator((4, 8), (2,), camera_fit="quadratic", flow_norm=True).eval()
    image = torch.rand(2, 3, 24, 32)
    flow = torch.randn(2, 2, 24, 32) * 0.02
    flow[:, :, 8:16, 10:20] += torch.tensor([0.05, -0.03]).view(1, 2, 1, 1)  # an object
    params = torch.randn(2, 6, 2, dtype=torch.float64) * 0.05
    camera = (motion_basis(24, 32, "quadratic") @ params).transpose(1, 2).reshape(2, 2, 24, 32).float()
    with torch.no_grad():
        still, moving = generator(image, flow), generator(image, flow + camera)
        assert torch.allclose(still, moving, atol=1e-3)
        plain = MaskGenerator((4, 8), (2,), flow_norm=True).eval()
        plain.load_state_dict(generator.state_dict())
        assert not torch.allclose(plain(image, flow), plain(image, flow + camera), atol=1e-2)
    with pytest.raises(ValueError, match="camera_fit"):
        MaskGenerator((4, 8), (2,), camera_fit="homography")
    with pytest.raises(InputError, match="model.generator_camera_fit"):
        MotionVOSNetConfig(generator_camera_fit="homography").validate()


# --------------------------------------------------------------------------------- data


def test_pair_dataset_lists_cached_pairs_and_names_missing_flow(tmp_path):
    root, flows = tmp_path / "davis", tmp_path / "flows"
    make_motion_set(root, flows, num_sequences=2, num_frames=4)
    davis = DavisDataset(root, 2017, "train")
    data = MotionPairDataset(davis, flows, gaps=(1, -1), augment=PairAugmentConfig(size=(16, 24)))
    assert data.clip_counts() == [4]
    item = data[(0, 1)]
    assert item["image"].shape == (3, 16, 24) and item["flow"].shape == (2, 16, 24)
    assert 0 <= float(item["image"].min()) and float(item["image"].max()) <= 1
    with pytest.raises(InputError, match="no cached flow"):
        MotionPairDataset(davis, flows, gaps=(2,))
    with pytest.raises(InputError, match="flow folder not found"):
        MotionPairDataset(davis, tmp_path / "nowhere")


# -------------------------------------------------------------------------------- tools


def test_default_config_is_the_reference_recipe_with_the_flow_normalisations_and_the_cap():
    from densessl.engine.config import load_config, to_dict
    from densessl.tools.train_motion_vos import MotionVOSConfig

    default = to_dict(load_config(MotionVOSConfig, "configs/motion_vos.yaml"))
    reference = to_dict(load_config(MotionVOSConfig, "configs/motion_vos_reference.yaml"))
    differing = {(section, key) for section in default for key in default[section]
                 if default[section][key] != reference[section][key]}
    assert differing == {("train", "name"), ("model", "generator_flow_norm"), ("model", "inpainter_context"),
                         ("model", "cap_ratio")}
    assert reference["model"]["generator_flow_norm"] is False and reference["model"]["inpainter_context"] == "none"
    assert reference["model"]["cap_ratio"] is False and default["model"]["cap_ratio"] is True
    built_in = to_dict(MotionVOSConfig())["model"]  # the file and the dataclass agree
    for key, value in default["model"].items():
        assert built_in[key] == (pytest.approx(value, rel=1e-6) if isinstance(value, float) else value), key
    assert (default["train"]["batch_size"], default["train"]["lr"], default["train"]["max_steps"]) == (16, 1e-4, 12500)
    assert default["augment"]["size"] == [192, 384] and default["model"]["generator_steps"] == 3
    assert default["model"]["epsilon_per_element"] == pytest.approx(REFERENCE_EPSILON_PER_ELEMENT)


def test_temporal_smoothing_averages_flow_warped_neighbours_and_mends_a_dropped_frame(tiny_davis_factory, tmp_path):
    """A square moving 2 px a frame to the right, missing from frame 3: with exact flow every
    neighbour's map lands on the square, so frame 3 gets it back at 4/5 of the maps."""
    from densessl.datasets.flow_cache import flow_path
    from densessl.datasets.flow_io import write_flow
    from densessl.video.motion_vos_eval import smooth_over_time

    sequence = DavisDataset(tiny_davis_factory(year=2016, sequences=(("bear", 1),)), year=2016)[0]
    frames, (height, width) = sequence.num_frames, sequence.size
    square = lambda t: (slice(20, 40), slice(20 + 2 * t, 40 + 2 * t))  # noqa: E731
    probs = np.zeros((frames, height, width), np.float32)
    for t in range(frames):
        probs[t][square(t)] = 1.0
    probs[3] = 0.0
    flows, gaps = tmp_path / "flows", (1, -1, 2, -2)
    for gap in gaps:
        for t in range(frames):
            if 0 <= t + gap < frames and not (gap == -2 and t == 5):  # one flow missing
                flow = np.zeros((height, width, 2), np.float32)
                flow[..., 0] = 2 * gap
                write_flow(flow_path(flows, gap, sequence.name, sequence.frame_names[t]), flow)

    smoothed = smooth_over_time(sequence, probs, flows, gaps)
    inside = np.zeros((height, width), bool)
    for t in range(frames):
        inside[:] = False
        inside[square(t)] = True
        # maps averaged: the frame itself and each gap with a flow and a frame; frame 3's map is empty
        used = [0] + [g for g in gaps if 0 <= t + g < frames and not (g == -2 and t == 5)]
        expected = sum(t + g != 3 for g in used) / len(used)
        np.testing.assert_allclose(smoothed[t][inside], expected, atol=1e-6)
        assert np.all(smoothed[t][~inside] == 0.0)
    assert smoothed[3][square(3)].min() == pytest.approx(0.8)  # 4 of 5 maps: the square is back
    np.testing.assert_array_equal(smooth_over_time(sequence, probs, flows, ()), probs)
    with pytest.raises(ValueError, match="T×H×W"):
        smooth_over_time(sequence, probs[:-1], flows, gaps)
    write_flow(flow_path(flows, 1, sequence.name, sequence.frame_names[0]), np.zeros((8, 8, 2), np.float32))
    with pytest.raises(InputError, match="flow size 8x8 differs from the frame size 96x64"):
        smooth_over_time(sequence, probs, flows, gaps)
    from densessl.video.motion_vos_eval import baseline_predictor, predict_sequence
    with pytest.raises(InputError, match="flow size 8x8 differs from the frame size 96x64"):
        predict_sequence(sequence, flows, baseline_predictor("flow-magnitude"), gaps)


def test_objective_report_scores_each_source_of_masks_with_the_generators_loss(tmp_path):
    """The model's row equals the training loss of a generator step on the same inputs; the
    annotations' row equals the loss written out from the definitions (naive loops) on the
    annotation averaged over each network cell by hand."""
    from densessl.datasets.flow_cache import find_flow, read_frame_flow
    from densessl.video.motion_vos_eval import OBJECTIVE_SOURCES, objective_report, objective_table

    root, flows = tmp_path / "davis", tmp_path / "flows"
    make_motion_set(root, flows, num_sequences=2, num_frames=3, num_val=2)  # 48×64 frames
    (flows / "+1" / "synth-001" / "00002.flo").unlink()  # frames without the gap's flow are skipped
    torch.manual_seed(0)
    model = MotionVOSModel(MotionVOSNetConfig(**TINY_NET)).eval()
    size = (24, 32)  # networks at 12×16: 4×4 frame pixels per cell
    dataset = DavisDataset(root, year=2017, split="val")
    rows = objective_report(model, dataset, flows, size, gap=1)
    assert [r.source for r in rows] == list(OBJECTIVE_SOURCES)
    assert all(r.frames == 5 for r in rows)  # 2 sequences × 3 frames, one without its +1 flow
    by_source = {r.source: r for r in rows}
    assert "| ground truth | 5 |" in objective_table(rows)

    model_losses, truth_losses, truth_reached = [], [], []
    with torch.no_grad():
        for sequence in dataset:
            for t in range(3 if sequence.name == "synth-000" else 2):
                flow = read_frame_flow(find_flow(flows, 1, sequence.name, sequence.frame_names[t]), sequence.size)
                batch = {"image": torch.from_numpy(resize_image(sequence.frame(t), size)).permute(2, 0, 1)[None] / 255.0,
                         "flow": torch.from_numpy(resize_flow(flow, size)).permute(2, 0, 1)[None]}
                loss, _ = model(batch)  # eval mode: the step counter stays at 0, a generator step
                model_losses.append(float(loss))
                ids = sequence.mask(t)
                cells = ((ids != 0) & (ids != 255)).reshape(12, 4, 16, 4).mean(axis=(1, 3)) > 0.5
                truth = torch.from_numpy(cells.astype(np.float32))[None, None]
                image, net_flow = model.normalize(batch["image"], batch["flow"])
                recon = model._reconstruct(image, net_flow, truth)
                truth_losses.append(naive_cis(net_flow, truth, *recon, model.config.epsilon_per_element, cap=True)[0])
                terms = model.terms(image, net_flow, truth)
                truth_reached.append([float(terms.error_in / terms.denom_in >= 1),
                                      float(terms.error_out / terms.denom_out >= 1)])
    assert model.steps_done == 0
    assert by_source["model"].generator_loss == pytest.approx(np.mean(model_losses), abs=1e-5)
    assert by_source["ground truth"].generator_loss == pytest.approx(np.mean(truth_losses), abs=1e-5)
    assert by_source["ground truth"].generator_loss != pytest.approx(by_source["model"].generator_loss, abs=1e-3)
    reached = np.mean(truth_reached, axis=0)
    assert (by_source["ground truth"].at_least_one_in, by_source["ground truth"].at_least_one_out) == tuple(reached)
    with pytest.raises(InputError, match="no cached flow with gap -2"):
        objective_report(model, dataset, flows, size, gap=-2)


def test_descend_generator_lowers_the_objective_the_report_scores_and_leaves_the_model_alone(tmp_path):
    """One step over every frame at once sees exactly the report's generator loss (the same
    function, BatchNorm in eval mode); more steps lower it by a margin; the inpainter and the
    given model are unchanged. The inpainter's last layer is zeroed, so that it fills a hole with
    the mean of the visible flow (``inpainter_context='mean'``): an inpainter that has learned
    something, under which the annotations are a far better answer than the untrained generator's
    masks (an untrained inpainter's objective is flat around near-uniform masks)."""
    from densessl.video.motion_vos_eval import DescentConfig, descend_generator, objective_report

    root, flows = tmp_path / "davis", tmp_path / "flows"
    make_motion_set(root, flows, num_sequences=2, num_frames=4, num_val=2)
    torch.manual_seed(0)
    model = MotionVOSModel(MotionVOSNetConfig(**TINY_NET, mask_temperature=1.0)).eval()
    with torch.no_grad():
        model.inpainter.decoder.head.weight.zero_()
        model.inpainter.decoder.head.bias.zero_()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dataset = DavisDataset(root, year=2017, split="val")
    size = (24, 32)

    def model_loss(m: MotionVOSModel) -> float:
        return next(r for r in objective_report(m, dataset, flows, size) if r.source == "model").generator_loss

    whole = descend_generator(model, dataset, flows, size, config=DescentConfig(steps=1, batch_size=100))
    assert whole.frames == 8 and whole.losses[0] == pytest.approx(model_loss(model), abs=1e-5)

    result = descend_generator(model, dataset, flows, size, config=DescentConfig(steps=40, lr=1e-3, batch_size=4))
    assert len(result.losses) == 40
    truth = next(r for r in objective_report(model, dataset, flows, size) if r.source == "ground truth")
    assert truth.generator_loss < model_loss(model) - 0.15
    assert model_loss(result.model) < model_loss(model) - 0.1
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key  # the given model is not trained
        if key.startswith("inpainter."):
            assert torch.equal(result.model.state_dict()[key], value), key
    assert any(not torch.equal(result.model.state_dict()[k], before[k]) for k in before if k.startswith("generator."))
    thresholded = descend_generator(model, dataset, flows, size, config=DescentConfig(steps=1, batch_size=100,
                                                                                     hard_weights=True))
    hard_row = next(r for r in objective_report(model, dataset, flows, size) if r.source == "model, thresholded")
    assert thresholded.losses[0] == pytest.approx(hard_row.generator_loss, abs=1e-5)
    assert not thresholded.model.config.hard_weights and not model.config.hard_weights
    with pytest.raises(InputError, match="no cached flow with gap -1"):
        descend_generator(model, dataset, flows, size, gap=-1)
    with pytest.raises(InputError, match="must be positive"):
        descend_generator(model, dataset, flows, size, config=DescentConfig(steps=0))


def test_cis_view_shapes_and_mode():
    from densessl.video.motion_vos import cis_view

    torch.manual_seed(0)
    model = MotionVOSModel(MotionVOSNetConfig(**TINY_NET))
    model.train()
    image, flow = torch.rand(3, 3, 16, 24), 3 * torch.randn(3, 2, 16, 24)
    view = cis_view(model, image, flow)
    h, w = model.normalize(image, flow)[1].shape[-2:]
    assert model.training
    assert view.images.shape == (3, h, w, 3) and view.images.dtype == np.uint8
    assert view.flows.shape == view.inpainted.shape == (3, h, w, 2) and view.masks.shape == (3, h, w)
    assert 0 <= view.masks.min() and view.masks.max() <= 1


def test_train_then_eval_tools_end_to_end(tmp_path):
    from densessl.eval.davis_metrics import evaluate_results
    from densessl.tools.eval_motion_vos import main as eval_main
    from densessl.tools.train_motion_vos import main as train_main
    from densessl.video.motion_vos_eval import load_motion_vos

    root, flows = tmp_path / "davis", tmp_path / "flows"
    make_motion_set(root, flows, num_sequences=4, num_frames=4)
    common = [
        f"data.davis_root={root}", f"data.flow_root={flows}", "data.year=2017", "data.split=train",
        "data.gaps=[1]", "model.generator_widths=[4,8]", "model.inpainter_widths=[4,8]", "model.dilations=[2]",
        "augment.size=[16,24]", "train.batch_size=2", "train.num_workers=0", f"train.out_dir={tmp_path / 'runs'}",
        "train.name=t", "train.progress=false", "train.max_steps=4", "train.log_every=1",
        f"eval.davis_root={root}", "eval.year=2017",
    ]
    assert train_main(["--config", "configs/motion_vos.yaml", *common, "train.stop_after=2"]) == 0
    assert train_main(["--config", "configs/motion_vos.yaml", *common, "--resume"]) == 0
    run = tmp_path / "runs" / "t"
    logged = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if r.get("kind", "train") == "train"] == [1, 2, 3, 4]
    assert sorted(p.name for p in (run / "masks").iterdir()) == ["step_0000002.png", "step_0000004.png"]
    rows = len(DavisDataset(root, year=2017, split="train"))  # one pair per training sequence, up to 4
    with Image.open(run / "masks" / "step_0000004.png") as picture:  # 8×12 network tiles enlarged ×16
        assert picture.size == (4 * 192, 22 + 22 + rows * 128)
    model = load_motion_vos(run / "checkpoints" / "motion_vos.pt")
    assert int(model.steps_done) == 4
    last = load_motion_vos(run / "checkpoints" / "last.pt")
    for a, b in zip(model.state_dict().values(), last.state_dict().values()):
        assert torch.equal(a, b)

    davis_before = sorted(p.stat().st_mtime_ns for p in root.rglob("*"))
    out = tmp_path / "eval"
    args = ["--davis-root", str(root), "--year", "2017", "--flow-root", str(flows), "--gaps", "+1",
            "--size", "16", "24", "--device", "cpu", "--overlays", "2"]
    assert eval_main(["--checkpoint", str(run / "checkpoints" / "motion_vos.pt"), *args, "--out", str(out)]) == 0
    assert sorted(p.stat().st_mtime_ns for p in root.rglob("*")) == davis_before
    scores = evaluate_results(root, out / "raw", year=2017, task="unsupervised", num_workers=0)
    with open(out / "raw" / "global_results-val.csv") as handle:
        row = next(csv.DictReader(handle))
    assert float(row["J-Mean"]) == pytest.approx(scores.global_row["J-Mean"], abs=1e-6)
    assert (out / "overlays").is_dir() and json.loads((out / "settings.json").read_text())["gaps"] == [1]
    assert json.loads((out / "settings.json").read_text())["objective"] is None
    objective_out = tmp_path / "objective"
    assert eval_main(["--checkpoint", str(run / "checkpoints" / "motion_vos.pt"), *args, "--objective",
                      "--out", str(objective_out)]) == 0
    rows = json.loads((objective_out / "objective.json").read_text())
    assert [r["source"] for r in rows][-1] == "ground truth" and {r["frames"] for r in rows} == {8}  # 2 × 4 frames
    assert json.loads((objective_out / "settings.json").read_text())["objective"] == rows
    assert "| camera-compensated | 8 |" in (objective_out / "objective.md").read_text()
    descent_out = tmp_path / "descent"
    assert eval_main(["--checkpoint", str(run / "checkpoints" / "motion_vos.pt"), *args, "--descend-steps", "3",
                      "--out", str(descent_out)]) == 0
    descent = json.loads((descent_out / "descent.json").read_text())
    assert len(descent["losses"]) == 3 and descent["frames"] == 8 and descent["gap"] == 1
    assert descent["objective"] == "model"
    assert json.loads((descent_out / "settings.json").read_text())["descend_steps"] == 3

    base = tmp_path / "baseline"
    assert eval_main(["--baseline", "flow-magnitude", *args, "--out", str(base)]) == 0
    assert eval_main(["--baseline", "flow-magnitude", *args, "--out", str(base)]) == 2  # not empty
    assert eval_main(["--baseline", "flow-magnitude", *args, "--objective", "--out", str(tmp_path / "o")]) == 2
    assert eval_main(["--baseline", "flow-magnitude", *args, "--descend-steps", "2", "--out", str(tmp_path / "o")]) == 2
    assert eval_main(["--baseline", "camera-compensated", *args, "--out", str(tmp_path / "cc")]) == 0
    assert eval_main(["--baseline", "camera-compensated", *args, "--temporal", "--out", str(tmp_path / "cct")]) == 0
    assert (tmp_path / "cct" / "temporal" / "global_results-val.csv").is_file()
    assert json.loads((tmp_path / "cct" / "settings.json").read_text())["scores"].keys() == {"raw", "temporal"}
    for sequence in DavisDataset(root, year=2017):  # --temporal leaves the raw masks as they were
        for name in sequence.frame_names:
            assert np.array_equal(cv2.imread(str(tmp_path / "cc" / "raw" / sequence.name / f"{name}.png")),
                                  cv2.imread(str(tmp_path / "cct" / "raw" / sequence.name / f"{name}.png")))
    assert json.loads((tmp_path / "cc" / "settings.json").read_text())["baseline"] == "camera-compensated"
    assert eval_main(["--baseline", "flow-magnitude", *args, "--out", str(root / "inside")]) == 2
    assert eval_main(["--baseline", "flow-magnitude", *args, "--gaps", "0", "--out", str(tmp_path / "g")]) == 2

