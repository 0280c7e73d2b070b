"""Batched random boxes and crop-and-resize on the training device.

Boxes are float ``(x1, y1, x2, y2)`` in continuous pixel coordinates (the image spans
``[0, W] × [0, H]``), so a crop covering the whole image is ``(0, 0, W, H)``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torchvision.ops import roi_align


def random_resized_boxes(
    count: int,
    height: float,
    width: float,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    device: torch.device | str | None = None,
    attempts: int = 10,
) -> Tensor:
    """Draw ``count`` RandomResizedCrop boxes at once (torchvision's sampling rule).

    Each box has area ``U(scale) · H · W`` and aspect ratio (w/h) log-uniform in ``ratio``;
    of ``attempts`` candidates the first that fits in the image is used, else a centred crop
    with the aspect ratio clamped to ``ratio`` (torchvision's fallback). Positions are uniform.

    Returns:
        count×4 float32 boxes (x1, y1, x2, y2).
    """
    area = height * width
    target = area * torch.empty(count, attempts, device=device).uniform_(scale[0], scale[1])
    log_ratio = torch.empty(count, attempts, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    aspect = torch.exp(log_ratio)
    w = torch.sqrt(target * aspect)
    h = torch.sqrt(target / aspect)
    fits = (w <= width) & (h <= height)
    # index of the first fitting attempt (attempts when none fits)
    order = torch.arange(attempts, device=device).expand(count, attempts)
    first = torch.where(fits, order, torch.full_like(order, attempts)).min(dim=1).values
    ok = first < attempts
    pick = first.clamp(max=attempts - 1).unsqueeze(1)
    w = w.gather(1, pick).squeeze(1)
    h = h.gather(1, pick).squeeze(1)

    # fallback: centred crop, whole image with the aspect ratio clamped to the range
    image_ratio = width / height
    if image_ratio < ratio[0]:
        fw, fh = width, width / ratio[0]
    elif image_ratio > ratio[1]:
        fw, fh = height * ratio[1], height
    else:
        fw, fh = width, height
    w = torch.where(ok, w, torch.full_like(w, fw))
    h = torch.where(ok, h, torch.full_like(h, fh))
    u = torch.rand(count, 2, device=device)
    x1 = torch.where(ok, u[:, 0] * (width - w), (width - w) / 2)
    y1 = torch.where(ok, u[:, 1] * (height - h), (height - h) / 2)
    return torch.stack([x1, y1, x1 + w, y1 + h], dim=1)


def crop_and_resize(images: Tensor, boxes: Tensor, box_index: Tensor, size: int | tuple[int, int]) -> Tensor:
    """Crop boxes out of a batch of images and resize them, in one batched call.

    Bilinear sampling with ``torchvision.ops.roi_align`` (aligned corners convention, adaptive
    number of samples per output pixel, which averages when shrinking).

    Args:
        images: B×C×H×W float.
        boxes: K×4 (x1, y1, x2, y2) in pixel coordinates of ``images``.
        box_index: K long, the image each box is cut from.
        size: output size s or (h, w).

    Returns:
        K×C×h×w.
    """
    rois = torch.cat([box_index.to(boxes.dtype).unsqueeze(1), boxes], dim=1).to(images.dtype)
    out_size = (size, size) if isinstance(size, int) else tuple(size)
    return roi_align(images, rois, out_size, spatial_scale=1.0, sampling_ratio=-1, aligned=True)


def grid_boxes(size: int, patch: int, stride: int, device: torch.device | str | None = None) -> Tensor:
    """Top-left-to-bottom-right grid of square patch boxes in a ``size``×``size`` frame.

    Returns:
        (g·g)×4 boxes, g = (size - patch) // stride + 1, row-major.
    """
    if patch > size:
        raise ValueError(f"patch size {patch} is larger than the frame size {size}")
    g = (size - patch) // stride + 1
    starts = torch.arange(g, device=device, dtype=torch.float32) * stride
    y, x = torch.meshgrid(starts, starts, indexing="ij")
    x, y = x.reshape(-1), y.reshape(-1)
    return torch.stack([x, y, x + patch, y + patch], dim=1)
