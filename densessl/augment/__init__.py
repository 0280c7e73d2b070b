"""Batched augmentation on the training device (Kornia / roi_align), inputs in [0, 1]."""

from densessl.augment.boxes import crop_and_resize, grid_boxes, random_resized_boxes
from densessl.augment.crw import CRWAugment, CRWViews, clip_to_float

__all__ = ["CRWAugment", "CRWViews", "clip_to_float", "crop_and_resize", "grid_boxes", "random_resized_boxes"]
