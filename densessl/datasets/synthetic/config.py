"""Settings of a synthetic set and the in-memory result of one sequence."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from densessl.errors import InputError


@dataclass(frozen=True)
class SyntheticConfig:
    """Settings of a synthetic DAVIS-style set.

    ``num_val`` (when given) overrides ``val_fraction``; ``workers = 0`` uses one process per
    available CPU (at most one per sequence).
    """

    num_sequences: int = 30
    num_frames: int = 60
    height: int = 480
    width: int = 854
    min_objects: int = 1
    max_objects: int = 4
    val_fraction: float = 0.5
    seed: int = 0
    write_flow: bool = True
    write_video: bool = True
    jpeg_quality: int = 95
    fps: float = 24.0
    workers: int = 0
    num_val: int | None = None
    motion_scale: float = 1.0  # scene time between frames: 2.0 doubles every motion per frame
    camera_zoom: float = 1.0  # scale of the camera's zoom and roll amplitudes (0: the camera only pans)
    pan_speed: tuple[float, float] = (0.0, 0.006)  # camera pan speed range, fraction of the diagonal per frame

    def validate(self) -> None:
        """Raise :class:`InputError` naming the first bad setting."""

        def bad(name: str, why: str) -> InputError:
            flag = "--" + name.replace("_", "-")
            return InputError(f"{name} ({flag}) {why}")

        if self.num_sequences < 1:
            raise bad("num_sequences", f"must be at least 1, got {self.num_sequences}")
        if self.num_frames < 2:
            raise bad("num_frames", f"must be at least 2, got {self.num_frames}")
        if self.height < 16 or self.width < 16:
            raise bad("height", f"and width must be at least 16, got {self.height}×{self.width}")
        if self.min_objects < 1:
            raise bad("min_objects", f"must be at least 1, got {self.min_objects}")
        if self.max_objects < self.min_objects:
            raise bad("max_objects", f"must be ≥ min_objects ({self.min_objects}), got "
                      f"{self.max_objects}")
        if self.max_objects > 254:
            raise bad("max_objects", f"must be at most 254 (ids are bytes), got {self.max_objects}")
        if not 0.0 <= self.val_fraction <= 1.0:
            raise bad("val_fraction", f"must lie in [0, 1], got {self.val_fraction}")
        if self.num_val is not None and not 0 <= self.num_val <= self.num_sequences:
            raise bad("num_val", f"must lie in [0, num_sequences], got {self.num_val}")
        if not 1 <= self.jpeg_quality <= 100:
            raise bad("jpeg_quality", f"must lie in [1, 100], got {self.jpeg_quality}")
        if not self.fps > 0:
            raise bad("fps", f"must be positive, got {self.fps}")
        if not self.motion_scale > 0:
            raise bad("motion_scale", f"must be positive, got {self.motion_scale}")
        if not self.camera_zoom >= 0:
            raise bad("camera_zoom", f"must be ≥ 0, got {self.camera_zoom}")
        if len(self.pan_speed) != 2 or not 0 <= self.pan_speed[0] <= self.pan_speed[1]:
            raise bad("pan_speed", f"must be (min, max) with 0 ≤ min ≤ max, got {self.pan_speed}")
        if self.workers < 0:
            raise bad("workers", f"must be ≥ 0 (0 = automatic), got {self.workers}")


@dataclass
class SyntheticSequence:
    """One generated sequence, in memory.

    Attributes:
        name: ``synth-XXX``.
        frames: ``T×H×W×3`` uint8 RGB.
        masks: ``T×H×W`` uint8 object ids (0 background, 1..K objects).
        flows: ``(T−1)×H×W×2`` float32 forward flow ``(dx, dy)`` in pixels from frame t to t+1
            (the motion of whatever is visible at each pixel of frame t), or None.
        num_objects: K.
        amodal_area: ``T×K`` pixels each object covers on the unbounded image plane.
        in_frame_area: ``T×K`` pixels it covers inside the frame, ignoring occlusion.
        visible_area: ``T×K`` pixels where it is visible (equals the mask pixel count).
    """

    name: str
    frames: np.ndarray
    masks: np.ndarray
    flows: np.ndarray | None
    num_objects: int
    amodal_area: np.ndarray
    in_frame_area: np.ndarray
    visible_area: np.ndarray


def sequence_name(index: int) -> str:
    """The name of sequence ``index``: ``synth-000``, ``synth-001``, ..."""
    return f"synth-{index:03d}"


def split_names(config: SyntheticConfig) -> tuple[list[str], list[str]]:
    """(train, val) sequence names: the last ``num_val`` (or ``round(val_fraction·N)``) are val."""
    names = [sequence_name(i) for i in range(config.num_sequences)]
    if config.num_val is not None:
        num_val = config.num_val
    else:
        num_val = int(math.floor(config.val_fraction * config.num_sequences + 0.5))
    return names[: len(names) - num_val], names[len(names) - num_val :]
