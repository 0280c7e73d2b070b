"""Label propagation against straightforward references written here (dense affinities)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from densessl.video.local_affinity import WindowedTopK, dense_topk, window_reach
from densessl.video.propagation import (
    PRESETS,
    make_config,
    mask_to_soft_labels,
    processing_size,
    propagate_labels,
    channel_argmax,
    soft_labels_to_ids,
)


def _grid_offsets(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    ys, xs = ys.flatten().double(), xs.flatten().double()
    return ys[None, :] - ys[:, None], xs[None, :] - xs[:, None]


def _naive_window(height, width, radius, shape):
    dy, dx = _grid_offsets(height, width)
    if shape == "euclidean":
        return dy**2 + dx**2 < radius**2
    return (dy.abs() <= radius) & (dx.abs() <= radius)


@pytest.mark.parametrize(
    "height,width,radius,shape,tile",
    [(13, 17, 3, "euclidean", 4), (9, 22, 2.5, "square", 8), (20, 11, 12, "euclidean", 8),
     (5, 5, 1, "square", 3), (16, 16, 4, "square", 16), (30, 41, 12, "euclidean", 12)],
)
def test_windowed_topk_matches_masked_dense(height, width, radius, shape, tile):
    generator = torch.Generator().manual_seed(height * width)
    queries = F.normalize(torch.randn(2, 6, height, width, generator=generator), dim=1)
    keys = F.normalize(torch.randn(2, 6, height, width, generator=generator), dim=1)
    op = WindowedTopK(height, width, radius, shape, 5, tile=tile)
    values, indices = op(queries, keys)

    affinity = torch.einsum("bcn,bcm->bnm", queries.flatten(2), keys.flatten(2))
    affinity = affinity.masked_fill(~_naive_window(height, width, radius, shape), -math.inf)
    expected = affinity.topk(5, dim=-1)
    finite = torch.isfinite(expected.values)
    assert torch.equal(torch.isfinite(values), finite)
    torch.testing.assert_close(values[finite], expected.values[finite])
    assert torch.equal(indices[finite], expected.indices[finite])


def test_window_reach():
    assert window_reach(12, "euclidean") == 11  # strict: 12² is not < 12²
    assert window_reach(12, "square") == 12
    assert window_reach(2.5, "euclidean") == 2


def test_dense_topk_chunks_agree():
    queries = F.normalize(torch.randn(1, 8, 50), dim=1)
    keys = F.normalize(torch.randn(1, 8, 70), dim=1)
    full = dense_topk(queries, keys, 7, chunk_size=1000)
    chunked = dense_topk(queries, keys, 7, chunk_size=9)
    torch.testing.assert_close(full[0], chunked[0])
    assert torch.equal(full[1], chunked[1])


# ---------------------------------------------------------------------------------------------
# Reference propagation: explicit context lists, one dense affinity, additive mask.
# ---------------------------------------------------------------------------------------------


def reference_crw(features, first_labels, config):
    """CRW: frame 0 unrestricted + ``num_recent`` frames (padded with copies of frame 0)."""
    num_frames, _, height, width = features.shape
    flat = features.flatten(2)  # T×C×N
    window = _naive_window(height, width, config.radius, config.window)
    labels = [first_labels.flatten(1)]
    for target in range(1, num_frames):
        keys = [flat[0]]
        values = [labels[0]]
        masks = [torch.ones_like(window)]
        for offset in range(config.num_recent, 0, -1):
            source = max(target - offset, 0)
            keys.append(flat[source])
            values.append(labels[source])
            masks.append(window)
        affinity = flat[target].T @ torch.cat(keys, dim=1)  # N×(S·N)
        affinity = affinity + torch.where(torch.cat(masks, dim=1), 0.0, -math.inf)
        top = affinity.topk(config.topk, dim=1)
        weights = torch.softmax(top.values / config.temperature, dim=1)
        stacked = torch.cat(values, dim=1)  # K×(S·N)
        labels.append((stacked[:, top.indices] * weights).sum(-1))
    return torch.stack(labels).view(num_frames, -1, height, width)


def reference_dino(features, first_labels, config):
    """DINO's code path: exp(cos/τ) times a 0/1 window, top-k threshold, normalise."""
    num_frames, _, height, width = features.shape
    flat = features.flatten(2)
    window = _naive_window(height, width, config.radius, "square").double()
    labels = [first_labels.flatten(1)]
    for target in range(1, num_frames):
        context = [0] + list(range(max(1, target - config.num_recent), target))
        keys = torch.cat([flat[i] for i in context], dim=1)
        affinity = torch.exp((keys.T @ flat[target]).double() / config.temperature)  # (S·N)×N
        affinity = affinity * window.repeat(len(context), 1)
        kth = affinity.topk(config.topk, dim=0).values.min(dim=0).values
        affinity[affinity < kth] = 0
        affinity = affinity / affinity.sum(dim=0, keepdim=True)
        stacked = torch.cat([labels[i] for i in context], dim=1).double()
        labels.append((stacked @ affinity).float())
    return torch.stack(labels).view(num_frames, -1, height, width)


def _smooth_features(num_frames, channels, height, width, seed):
    """Spatially smooth random features that drift over time (realistic, few exact ties)."""
    generator = torch.Generator().manual_seed(seed)
    base = torch.randn(1, channels, height // 2 + 2, width // 2 + 2, generator=generator)
    frames = []
    for t in range(num_frames):
        shifted = torch.roll(base, shifts=(t // 3, t // 2), dims=(2, 3))
        noise = 0.3 * torch.randn(shifted.shape, generator=generator)
        frames.append(F.interpolate(shifted + noise, size=(height, width), mode="bilinear"))
    return F.normalize(torch.cat(frames), dim=1)


def _blob_labels(height, width, num_objects, seed):
    rng = np.random.default_rng(seed)
    ids = np.zeros((height, width), dtype=np.uint8)
    yy, xx = np.mgrid[:height, :width]
    for object_id in range(1, num_objects + 1):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        ids[(yy - cy) ** 2 / (0.3 * height) ** 2 + (xx - cx) ** 2 / (0.3 * width) ** 2 < 1] = object_id
    return ids


@pytest.mark.parametrize("protocol", ["crw", "dino"])
@pytest.mark.parametrize("seed", [0, 1])
def test_propagation_equals_reference(protocol, seed):
    height, width, num_frames = 18, 26, 12
    config = make_config(protocol, radius=5, num_recent=4 if protocol == "crw" else 3)
    features = _smooth_features(num_frames, 16, height, width, seed)
    ids = _blob_labels(height, width, 2, seed)
    first = mask_to_soft_labels(ids, [1, 2], (height, width), config.label_downsample)

    ours = propagate_labels(features, first, num_frames, config)
    reference = (reference_crw if protocol == "crw" else reference_dino)(features, first, config)
    torch.testing.assert_close(ours, reference, atol=1e-5, rtol=1e-4)

    # After upsampling and argmax (independent implementation), ≥ 99.9 % of pixels agree.
    size = (4 * height, 4 * width)
    agree = total = 0
    for t in range(1, num_frames):
        got = soft_labels_to_ids(ours[t], size, [0, 1, 2], config, processing=size)
        up = F.interpolate(reference[t][None], size=size, mode="bilinear", align_corners=False)[0]
        if config.minmax_normalise:
            low = up.amin(dim=(1, 2), keepdim=True)
            high = up.amax(dim=(1, 2), keepdim=True)
            up = torch.where(high > 0, (up - low) / (high - low), up)
        expected = up.argmax(0).numpy()
        agree += (got == expected).sum()
        total += expected.size
    assert agree / total >= 0.999


def test_streamed_features_give_the_same_labels():
    config = make_config("crw", radius=4, num_recent=3)
    features = _smooth_features(9, 8, 14, 15, seed=3)
    first = mask_to_soft_labels(_blob_labels(14, 15, 1, 3), [1], (14, 15), "bilinear")
    released: list[int] = []
    seen: list[int] = []
    streamed = propagate_labels(
        lambda i: features[i : i + 1], first, 9, config,
        on_frame=lambda t, soft: seen.append(t), release=released.append,
    )
    torch.testing.assert_close(streamed, propagate_labels(features, first, 9, config))
    assert seen == list(range(9))
    assert 0 not in released and released == sorted(released) and released[0] == 1


def test_propagation_tracks_a_moving_square():
    """Features that are a one-hot code of the content: labels must follow the motion."""
    height, width, num_frames, channels = 20, 30, 8, 32
    generator = torch.Generator().manual_seed(0)
    texture = F.normalize(torch.randn(channels, height, width + num_frames, generator=generator), dim=0)
    features = torch.stack([texture[:, :, t : t + width] for t in range(num_frames)])  # pan left
    ids = np.zeros((height, width), dtype=np.uint8)
    ids[5:12, 12:20] = 1
    first = mask_to_soft_labels(ids, [1], (height, width), "bilinear")
    soft = propagate_labels(features, first, num_frames, make_config("crw", radius=4))
    for t in range(1, num_frames):
        expected = np.zeros_like(ids)
        expected[5:12, 12 - t : 20 - t] = 1
        predicted = soft[t].argmax(0).numpy()
        assert (predicted == expected).mean() > 0.98


def test_processing_size_matches_dino_rule():
    dino = PRESETS["dino"]
    assert processing_size(480, 854, dino) == (480, 832)
    assert processing_size(854, 480, dino) == (832, 480)
    assert processing_size(480, 854, PRESETS["crw"]) == (480, 854)


def test_first_labels_void_is_background():
    ids = np.array([[0, 1, 255], [2, 2, 1]], dtype=np.uint8)
    soft = mask_to_soft_labels(ids, [1, 2], (2, 3), "bilinear")
    assert soft.shape == (3, 2, 3)
    assert torch.equal(soft.argmax(0), torch.tensor([[0, 1, 0], [2, 2, 1]]))
    assert torch.allclose(soft.sum(0), torch.ones(2, 3))


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="unknown protocol"):
        make_config("stcn")
    with pytest.raises(ValueError, match="topkk"):
        make_config("crw", topkk=3)
    with pytest.raises(ValueError, match="temperature"):
        make_config("crw", temperature=0)


@pytest.mark.parametrize("protocol", ["crw", "dino"])
def test_bf16_search_with_rescoring_matches_fp32(protocol):
    height, width, num_frames = 24, 30, 8
    features = _smooth_features(num_frames, 64, height, width, seed=5)
    ids = _blob_labels(height, width, 2, seed=5)
    exact_config = make_config(protocol, radius=6)
    first = mask_to_soft_labels(ids, [1, 2], (height, width), exact_config.label_downsample)
    exact = propagate_labels(features, first, num_frames, exact_config)
    fast = propagate_labels(features, first, num_frames,
                            make_config(protocol, radius=6, search_precision="bf16"))
    agree = (exact.argmax(1) == fast.argmax(1)).float().mean().item()
    assert agree >= 0.999
    assert (exact - fast).abs().max() < 0.05


def test_channel_argmax_equals_torch_argmax_including_ties():
    generator = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (5, 30, 40), generator=generator).float()  # many ties
    assert torch.equal(channel_argmax(scores), scores.argmax(0))
    assert torch.equal(channel_argmax(scores[:1]), torch.zeros(30, 40, dtype=torch.long))
