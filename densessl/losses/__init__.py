"""Losses: one small module per loss."""

from densessl.losses.random_walk import RandomWalkLoss, WalkOutput, chance_loss

__all__ = ["RandomWalkLoss", "WalkOutput", "chance_loss"]
