"""Top-k cosine affinities between feature maps, dense or restricted to a local window.

These are the inner loop of label propagation. The windowed version never builds the
``(h·w) × (h·w)`` affinity: queries are cut into ``tile × tile`` blocks and each block is
multiplied with the ``(tile + 2r) × (tile + 2r)`` block of keys around it (one batched matmul),
so the work is ``(tile + 2r)² / (π r²)`` times the minimum instead of ``h·w / (π r²)`` times.

All functions take L2-normalised features, so a dot product is a cosine similarity.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

WindowShape = Literal["euclidean", "square"]


def window_reach(radius: float, shape: WindowShape) -> int:
    """Largest integer offset ``d`` (in cells) that lies inside the window along one axis.

    ``euclidean`` keeps offsets with ``dy² + dx² < radius²`` (strict, as in the CRW code);
    ``square`` keeps ``|dy| ≤ radius`` and ``|dx| ≤ radius`` (as in the DINO code).
    """
    if radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}")
    if shape == "euclidean":
        return math.ceil(radius) - 1
    if shape == "square":
        return math.floor(radius)
    raise ValueError(f"unknown window shape '{shape}' (expected 'euclidean' or 'square')")


def window_mask(dy: Tensor, dx: Tensor, radius: float, shape: WindowShape) -> Tensor:
    """Boolean mask of the offsets ``(dy, dx)`` (any broadcastable shapes) inside the window."""
    if shape == "euclidean":
        return (dy * dy + dx * dx) < radius * radius
    if shape == "square":
        return (dy.abs() <= radius) & (dx.abs() <= radius)
    raise ValueError(f"unknown window shape '{shape}' (expected 'euclidean' or 'square')")


def select_topk(values: Tensor, candidates: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ``min(k, M)`` largest of ``…×M`` ``values`` (descending) and their ``candidates``."""
    top = values.topk(min(k, values.shape[-1]), dim=-1)
    return top.values, candidates.gather(-1, top.indices)


def dense_topk(
    queries: Tensor, keys: Tensor, k: int, *, chunk_size: int = 1024
) -> tuple[Tensor, Tensor]:
    """Top-k over all key positions for every query position.

    Args:
        queries: ``B×C×N`` query features.
        keys: ``B×C×M`` key features.
        k: number of neighbours kept (at most ``M``).
        chunk_size: queries processed at once (bounds memory to ``B·chunk·M`` floats).

    Returns:
        ``(values, indices)``, each ``B×N×k``: cosine similarities sorted descending, and key
        positions in ``[0, M)``.
    """
    k = min(k, keys.shape[-1])
    values, indices = [], []
    keys_t = keys
    for start in range(0, queries.shape[-1], chunk_size):
        block = queries[..., start : start + chunk_size].transpose(1, 2)  # B×n×C
        affinity = torch.bmm(block, keys_t)  # B×n×M
        top = affinity.topk(k, dim=-1)
        values.append(top.values)
        indices.append(top.indices)
    return torch.cat(values, dim=1), torch.cat(indices, dim=1)


def _tile_layout(
    height: int, width: int, tile: int, reach: int, radius: float, shape: WindowShape, device
) -> tuple[Tensor, Tensor, Tensor]:
    """Static pieces of the tiled window computation.

    Returns:
        mask: ``L×tile²×S²`` bool, key ``j`` of tile ``l``'s window is a valid neighbour of
            query ``i`` of that tile (inside the window and inside the image), with
            ``S = tile + 2·reach`` and ``L`` the number of tiles.
        key_position: ``L×S²`` long, the key's flat position ``y·width + x`` (0 where outside).
        padded_position: ``L×S²`` long, the key's flat position in the zero-padded key map
            (``reach`` cells before, ``reach`` + the tile padding after, on both axes).
    """
    span = tile + 2 * reach
    padded_h = math.ceil(height / tile) * tile
    padded_w = math.ceil(width / tile) * tile
    position = torch.arange(height * width, device=device, dtype=torch.float64)
    position = position.view(1, 1, height, width)
    position = F.pad(
        position,
        (reach, reach + padded_w - width, reach, reach + padded_h - height),
        value=-1.0,
    )
    key_position = F.unfold(position, kernel_size=span, stride=tile)[0].T.long()  # L×S²
    inside_image = key_position >= 0
    padded = torch.arange(position.numel(), device=device, dtype=torch.float64).view(position.shape)
    padded_position = F.unfold(padded, kernel_size=span, stride=tile)[0].T.long()  # L×S²

    offsets = torch.arange(span, device=device)
    key_y, key_x = (offsets - reach).view(span, 1), (offsets - reach).view(1, span)
    query = torch.arange(tile, device=device)
    dy = key_y.view(1, 1, span, 1) - query.view(tile, 1, 1, 1)
    dx = key_x.view(1, 1, 1, span) - query.view(1, tile, 1, 1)
    in_window = window_mask(dy, dx, radius, shape).reshape(tile * tile, span * span)
    mask = in_window.unsqueeze(0) & inside_image.unsqueeze(1)
    return mask, key_position.clamp_min(0), padded_position


class WindowedTopK:
    """Top-k affinities of each query position among key positions inside a local window.

    The layout (masks and key positions) depends only on the feature-map size, so one instance
    serves a whole sequence.

    Args:
        height, width: feature-map size ``h×w``.
        radius: window radius in feature cells.
        shape: ``'euclidean'`` (``dy² + dx² < r²``) or ``'square'`` (``|dy|, |dx| ≤ r``).
        k: neighbours kept per query.
        tile: query block size; larger blocks mean bigger matmuls but more wasted products.
    """

    def __init__(
        self,
        height: int,
        width: int,
        radius: float,
        shape: WindowShape,
        k: int,
        *,
        tile: int = 12,
        device: torch.device | str = "cpu",
    ) -> None:
        self.height, self.width, self.tile = height, width, tile
        self.reach = window_reach(radius, shape)
        self.span = tile + 2 * self.reach
        self.k = min(k, self.span * self.span)
        self.mask, self.key_position, padded_position = _tile_layout(
            height, width, tile, self.reach, radius, shape, torch.device(device)
        )
        self.window_rows = padded_position.flatten()  # rows of the padded key map, tile by tile
        self._biases: dict[torch.dtype, Tensor] = {}
        self.tiles_y = math.ceil(height / tile)
        self.tiles_x = math.ceil(width / tile)
        self.num_tiles = self.tiles_y * self.tiles_x
        self.pad_h = self.tiles_y * tile - height
        self.pad_w = self.tiles_x * tile - width

    def _bias(self, dtype: torch.dtype) -> Tensor:
        """``1×L×tile²×S²`` additive mask: 0 inside the window and the image, −inf elsewhere."""
        if dtype not in self._biases:
            bias = torch.zeros(self.mask.shape, dtype=dtype, device=self.mask.device)
            self._biases[dtype] = bias.masked_fill_(~self.mask, float("-inf")).unsqueeze(0)
        return self._biases[dtype]

    def query_tiles(self, queries: Tensor) -> Tensor:
        """``B×C×h×w`` queries → ``B×L×tile²×C`` blocks (a cheap permutation, no overlap)."""
        batch, channels = queries.shape[:2]
        self._check_size(queries)
        tile = self.tile
        padded = F.pad(queries, (0, self.pad_w, 0, self.pad_h))
        blocks = F.unfold(padded, kernel_size=tile, stride=tile)  # B×(C·t²)×L
        blocks = blocks.view(batch, channels, tile * tile, self.num_tiles)
        return blocks.permute(0, 3, 2, 1).contiguous()

    def key_tiles(self, keys: Tensor) -> Tensor:
        """``B×C×h×w`` keys → ``B×L×S²×C`` windows (overlapping: compute once per key frame).

        One gather of channel-contiguous rows from a padded channels-last copy: windows overlap
        ``(S / tile)²``-fold, so this copy, not the matmul, is the expensive part on CPUs."""
        batch, channels = keys.shape[:2]
        self._check_size(keys)
        reach = self.reach
        padded = F.pad(keys, (reach, reach + self.pad_w, reach, reach + self.pad_h))
        rows = padded.permute(0, 2, 3, 1).reshape(batch, -1, channels)  # B×(H'·W')×C
        windows = rows.index_select(1, self.window_rows)
        return windows.view(batch, self.num_tiles, self.span * self.span, channels)

    def topk_tiles(self, query_tiles: Tensor, key_tiles: Tensor) -> tuple[Tensor, Tensor]:
        """Top-k from pre-tiled inputs (see :meth:`query_tiles`, :meth:`key_tiles`).

        Returns:
            ``(values, indices)``, each ``B×(h·w)×k``: cosine similarities sorted descending
            (``-inf`` where the window holds fewer than ``k`` keys) and flat key positions.
        """
        batch, num_tiles = query_tiles.shape[:2]
        tile, height, width = self.tile, self.height, self.width
        # The window mask enters as an additive 0/−inf bias fused into the matmul (one pass
        # over the affinities instead of two).
        bias = self._bias(query_tiles.dtype).expand(batch, -1, -1, -1)
        affinity = torch.baddbmm(
            bias.reshape(batch * num_tiles, *bias.shape[2:]),
            query_tiles.reshape(batch * num_tiles, *query_tiles.shape[2:]),
            key_tiles.reshape(batch * num_tiles, *key_tiles.shape[2:]).transpose(1, 2),
        ).view(batch, num_tiles, tile * tile, -1)  # B×L×t²×S²
        top = affinity.topk(self.k, dim=-1)  # B×L×t²×k
        positions = self.key_position.unsqueeze(1).expand(-1, tile * tile, -1)
        positions = positions.unsqueeze(0).expand(batch, -1, -1, -1).gather(-1, top.indices)

        def untile(x: Tensor) -> Tensor:
            x = x.view(batch, self.tiles_y, self.tiles_x, tile, tile, self.k)
            x = x.permute(0, 1, 3, 2, 4, 5).reshape(
                batch, self.tiles_y * tile, self.tiles_x * tile, self.k
            )
            return x[:, :height, :width].reshape(batch, height * width, self.k)

        return untile(top.values), untile(positions)

    def __call__(self, queries: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
        """Windowed top-k of ``B×C×h×w`` queries against ``B×C×h×w`` keys (frame by frame).

        Returns:
            ``(values, indices)``, each ``B×(h·w)×k``.
        """
        return self.topk_tiles(self.query_tiles(queries), self.key_tiles(keys))

    def _check_size(self, x: Tensor) -> None:
        if x.dim() != 4 or tuple(x.shape[-2:]) != (self.height, self.width):
            raise ValueError(
                f"expected B×C×{self.height}×{self.width} features, got {tuple(x.shape)}"
            )


def windowed_topk(
    queries: Tensor, keys: Tensor, radius: float, shape: WindowShape, k: int, *, tile: int = 12
) -> tuple[Tensor, Tensor]:
    """One-off form of :class:`WindowedTopK` (``B×C×h×w`` inputs → ``B×(h·w)×k`` outputs)."""
    _, _, height, width = queries.shape
    op = WindowedTopK(height, width, radius, shape, k, tile=tile, device=queries.device)
    return op(queries, keys)
