"""densessl.models: backbones for dense features, heads, and local weight loading."""

from densessl.models.backbones import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    Backbone,
    CRWResNet,
    PixelsLab,
    TimmCNN,
    TimmViT,
    create_backbone,
    list_backbones,
)
from densessl.models.weights import LoadReport, load_weights, read_state_dict

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Backbone",
    "CRWResNet",
    "LoadReport",
    "PixelsLab",
    "TimmCNN",
    "TimmViT",
    "create_backbone",
    "list_backbones",
    "load_weights",
    "read_state_dict",
]
