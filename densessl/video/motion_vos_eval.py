"""Predict a foreground mask for every frame of DAVIS-style sequences and score them.

A frame's prediction averages the oriented probabilities of every gap with cached flow (and of
the mirrored input with ``flip``); :func:`smooth_over_time` optionally averages each frame's map
with its neighbours' maps, warped into it by the flow. Scores follow the DAVIS-2016 unsupervised
protocol (one merged foreground per frame, J and F per sequence, first and last frames not
scored). Nothing here looks at the ground truth before the masks are final.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from densessl.datasets.davis import VOID_ID, DavisDataset, DavisSequence
from densessl.datasets.flow_cache import find_flow, flow_path, gap_folder, read_frame_flow
from densessl.errors import InputError
from densessl.eval.davis_metrics import DavisScores, evaluate_sequence_masks
from densessl.video.motion_vos import (
    MotionVOSModel, camera_compensated_foreground, flow_magnitude_foreground, frame_inputs, predict_foreground,
)
from densessl.video.optical_flow import warp_by_flow


@dataclass
class MotionPredictConfig:
    size: tuple[int, int] = (192, 384)  # network input (height, width)
    gaps: tuple[int, ...] = (1, -1, 2, -2)
    flip: bool = False  # average with the mirrored prediction
    threshold: float = 0.5


FramePredictor = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (image, flow) -> H×W probability


def model_predictor(model: MotionVOSModel, config: MotionPredictConfig, device: torch.device | str) -> FramePredictor:
    """Frame predictor of a trained model (put in eval mode here)."""
    model.eval()
    return lambda image, flow: predict_foreground(model, image, flow, tuple(config.size), config.flip, device)


BASELINES = ("flow-magnitude", "camera-compensated")


def baseline_predictor(name: str) -> FramePredictor:
    """``flow-magnitude`` (Otsu on |flow|) or ``camera-compensated`` (Otsu on the residual of a
    robust quadratic camera-motion fit); both border-oriented."""
    if name == "flow-magnitude":
        return lambda image, flow: flow_magnitude_foreground(flow)
    if name == "camera-compensated":
        return lambda image, flow: camera_compensated_foreground(flow)
    raise ValueError(f"baseline must be one of {', '.join(BASELINES)}, got {name!r}")


def predict_sequence(
    sequence: DavisSequence,
    flow_root: str | os.PathLike,
    predictor: FramePredictor,
    gaps: Sequence[int] = (1, -1, 2, -2),
) -> np.ndarray:
    """``T×H×W`` float32 foreground probabilities, averaged over the gaps with cached flow."""
    height, width = sequence.size
    probs = np.zeros((sequence.num_frames, height, width), dtype=np.float32)
    names = sequence.frame_names
    for t in range(sequence.num_frames):
        image = sequence.frame(t)
        predictions = []
        for gap in gaps:
            path = find_flow(flow_root, gap, sequence.name, names[t])
            if path is not None:
                predictions.append(predictor(image, read_frame_flow(path, (height, width))))
        if not predictions:
            raise InputError(
                f"no cached flow for frame {names[t]} of '{sequence.name}' with gaps "
                f"{', '.join(gap_folder(g) for g in gaps)}",
                flow_path(flow_root, gaps[0], sequence.name, names[t]),
            )
        probs[t] = np.mean(predictions, axis=0)
    return probs


def smooth_over_time(
    sequence: DavisSequence,
    probs: np.ndarray,
    flow_root: str | os.PathLike,
    gaps: Sequence[int] = (1, -1, 2, -2),
) -> np.ndarray:
    """Flow-guided temporal smoothing of ``T×H×W`` foreground probabilities.

    Frame t's map is averaged, with equal weights, with the maps of frames t+g brought into frame
    t by the cached flow t → t+g (:func:`warp_by_flow`), for every gap g whose flow is cached and
    whose frame exists; near the ends of a sequence fewer maps are averaged. Uses nothing but the
    predictions and the flow.
    """
    if probs.ndim != 3 or probs.shape[0] != sequence.num_frames:
        raise ValueError(f"probs must be T×H×W with T = {sequence.num_frames}, got {probs.shape}")
    names = sequence.frame_names
    smoothed = np.empty_like(probs, dtype=np.float32)
    for t in range(sequence.num_frames):
        total, count = probs[t].astype(np.float32), 1
        for gap in gaps:
            if not 0 <= t + gap < sequence.num_frames:
                continue
            path = find_flow(flow_root, gap, sequence.name, names[t])
            if path is None:
                continue
            total = total + warp_by_flow(probs[t + gap], read_frame_flow(path, probs.shape[1:]))
            count += 1
        smoothed[t] = total / count
    return smoothed


def score_sequence(sequence: DavisSequence, masks: np.ndarray) -> list:
    """DAVIS-2016 unsupervised scores of ``T×H×W`` binary masks (merged foreground)."""
    return evaluate_sequence_masks(
        sequence.masks(require_all=True), masks.astype(np.uint8), sequence=sequence.name, task="unsupervised",
        year=2016 if sequence.year == 2016 else 2017, frame_names=sequence.frame_names,
    )


def evaluate_predictor(
    dataset: DavisDataset | Iterable[DavisSequence],
    flow_root: str | os.PathLike,
    predictor: FramePredictor,
    config: MotionPredictConfig,
    on_sequence: Callable[[DavisSequence, np.ndarray], None] | None = None,
    progress: bool = False,
) -> DavisScores:
    """Predict and score every sequence; ``on_sequence(sequence, probabilities)`` sees each result."""
    from tqdm import tqdm

    objects = []
    sequences = list(dataset)
    for sequence in tqdm(sequences, desc="motion VOS", unit="seq", disable=not progress):
        probs = predict_sequence(sequence, flow_root, predictor, config.gaps)
        if on_sequence is not None:
            on_sequence(sequence, probs)
        objects.extend(score_sequence(sequence, probs > config.threshold))
    return DavisScores(objects)


OBJECTIVE_SOURCES = ("model", "model, thresholded", *BASELINES, "ground truth")


@dataclass
class ObjectiveRow:
    """The CIS objective of one source of masks, averaged over frames."""

    source: str
    frames: int
    ratio_in: float  # E(m) / D(m): the inpainter's error inside the mask, relative to the image alone
    ratio_out: float  # E(1−m) / D(1−m): the same for the complement
    generator_loss: float  # what the generator minimises (ratios capped at 1 when the model caps)
    at_least_one_in: float  # fraction of frames with E(m) / D(m) ≥ 1: with the cap, no gradient on that side
    at_least_one_out: float  # the same for the complement


def frames_with_flow(
    sequence: DavisSequence, flow_root: str | os.PathLike, gap: int
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """``(t, frame, flow)`` for every frame of ``sequence`` with cached flow at ``gap``: the
    ``H×W×3`` uint8 RGB frame and its ``H×W×2`` flow in pixels at the frame's size."""
    for t, name in enumerate(sequence.frame_names):
        path = find_flow(flow_root, gap, sequence.name, name)
        if path is not None:
            yield t, sequence.frame(t), read_frame_flow(path, sequence.size)


def _downsample_mask(mask: np.ndarray, size: tuple[int, int], device: torch.device | str) -> torch.Tensor:
    """``H×W`` {0, 1} → ``1×1×h×w`` {0, 1} (majority of each cell)."""
    import torch.nn.functional as F

    full = torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)).to(device)[None, None]
    return (F.interpolate(full, size=size, mode="area") > 0.5).float()


@torch.no_grad()
def objective_report(
    model: MotionVOSModel,
    sequences: Iterable[DavisSequence],
    flow_root: str | os.PathLike,
    size: tuple[int, int],
    gap: int = 1,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> list[ObjectiveRow]:
    """How the model's own masks fare under its own objective, against other masks.

    For every frame with cached flow at ``gap``, the CIS terms (:meth:`MotionVOSModel.terms`, the
    model's inpainter, ε and cap; BatchNorm in eval mode) of the masks of each source in
    :data:`OBJECTIVE_SOURCES`: the model's soft masks (what its generator is trained on) and the
    same thresholded at 0.5, the two flow baselines, and the annotation where a frame has one. A
    source with a *lower* generator loss than the model's own masks is a better answer to the
    objective that the generator did not find; a source that is worse on the objective but better
    on J points at the objective instead. Masks are compared at the networks' resolution. Each
    row also counts the frames whose ratio reaches 1 on each side: with ``cap_ratio`` that side's
    term is flat there, and gives the generator no gradient.
    """
    from tqdm import tqdm

    model = model.eval().to(device)
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    sequences = list(sequences)
    for sequence in tqdm(sequences, desc="CIS objective", unit="seq", disable=not progress):
        for t, frame, flow in frames_with_flow(sequence, flow_root, gap):
            image, net_flow = model.normalize(*frame_inputs(frame, flow, size, device))
            net_size = tuple(net_flow.shape[-2:])
            soft = model.inference_generator.mask(model.inference_generator(image, net_flow)).float()
            masks = {"model": soft, "model, thresholded": (soft > 0.5).float()}
            for baseline in BASELINES:
                masks[baseline] = _downsample_mask(baseline_predictor(baseline)(frame, flow), net_size, device)
            if sequence.has_mask(t):
                ids = sequence.mask(t)
                masks["ground truth"] = _downsample_mask((ids != 0) & (ids != VOID_ID), net_size, device)
            stacked = torch.cat(list(masks.values()))
            k = stacked.shape[0]
            terms = model.terms(image.expand(k, -1, -1, -1), net_flow.expand(k, -1, -1, -1), stacked)
            ratio_in, ratio_out = terms.error_in / terms.denom_in, terms.error_out / terms.denom_out
            values = torch.stack([ratio_in, ratio_out, terms.generator_losses, (ratio_in >= 1).float(),
                                  (ratio_out >= 1).float()], dim=1).cpu().double().numpy()
            for source, row in zip(masks, values):
                sums[source] = sums.get(source, 0.0) + row
                counts[source] = counts.get(source, 0) + 1
    if not counts:
        raise InputError(f"no cached flow with gap {gap_folder(gap)} for any frame", Path(flow_root))
    return [ObjectiveRow(source, counts[source], *(float(v) / counts[source] for v in sums[source]))
            for source in OBJECTIVE_SOURCES if source in counts]


def objective_table(rows: Sequence[ObjectiveRow]) -> str:
    """Markdown table of :func:`objective_report`'s rows."""
    lines = ["| masks | frames | E/D inside | E/D outside | generator loss | E/D ≥ 1 inside | E/D ≥ 1 outside |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r.source} | {r.frames} | {r.ratio_in:.3f} | {r.ratio_out:.3f} | {r.generator_loss:.3f} | "
              f"{r.at_least_one_in:.0%} | {r.at_least_one_out:.0%} |" for r in rows]
    return "\n".join(lines)


@dataclass
class DescentConfig:
    """:func:`descend_generator`'s settings (those of a generator step in training by default)."""

    steps: int = 500
    lr: float = 1e-4
    batch_size: int = 8
    grad_clip: float = 0.2  # global gradient norm
    seed: int = 0
    # the objective descended: None, the model's own; True, the thresholded masks' terms
    # (straight-through, ``hard_weights``); False, the soft masks' terms
    hard_weights: bool | None = None


@dataclass
class DescentResult:
    model: MotionVOSModel  # a copy: the checkpoint's inpainter, the generator after the descent
    losses: list[float]  # the generator loss of each step's batch, before the step
    frames: int  # frames descended on (those with cached flow at the gap)


def descend_generator(
    model: MotionVOSModel,
    sequences: Iterable[DavisSequence],
    flow_root: str | os.PathLike,
    size: tuple[int, int],
    gap: int = 1,
    config: DescentConfig | None = None,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> DescentResult:
    """Train a copy of the generator alone against the model's inpainter, frozen.

    A diagnostic that separates the two ways a CIS generator can miss better answers to its own
    objective (:func:`objective_report`): if, with the inpainter held fixed, the generator
    descends to the loss of a better source (the annotations, a baseline), what kept it from them
    in training was the game (the inpainter adapting to its masks); if it does not descend, it is
    the generator's own optimisation; if it descends past them to masks that are not the objects,
    the objective under that inpainter does not single the objects out. The copy's generator
    minimises exactly the objective the report scores: the generator loss of
    :meth:`MotionVOSModel.terms` with both networks in eval mode
    (BatchNorm with its running statistics), the inpainter's weights unchanged, on the frames with
    cached flow at ``gap`` resized to ``size`` (no augmentation; no annotation is read), Adam and
    gradient clipping as in training; ``config.hard_weights`` can swap the soft masks' terms for
    the thresholded masks' (the returned model keeps its own setting).
    :attr:`MotionVOSModel.inference_generator` is the one trained, so with a moving average it is
    the average that descends. ``model`` itself is not changed.
    """
    import copy

    from tqdm import tqdm

    config = config or DescentConfig()
    if config.steps < 1 or config.batch_size < 1 or config.lr <= 0 or config.grad_clip <= 0:
        raise InputError(f"descent steps, batch size, lr and grad_clip must be positive, got {config}")
    model = copy.deepcopy(model).eval().to(device)
    own_hard_weights = model.config.hard_weights
    if config.hard_weights is not None:
        model.config.hard_weights = config.hard_weights
    generator = model.inference_generator
    model.requires_grad_(False)
    generator.requires_grad_(True)
    images, flows = [], []
    for sequence in sequences:
        for _, frame, flow in frames_with_flow(sequence, flow_root, gap):
            image, net_flow = model.normalize(*frame_inputs(frame, flow, size, device))
            images.append(image)
            flows.append(net_flow)
    if not images:
        raise InputError(f"no cached flow with gap {gap_folder(gap)} for any frame", Path(flow_root))
    images, flows = torch.cat(images), torch.cat(flows)
    optimizer = torch.optim.Adam(generator.parameters(), lr=config.lr)
    shuffler = torch.Generator().manual_seed(config.seed)
    batch_size = min(config.batch_size, len(images))
    batches: list[Tensor] = []
    losses = []
    for _ in tqdm(range(config.steps), desc="generator descent", unit="step", disable=not progress):
        if not batches:  # a new epoch in a new order; its last, incomplete batch is dropped
            order = torch.randperm(len(images), generator=shuffler)
            batches = list(order[: len(order) // batch_size * batch_size].split(batch_size))
        batch = batches.pop(0).to(images.device)
        image, flow = images[batch], flows[batch]
        loss = model.terms(image, flow, generator.mask(generator(image, flow))).generator_loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(generator.parameters(), config.grad_clip)
        optimizer.step()
        losses.append(float(loss.detach()))
    model.requires_grad_(True)
    model.config.hard_weights = own_hard_weights
    return DescentResult(model.eval(), losses, len(images))


GENERATOR_CHOICES = ("average", "trained")


def load_motion_vos(
    path: str | os.PathLike, map_location: str | torch.device = "cpu", generator: str = "average"
) -> MotionVOSModel:
    """A model from an exported ``motion_vos.pt`` or a training checkpoint ``last.pt``.

    ``generator``: which weights predict when the checkpoint holds a moving average of the
    generator (``model.generator_ema``): ``average`` (the default) or ``trained``, the weights as
    trained. Without an average both are the trained weights.
    """
    if generator not in GENERATOR_CHOICES:
        raise InputError(f"generator must be one of {', '.join(GENERATOR_CHOICES)}, got {generator!r}")
    from densessl.engine.config import from_dict
    from densessl.engine.checkpoint import load_checkpoint
    from densessl.video.motion_vos import MotionVOSNetConfig

    path = Path(path)
    if not path.is_file():
        raise InputError("checkpoint not found", path)
    state = load_checkpoint(path, map_location=map_location)
    if "net_config" in state and "state_dict" in state:
        net_config, weights = state["net_config"], state["state_dict"]
    elif "model" in state and isinstance(state.get("config"), dict) and "model" in state["config"]:
        net_config, weights = state["config"]["model"], state["model"]
    else:
        raise InputError("not a motion VOS checkpoint (expected motion_vos.pt or a training last.pt)", path)
    model = MotionVOSModel(from_dict(MotionVOSNetConfig, net_config, prefix="model"))
    try:
        model.load_state_dict(weights)
    except RuntimeError as error:
        raise InputError(f"weights do not fit the stored network config: {error}", path) from error
    if generator == "trained":
        model.generator_ema = None
    return model.eval()
