"""Contrastive random walk (CRW) model: nodes from a backbone, walk loss over a clip.

Three ways to make nodes (``mode``):

- ``"patch"`` (the paper's): each jittered patch goes through the encoder; its feature map is
  mean-pooled, projected by a linear head (512→128 for ResNet-18) and L2-normalised.
- ``"dense"``: every feature-map cell of the whole frame is a node (head applied per cell).
- ``"roi"``: one encoder pass per frame; each jittered patch box is sampled from the frame's
  feature map with ``roi_align`` and mean-pooled. Same boxes as ``"patch"`` at about a
  third of the encoder FLOPs (256² pixels per frame instead of 49·64²), but patches see
  context beyond their box through the receptive field.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import roi_align

from densessl.augment.crw import CRWAugment, CRWViews
from densessl.losses.random_walk import RandomWalkLoss, palindrome_products, transition_matrices
from densessl.models.modes import eval_mode

MODES = ("patch", "dense", "roi")


def make_head(in_dim: int, out_dim: int = 128, depth: int = 0) -> nn.Module:
    """Projection head: ``depth`` hidden Linear+ReLU layers of width in_dim, then Linear→out_dim."""
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True)]
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class CRW(nn.Module):
    """Backbone + projection head + random walk loss.

    Args:
        backbone: module with ``features(x B×3×H×W in [0,1]) -> B×C×h×w``, ``stride`` and
            ``out_channels`` (e.g. ``create_backbone("resnet18-crw", out_layer="layer4")``).
        mode: "patch", "dense" or "roi" (see the module docstring).
        embed_dim: node dimension after the head (128).
        head_depth: hidden layers in the head (0: one Linear, as in the paper).
        temperature, edge_dropout, min_cycle: see :class:`RandomWalkLoss`.
        channels_last: feed the encoder channels-last tensors.
    """

    def __init__(
        self,
        backbone: nn.Module,
        mode: str = "patch",
        embed_dim: int = 128,
        head_depth: int = 0,
        temperature: float = 0.05,
        edge_dropout: float = 0.1,
        min_cycle: int = 2,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        self.backbone = backbone
        self.mode = mode
        self.channels_last = channels_last
        self.head = make_head(int(backbone.out_channels), embed_dim, head_depth)
        self.walk = RandomWalkLoss(temperature=temperature, edge_dropout=edge_dropout, min_cycle=min_cycle)

    def _encode(self, images: Tensor) -> Tensor:
        """images K×3×H×W → features K×C×h×w."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.backbone.features(images)

    def embed(self, features: Tensor) -> Tensor:
        """...×C pooled features → ...×D L2-normalised nodes."""
        return F.normalize(self.head(features), dim=-1)

    def nodes_from_patches(self, patches: Tensor) -> Tensor:
        """patches B×T×P×3×h×w → nodes B×T×P×D."""
        b, t, n = patches.shape[:3]
        maps = self._encode(patches.flatten(0, 2))
        pooled = maps.mean(dim=(-2, -1))
        return self.embed(pooled).reshape(b, t, n, -1)

    def nodes_from_frames(self, frames: Tensor) -> Tensor:
        """frames B×T×3×H×W → nodes B×T×(h·w)×D, one per feature-map cell (row-major)."""
        b, t = frames.shape[:2]
        maps = self._encode(frames.flatten(0, 1))
        cells = maps.flatten(2).transpose(1, 2)  # (B·T)×(h·w)×C
        return self.embed(cells).reshape(b, t, cells.shape[1], -1)

    def nodes_from_rois(self, frames: Tensor, boxes: Tensor, patch_size: int) -> Tensor:
        """frames B×T×3×H×W, boxes B×T×P×4 (frame pixels) → nodes B×T×P×D.

        Each box is sampled from the frame's feature map on a (patch_size/stride)² grid with
        ``roi_align`` and mean-pooled.
        """
        b, t, n = boxes.shape[:3]
        maps = self._encode(frames.flatten(0, 1))
        stride = int(self.backbone.stride)
        cells = max(1, patch_size // stride)
        index = torch.arange(b * t, device=boxes.device, dtype=boxes.dtype).repeat_interleave(n)
        rois = torch.cat([index[:, None], boxes.reshape(-1, 4)], dim=1).float()
        # float32 sampling: box coordinates up to 256 px do not survive a cast to bf16
        sampled = roi_align(maps.float(), rois, (cells, cells), spatial_scale=1.0 / stride, sampling_ratio=2, aligned=True)
        return self.embed(sampled.mean(dim=(-2, -1)).to(maps.dtype)).reshape(b, t, n, -1)

    def nodes(self, views: CRWViews, patch_size: int) -> Tensor:
        """Nodes B×T×N×D of an augmented batch according to ``mode``."""
        if self.mode == "patch":
            if views.patches is None:
                raise ValueError("patch mode needs patches: build CRWAugment with with_patches=True")
            return self.nodes_from_patches(views.patches)
        if self.mode == "dense":
            return self.nodes_from_frames(views.frames)
        return self.nodes_from_rois(views.frames, views.boxes, patch_size)

    def loss(self, nodes: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """Walk loss of nodes B×T×N×D → (loss, detached metrics)."""
        out = self.walk(nodes)
        metrics = {"loss": out.loss.detach(), "cycle_acc": out.accuracy.detach()}
        for k, value in out.cycle_losses.items():
            metrics[f"loss_k{k}"] = value.detach()
        for k, value in out.cycle_accuracies.items():
            metrics[f"acc_k{k}"] = value.detach()
        return out.loss, metrics


class CRWTrainModel(nn.Module):
    """What the training loop runs: device augmentation, then the CRW model.

    ``forward(clip uint8 B×T×H×W×3) -> (loss, metrics)``.
    """

    def __init__(self, augment: CRWAugment, model: CRW) -> None:
        super().__init__()
        self.augment = augment
        self.model = model

    def forward(self, clip: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        views = self.augment(clip)
        nodes = self.model.nodes(views, self.augment.patch_size)
        return self.model.loss(nodes)


@contextlib.contextmanager
def _seeded_eval(model: nn.Module, device: torch.device, seed: int) -> Iterator[None]:
    """Eval mode with the global RNGs (CUDA's on ``device`` too) seeded with ``seed``; the
    model's mode and the RNG states are restored afterwards."""
    devices = [device.index or 0] if device.type == "cuda" else []
    with eval_mode(model), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def walk_metrics(model: CRWTrainModel, clips: Tensor, seed: int = 0, batch_size: int = 8) -> dict[str, float]:
    """Walk loss and cycle accuracy of held-out clips, in eval mode (no edge dropout).

    Args:
        model: the training model (augmentation + CRW).
        clips: uint8 N×T×H×W×3 (or N×T×3×H×W) on the model's device.
        seed: augmentation seed, so that two models see the same crops (the global RNG state
            is left as it was).

    Returns:
        ``{"loss": ..., "cycle_acc": ...}`` averaged over the clips.
    """
    totals = {"loss": 0.0, "cycle_acc": 0.0}
    with _seeded_eval(model, clips.device, seed):
        for start in range(0, len(clips), batch_size):
            batch = clips[start : start + batch_size]
            _, metrics = model(batch)
            for key in totals:
                totals[key] += float(metrics[key]) * len(batch)
    return {key: value / len(clips) for key, value in totals.items()}


@dataclass
class WalkView:
    """What the walk does on one augmented clip, for pictures.

    ``frames``: T×S×S×3 uint8 RGB (the augmented frames); ``centres``: T×N×2 node centres
    (x, y) in frame pixels; ``source_of_last``: N, for each node of the last frame, the
    first-frame node whose walker most likely ends there; ``returns_home``: N bool, whether the
    round trip 0 → T−1 → 0 of each first-frame node ends where it started (argmax).
    """

    frames: Tensor
    centres: Tensor
    source_of_last: Tensor
    returns_home: Tensor


def walk_assignments(nodes: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Where the walk of a clip goes, without edge dropout.

    Args:
        nodes: T×N×D node embeddings of one clip.
        temperature: the walk's softmax temperature.

    Returns:
        (source_of_last, returns_home): N indices into the first frame's nodes (argmax over the
        sources of the forward product F_0 … F_{T−2}, per last-frame node) and N bools (the
        argmax of the longest palindrome's return distribution is the start).
    """
    forward, backward = transition_matrices(nodes[None].float(), temperature)
    walk = functools.reduce(torch.matmul, forward)  # F_0 … F_{T−2}
    longest = len(forward)
    cycle = palindrome_products(forward, backward, min_cycle=longest)[longest]  # the loss's definition
    source_of_last = walk[0].argmax(dim=0)
    returns_home = cycle[0].argmax(dim=-1) == torch.arange(nodes.shape[1], device=nodes.device)
    return source_of_last, returns_home


def _node_centres(model: CRW, views: CRWViews) -> Tensor:
    """T×N×2 node centres (x, y) in frame pixels of the first clip of ``views``."""
    if model.mode != "dense":
        boxes = views.boxes[0]
        return torch.stack([(boxes[..., 0] + boxes[..., 2]) / 2, (boxes[..., 1] + boxes[..., 3]) / 2], dim=-1)
    t, _, size_h, size_w = views.frames.shape[1:]
    cells_h, cells_w = model._encode(views.frames[0, :1]).shape[-2:]  # called under no_grad
    ys = (torch.arange(cells_h, device=views.frames.device) + 0.5) * size_h / cells_h
    xs = (torch.arange(cells_w, device=views.frames.device) + 0.5) * size_w / cells_w
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=-1).reshape(-1, 2)  # row-major cells
    return grid.expand(t, -1, -1)


@torch.no_grad()
def walk_view(model: CRWTrainModel, clip: Tensor, seed: int = 0) -> WalkView:
    """The walk on one clip (uint8 T×H×W×3 or T×3×H×W, on the model's device), in eval mode,
    with augmentation drawn from ``seed`` (the global RNG states are left as they were)."""
    with _seeded_eval(model, clip.device, seed):
        views = model.augment(clip[None])
        nodes = model.model.nodes(views, model.augment.patch_size)[0]
        source_of_last, returns_home = walk_assignments(nodes, model.model.walk.temperature)
        centres = _node_centres(model.model, views)
    frames = (views.frames[0].float().clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    return WalkView(frames.cpu(), centres.float().cpu(), source_of_last.cpu(), returns_home.cpu())
