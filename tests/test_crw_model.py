"""CRW augmentation (random boxes, crops, patch grid) and the CRW model's node construction."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from conftest import compiled_counting_graphs
from densessl.augment.boxes import crop_and_resize, grid_boxes, random_resized_boxes
from densessl.augment.crw import CRWAugment, clip_to_float
from densessl.losses.random_walk import RandomWalkLoss
from densessl.video.crw import CRW, CRWTrainModel, walk_assignments, walk_view


class TinyBackbone(nn.Module):
    """Backbone API stand-in: two stride-2 convs, stride 4, 16 channels."""

    stride = 4
    out_channels = 16

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 16, 3, 2, 1))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


# ------------------------------------------------------------------------------------ boxes
def test_random_resized_boxes_follow_scale_and_ratio():
    torch.manual_seed(0)
    h, w = 120.0, 200.0
    boxes = random_resized_boxes(4000, h, w, (0.3, 0.6), (0.7, 1.3))
    bw, bh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    assert (boxes[:, 0] >= 0).all() and (boxes[:, 1] >= 0).all()
    assert (boxes[:, 2] <= w + 1e-4).all() and (boxes[:, 3] <= h + 1e-4).all()
    area = bw * bh / (h * w)
    assert area.min() >= 0.3 - 1e-4 and area.max() <= 0.6 + 1e-4
    ratio = bw / bh
    assert ratio.min() >= 0.7 - 1e-4 and ratio.max() <= 1.3 + 1e-4
    # positions spread over the free range (uniform): centres cover most of the image
    cx = (boxes[:, 0] + boxes[:, 2]) / 2
    assert cx.min() < 0.3 * w and cx.max() > 0.7 * w
    # log-uniform ratio: about half the boxes are wider than tall
    assert 0.4 < (ratio > 1).float().mean().item() < 0.6


def test_random_resized_boxes_fallback_is_centred_clamped_crop():
    # area 100% with ratio in [2, 3] never fits a square image: centred crop of ratio 2
    boxes = random_resized_boxes(5, 100.0, 100.0, (1.0, 1.0), (2.0, 3.0))
    expected = torch.tensor([0.0, 25.0, 100.0, 75.0]).expand(5, 4)
    torch.testing.assert_close(boxes, expected)


def naive_bilinear_crop(image: torch.Tensor, box, size: int) -> torch.Tensor:
    """One sample per output pixel at the bin centre, bilinear with edge clamping (loops)."""
    c, h, w = image.shape
    x1, y1, x2, y2 = box
    out = torch.zeros(c, size, size, dtype=image.dtype)
    for i in range(size):
        for j in range(size):
            y = y1 + (i + 0.5) * (y2 - y1) / size - 0.5
            x = x1 + (j + 0.5) * (x2 - x1) / size - 0.5
            y = min(max(y, 0.0), h - 1.0)
            x = min(max(x, 0.0), w - 1.0)
            y0, x0 = int(math.floor(y)), int(math.floor(x))
            y1i, x1i = min(y0 + 1, h - 1), min(x0 + 1, w - 1)
            ly, lx = y - y0, x - x0
            out[:, i, j] = (
                image[:, y0, x0] * (1 - ly) * (1 - lx)
                + image[:, y0, x1i] * (1 - ly) * lx
                + image[:, y1i, x0] * ly * (1 - lx)
                + image[:, y1i, x1i] * ly * lx
            )
    return out


def test_crop_and_resize_matches_naive_bilinear_when_enlarging():
    g = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 20, 24, generator=g, dtype=torch.float64)
    boxes = torch.tensor([[2.0, 3.0, 9.5, 10.0], [5.25, 1.0, 17.0, 13.5]], dtype=torch.float64)
    out = crop_and_resize(images, boxes, torch.tensor([1, 0]), 16)
    assert out.shape == (2, 3, 16, 16)
    torch.testing.assert_close(out[0], naive_bilinear_crop(images[1], boxes[0].tolist(), 16))
    torch.testing.assert_close(out[1], naive_bilinear_crop(images[0], boxes[1].tolist(), 16))


def test_crop_and_resize_full_box_is_identity():
    images = torch.rand(3, 3, 8, 8)
    boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0]]).expand(3, 4)
    torch.testing.assert_close(crop_and_resize(images, boxes, torch.arange(3), 8), images)


def test_grid_boxes_paper_layout():
    grid = grid_boxes(256, 64, 32)
    assert grid.shape == (49, 4)
    torch.testing.assert_close(grid[0], torch.tensor([0.0, 0.0, 64.0, 64.0]))
    torch.testing.assert_close(grid[1], torch.tensor([32.0, 0.0, 96.0, 64.0]))
    torch.testing.assert_close(grid[-1], torch.tensor([192.0, 192.0, 256.0, 256.0]))
    with pytest.raises(ValueError):
        grid_boxes(32, 64, 32)


# -------------------------------------------------------------------------------- augmentation
def random_clip(b=2, t=3, h=40, w=56, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (b, t, h, w, 3), generator=g, dtype=torch.uint8)


def test_augment_shapes_ranges_and_patch_boxes():
    aug = CRWAugment(frame_size=32, patch_size=8, patch_stride=4, patch_scale=(0.7, 0.9))
    assert aug.num_patches == 49
    torch.manual_seed(0)
    views = aug(random_clip())
    assert views.frames.shape == (2, 3, 3, 32, 32)
    assert views.patches.shape == (2, 3, 49, 3, 8, 8)
    assert views.boxes.shape == (2, 3, 49, 4)
    assert 0 <= views.frames.min() and views.frames.max() <= 1
    # each jittered box stays inside its grid cell with the requested area fraction
    cells = aug.grid.expand(2, 3, 49, 4)
    boxes = views.boxes
    assert (boxes[..., :2] >= cells[..., :2] - 1e-5).all() and (boxes[..., 2:] <= cells[..., 2:] + 1e-5).all()
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]) / 64
    assert area.min() >= 0.7 - 1e-4 and area.max() <= 0.9 + 1e-4


def test_augment_patches_are_crops_of_the_augmented_frames():
    aug = CRWAugment(frame_size=32, patch_size=8, patch_stride=4)
    torch.manual_seed(1)
    views = aug(random_clip())
    b, t, p = 1, 2, 17
    expected = crop_and_resize(views.frames[b, t][None], views.boxes[b, t, p][None], torch.tensor([0]), 8)[0]
    torch.testing.assert_close(views.patches[b, t, p], expected)


def test_augment_per_frame_and_per_clip_crops():
    clip = random_clip(b=2, t=3)
    torch.manual_seed(2)
    frames = CRWAugment(frame_size=16, patch_size=8, patch_stride=8)(clip).frames
    assert not torch.allclose(frames[0, 0], frames[0, 1])  # independent crops per frame
    same = torch.zeros_like(clip) + clip[:, :1]  # all frames of a clip identical
    torch.manual_seed(2)
    views = CRWAugment(frame_size=16, patch_size=8, patch_stride=8, same_crop_on_clip=True)(same)
    torch.testing.assert_close(views.frames[:, 0], views.frames[:, 2])


def test_augment_accepts_channels_first_and_flips_per_clip():
    clip = random_clip()
    aug = CRWAugment(frame_size=24, patch_size=8, patch_stride=8, flip=True)
    torch.manual_seed(3)
    a = aug(clip)
    torch.manual_seed(3)
    b = aug(clip.permute(0, 1, 4, 2, 3))
    torch.testing.assert_close(a.frames, b.frames)
    torch.testing.assert_close(clip_to_float(clip)[0, 0, :, 0, 0], clip[0, 0, 0, 0].float() / 255)
    # a clip built from one frame: with a crop shared by the clip, flipped and unflipped
    # frames never mix within a clip
    same = torch.zeros_like(clip) + clip[:, :1]
    flips = CRWAugment(frame_size=24, patch_size=8, patch_stride=8, flip=True, same_crop_on_clip=True)
    for seed in range(4):
        torch.manual_seed(seed)
        f = flips(same).frames
        torch.testing.assert_close(f[:, 0], f[:, 1])


def test_augment_color_jitter_changes_colours_only_when_enabled():
    clip = random_clip()
    torch.manual_seed(4)
    plain = CRWAugment(frame_size=24, patch_size=8, patch_stride=8)(clip).frames
    torch.manual_seed(4)
    jittered = CRWAugment(frame_size=24, patch_size=8, patch_stride=8, color_jitter=0.4)(clip).frames
    assert jittered.shape == plain.shape
    assert not torch.allclose(plain, jittered)
    assert 0 <= jittered.min() and jittered.max() <= 1


def test_augment_rejects_bad_settings():
    with pytest.raises(ValueError):
        CRWAugment(crop_scale=(0.9, 0.5))
    with pytest.raises(ValueError):
        CRWAugment()(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


# ---------------------------------------------------------------------------------- the model
def test_patch_nodes_match_naive_pooling():
    torch.manual_seed(0)
    model = CRW(TinyBackbone(), mode="patch", embed_dim=5)
    patches = torch.rand(2, 3, 4, 3, 16, 16)
    nodes = model.nodes_from_patches(patches)
    assert nodes.shape == (2, 3, 4, 5)
    for b, t, p in [(0, 0, 0), (1, 2, 3), (0, 1, 2)]:
        fmap = model.backbone.features(patches[b, t, p][None])[0]  # C×h×w
        pooled = fmap.sum(dim=(1, 2)) / (fmap.shape[1] * fmap.shape[2])
        expected = F.normalize(model.head(pooled), dim=0)
        torch.testing.assert_close(nodes[b, t, p], expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(nodes.norm(dim=-1), torch.ones(2, 3, 4))


def test_dense_nodes_are_feature_cells():
    torch.manual_seed(0)
    model = CRW(TinyBackbone(), mode="dense", embed_dim=6)
    frames = torch.rand(1, 3, 3, 16, 24)
    nodes = model.nodes_from_frames(frames)
    assert nodes.shape == (1, 3, 4 * 6, 6)
    fmap = model.backbone.features(frames[0, 2][None])[0]
    y, x = 2, 5
    expected = F.normalize(model.head(fmap[:, y, x]), dim=0)
    torch.testing.assert_close(nodes[0, 2, y * 6 + x], expected, rtol=1e-5, atol=1e-6)


def test_roi_nodes_pool_the_box_on_the_feature_map():
    class ConstantPerImage(nn.Module):
        """Feature map = the image's mean colour repeated (spatially constant), stride 4."""

        stride = 4
        out_channels = 3

        def features(self, x):
            return F.avg_pool2d(x, 4).mean(dim=(2, 3), keepdim=True).expand(-1, -1, x.shape[2] // 4, x.shape[3] // 4)

    torch.manual_seed(0)
    model = CRW(ConstantPerImage(), mode="roi", embed_dim=4)
    frames = torch.rand(2, 3, 3, 32, 32)
    boxes = grid_boxes(32, 8, 8)[None, None].expand(2, 3, 16, 4).contiguous()
    nodes = model.nodes_from_rois(frames, boxes, patch_size=8)
    assert nodes.shape == (2, 3, 16, 4)
    expected = F.normalize(model.head(frames.mean(dim=(3, 4))), dim=-1)  # B×T×D
    torch.testing.assert_close(nodes, expected[:, :, None].expand_as(nodes), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("mode", ["patch", "dense", "roi"])
def test_training_model_backward_reaches_backbone_and_head(mode):
    torch.manual_seed(0)
    aug = CRWAugment(frame_size=32, patch_size=16, patch_stride=8, with_patches=mode == "patch")
    model = CRWTrainModel(aug, CRW(TinyBackbone(), mode=mode, embed_dim=8, edge_dropout=0.1))
    loss, metrics = model(random_clip(b=2, t=4, h=36, w=40))
    assert loss.ndim == 0 and torch.isfinite(loss)
    assert set(metrics) >= {"loss", "cycle_acc", "loss_k2", "loss_k3"}
    loss.backward()
    assert model.model.backbone.net[0].weight.grad.abs().sum() > 0
    assert model.model.head[-1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("mode", ["patch", "roi"])
def test_compiled_training_model_is_one_graph_for_every_step(mode):
    torch.manual_seed(0)
    aug = CRWAugment(frame_size=32, patch_size=16, patch_stride=8, with_patches=mode == "patch")
    model = CRWTrainModel(aug, CRW(TinyBackbone(), mode=mode, embed_dim=8, edge_dropout=0.1))
    with compiled_counting_graphs(model) as (compiled, graphs):
        for _ in range(4):  # new random crops, patch jitter and edge dropout at every step
            loss, _ = compiled(random_clip(b=2, t=4, h=36, w=40))
            loss.backward()
            model.zero_grad(set_to_none=True)
    assert len(graphs) == 1


def test_crw_resnet18_paper_shapes():
    from densessl.models.backbones import create_backbone

    backbone = create_backbone("resnet18-crw", out_layer="layer4")
    model = CRW(backbone, mode="patch")
    assert isinstance(model.head[0], nn.Linear)
    assert (model.head[0].in_features, model.head[0].out_features) == (512, 128)
    assert model.walk.temperature == 0.05 and model.walk.edge_dropout == 0.1
    nodes = model.nodes_from_patches(torch.rand(1, 3, 2, 3, 32, 32))
    assert nodes.shape == (1, 3, 2, 128)


def test_few_steps_on_a_fixed_batch_lower_the_loss():
    torch.manual_seed(0)
    aug = CRWAugment(frame_size=32, patch_size=16, patch_stride=8)
    model = CRWTrainModel(aug, CRW(TinyBackbone(), mode="patch", embed_dim=16, edge_dropout=0.0))
    # the tiny backbone's pooled features are small next to the head's random bias, which would
    # make all nodes alike (loss stuck at ln N); a real ResNet's are not
    nn.init.zeros_(model.model.head[-1].bias)
    g = torch.Generator().manual_seed(5)
    blocks = torch.randint(0, 256, (4, 3, 4, 4), generator=g, dtype=torch.uint8)  # coloured blocks
    frame = F.interpolate(blocks.float(), size=(32, 32), mode="nearest").to(torch.uint8)
    clip = frame[:, None].expand(4, 3, 3, 32, 32).contiguous()  # B×T×3×H×W, static scene
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        torch.manual_seed(1)  # same augmentation every step
        loss, _ = model(clip)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[0] > 0.8 * math.log(9)
    assert losses[-1] < 0.5 * losses[0]


def test_loss_module_is_shared_definition():
    model = CRW(TinyBackbone(), temperature=0.07, edge_dropout=0.2, min_cycle=1)
    assert isinstance(model.walk, RandomWalkLoss)
    assert (model.walk.temperature, model.walk.edge_dropout, model.walk.min_cycle) == (0.07, 0.2, 1)
    with pytest.raises(ValueError):
        CRW(TinyBackbone(), mode="pixels")


# ---------------------------------------------------------------------------- walk pictures
def test_walk_assignments_follow_a_permuted_clip():
    """Frame t+1's nodes are frame t's permuted by σ: the walk carries node i to σ^{T-1}(i), so
    the last frame's node j comes from σ^{-(T-1)}(j), and every round trip returns home."""
    torch.manual_seed(0)
    n, steps = 12, 3
    sigma = torch.randperm(n)
    frames = [F.normalize(torch.randn(n, 16), dim=-1)]
    for _ in range(steps):
        following = torch.empty_like(frames[-1])
        following[sigma] = frames[-1]  # node i moves to position sigma[i]
        frames.append(following)
    source_of_last, returns_home = walk_assignments(torch.stack(frames), temperature=0.01)
    where = torch.arange(n)
    for _ in range(steps):
        where = sigma[where]  # where[i]: the position of node i in the last frame
    expected = torch.empty(n, dtype=torch.long)
    expected[where] = torch.arange(n)
    assert torch.equal(source_of_last, expected)
    assert returns_home.all()
    scrambled = torch.stack([frames[0], *[F.normalize(torch.randn(n, 16), dim=-1) for _ in range(steps)]])
    assert not walk_assignments(scrambled, temperature=0.01)[1].all()


@pytest.mark.parametrize("mode", ["patch", "dense", "roi"])
def test_walk_view_shapes_and_leaves_mode_and_rng_alone(mode):
    torch.manual_seed(0)
    aug = CRWAugment(frame_size=32, patch_size=16, patch_stride=8, with_patches=mode == "patch")
    model = CRWTrainModel(aug, CRW(TinyBackbone(), mode=mode, embed_dim=8)).train()
    clip = random_clip(b=1, t=4, h=36, w=40)[0]
    state = torch.get_rng_state()
    view = walk_view(model, clip, seed=3)
    assert torch.equal(torch.get_rng_state(), state) and model.training
    nodes = 9 if mode != "dense" else 64  # 3×3 patches, or the 8×8 cells of a stride-4 map
    assert view.frames.shape == (4, 32, 32, 3) and view.frames.dtype == torch.uint8
    assert view.centres.shape == (4, nodes, 2)
    assert view.source_of_last.shape == (nodes,) and view.returns_home.shape == (nodes,)
    assert 0 <= view.centres.min() and view.centres.max() <= 32
    again = walk_view(model, clip, seed=3)
    assert torch.equal(again.frames, view.frames) and torch.equal(again.source_of_last, view.source_of_last)
