"""Compiled ops with pure-PyTorch references: the spatial correlation (cost volume)."""

from densessl.ops.correlation import (
    CorrelationConfig,
    SpatialCorrelationSampler,
    correlation_cuda,
    correlation_reference,
    spatial_correlation_sample,
)

__all__ = [
    "CorrelationConfig",
    "SpatialCorrelationSampler",
    "correlation_cuda",
    "correlation_reference",
    "spatial_correlation_sample",
]
