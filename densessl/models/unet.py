"""U-Net building blocks: encoders with skips, a dilated bottleneck and a decoder.

Shapes: inputs are ``B×C×H×W``; an encoder with ``L`` widths returns ``L`` feature maps at
strides ``1, 2, …, 2^(L-1)``. ``H`` and ``W`` need not be multiples of ``2^(L-1)``: the decoder
resizes to each skip's exact size.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

NORMS = ("batch", "group", "none")


def make_norm(kind: str, channels: int) -> nn.Module:
    """``batch`` (BatchNorm2d), ``group`` (GroupNorm with groups of 8 channels) or ``none``."""
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    if kind == "group":
        return nn.GroupNorm(max(1, channels // 8), channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"norm must be one of {', '.join(NORMS)}, got {kind!r}")


class ConvBlock(nn.Sequential):
    """Two ``3×3`` conv → norm → ReLU layers (the first may be strided or dilated)."""

    def __init__(self, in_ch: int, out_ch: int, norm: str = "batch", stride: int = 1, dilation: int = 1) -> None:
        bias = norm == "none"
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=dilation, dilation=dilation, bias=bias),
            make_norm(norm, out_ch),
            nn.ReLU(inplace=True),
            nn.Conv2d(out_ch, out_ch, 3, padding=dilation, dilation=dilation, bias=bias),
            make_norm(norm, out_ch),
            nn.ReLU(inplace=True),
        )


class Encoder(nn.Module):
    """``in_ch`` → feature maps of ``widths[i]`` channels at stride ``2^i`` (strided-conv downsampling)."""

    def __init__(self, in_ch: int, widths: Sequence[int], norm: str = "batch") -> None:
        super().__init__()
        if len(widths) < 1:
            raise ValueError("an encoder needs at least one width")
        self.widths = tuple(int(w) for w in widths)
        blocks = [ConvBlock(in_ch, self.widths[0], norm)]
        for prev, width in zip(self.widths[:-1], self.widths[1:]):
            blocks.append(ConvBlock(prev, width, norm, stride=2))
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: Tensor) -> list[Tensor]:
        features = []
        for block in self.blocks:
            x = block(x)
            features.append(x)
        return features


class DilatedBottleneck(nn.Module):
    """Residual ``3×3`` convs with growing dilation: a large receptive field at the coarsest stride."""

    def __init__(self, channels: int, dilations: Sequence[int] = (2, 4, 8), norm: str = "batch") -> None:
        super().__init__()
        bias = norm == "none"
        self.layers = nn.ModuleList(
            nn.Sequential(
                nn.Conv2d(channels, channels, 3, padding=d, dilation=d, bias=bias),
                make_norm(norm, channels),
                nn.ReLU(inplace=True),
            )
            for d in dilations
        )

    def forward(self, x: Tensor) -> Tensor:
        for layer in self.layers:
            x = x + layer(x)
        return x


class Decoder(nn.Module):
    """Bilinear ×2 upsampling, concatenation with the skip, :class:`ConvBlock`; then a 1×1 head.

    ``skip_widths`` are the channels of the skips from fine to coarse (the coarsest is the input).
    """

    def __init__(self, skip_widths: Sequence[int], out_ch: int, norm: str = "batch") -> None:
        super().__init__()
        widths = list(skip_widths)
        blocks = []
        current = widths[-1]
        for skip in reversed(widths[:-1]):
            blocks.append(ConvBlock(current + skip, skip, norm))
            current = skip
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Conv2d(current, out_ch, 1)

    def forward(self, features: Sequence[Tensor]) -> Tensor:
        x = features[-1]
        for block, skip in zip(self.blocks, reversed(features[:-1])):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return self.head(x)


class UNet(nn.Module):
    """Encoder → dilated bottleneck → decoder: ``B×in_ch×H×W`` → ``B×out_ch×H×W``."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        widths: Sequence[int] = (32, 64, 128, 256),
        dilations: Sequence[int] = (2, 4, 8),
        norm: str = "batch",
    ) -> None:
        super().__init__()
        self.encoder = Encoder(in_ch, widths, norm)
        self.bottleneck = DilatedBottleneck(widths[-1], dilations, norm)
        self.decoder = Decoder(widths, out_ch, norm)

    def forward(self, x: Tensor) -> Tensor:
        features = self.encoder(x)
        features[-1] = self.bottleneck(features[-1])
        return self.decoder(features)
