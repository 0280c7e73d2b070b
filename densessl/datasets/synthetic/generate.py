"""Generating one sequence in memory, deterministically from ``(seed, sequence index)``."""

from __future__ import annotations

from typing import Iterator

import numpy as np

from densessl.datasets.synthetic.config import SyntheticConfig, SyntheticSequence, sequence_name
from densessl.datasets.synthetic.photometric import apply_photometric, photometric_params
from densessl.datasets.synthetic.render import FrameOutput, render_frame
from densessl.datasets.synthetic.scene import build_scene
from densessl.errors import InputError


def sequence_rngs(
    config: SyntheticConfig, index: int
) -> tuple[np.random.Generator, np.random.Generator]:
    """Independent geometry and photometric random streams: switching the photometric effects
    off leaves the geometry unchanged."""
    seq = np.random.SeedSequence([config.seed, index])
    geometry, photometric = seq.spawn(2)
    return np.random.default_rng(geometry), np.random.default_rng(photometric)


def iter_frames(
    config: SyntheticConfig, index: int, with_flow: bool, photometric: bool
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray | None, FrameOutput]]:
    """Yield (BGR uint8 frame, ids, flow to the next frame or None, raw output) per frame.

    Textures are drawn with random colours, so their channel order is arbitrary: rendering
    treats them as BGR, which OpenCV writes without a conversion.
    """
    scene = build_scene(config, sequence_rngs(config, index)[0])
    effects = photometric_params(sequence_rngs(config, index)[1], config) if photometric else None
    for t in range(config.num_frames):
        out = render_frame(scene, t, config.height, config.width, with_flow)
        if effects is None:
            frame = np.clip(out.image + 0.5, 0, 255).astype(np.uint8)
        else:
            frame = apply_photometric(out.image, effects, t)
        yield frame, out.ids, out.flow, out


def generate_sequence(
    config: SyntheticConfig,
    index: int,
    *,
    with_flow: bool | None = None,
    photometric: bool = True,
) -> SyntheticSequence:
    """Generate sequence ``index`` in memory.

    Args:
        config: the set's settings (frame size, frame count, object counts, seed).
        index: sequence number; the content depends only on ``(config.seed, index)`` and sizes.
        with_flow: compute ground-truth flow (default: ``config.write_flow``).
        photometric: apply illumination change, blur and noise (False gives the clean render,
            which the flow describes exactly).

    Returns:
        A :class:`SyntheticSequence` (frames ``T×H×W×3``, masks ``T×H×W``, flows
        ``(T−1)×H×W×2`` or None).
    """
    config.validate()
    if index < 0:
        raise InputError(f"sequence index must be ≥ 0, got {index}", "index")
    with_flow = config.write_flow if with_flow is None else with_flow
    frames, masks, flows, stats = [], [], [], []
    for frame, ids, flow, out in iter_frames(config, index, with_flow, photometric):
        frames.append(frame[..., ::-1])  # BGR → RGB
        masks.append(ids)
        if flow is not None:
            flows.append(flow)
        stats.append((out.amodal, out.in_frame, out.visible))
    amodal, in_frame, visible = (np.stack(s) for s in zip(*stats))
    return SyntheticSequence(
        name=sequence_name(index),
        frames=np.stack(frames),
        masks=np.stack(masks),
        flows=np.stack(flows) if with_flow else None,
        num_objects=int(amodal.shape[1]),
        amodal_area=amodal,
        in_frame_area=in_frame,
        visible_area=visible,
    )
