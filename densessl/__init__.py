"""densessl: self-supervised learning for video and dense prediction."""

__version__ = "0.1.0"
