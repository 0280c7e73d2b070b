"""Synthetic DAVIS-style videos with exact object masks and ground-truth optical flow.

Every sequence is a stack of layers: a textured background seen by a panning, zooming and
slightly rotating camera, and 1–K textured, blob-shaped (non-convex) objects in a fixed depth
order that translate, bounce partly out of the frame, rotate, change scale, stretch and deform
non-rigidly, and occlude one another. Textures come from a small per-sequence bank of procedural
textures shared by the background and the objects, so raw-pixel matching is ambiguous.
Illumination changes, blur and sensor noise are applied on top.

Everything is deterministic given ``(seed, sequence index)``, independent of the number of
sequences and of the number of worker processes.

Modules: :mod:`.config` (settings), :mod:`.textures`, :mod:`.scene` (layers, their motion and
the geometry), :mod:`.render` (frames, masks and exact flow), :mod:`.photometric`,
:mod:`.generate` (one sequence in memory) and :mod:`.write` (a set on disk).
"""

from densessl.datasets.synthetic.config import (
    SyntheticConfig,
    SyntheticSequence,
    sequence_name,
    split_names,
)
from densessl.datasets.synthetic.generate import generate_sequence
from densessl.datasets.synthetic.write import RESOLUTION_FOLDER, write_synthetic_davis

__all__ = [
    "RESOLUTION_FOLDER",
    "SyntheticConfig",
    "SyntheticSequence",
    "generate_sequence",
    "sequence_name",
    "split_names",
    "write_synthetic_davis",
]
