"""Train a motion segmentation model (CIS: mask generator + flow inpainter) on cached flow.

``python tools/train_motion_vos.py --config configs/motion_vos.yaml data.davis_root=DAVIS
data.flow_root=FLOWS [key=value ...] [--resume] [--overwrite]``; several GPUs with
``torchrun --nproc_per_node N tools/train_motion_vos.py ...``. Compute the flow first with
``tools/compute_flow.py``. The defaults are the reference recipe (384×192 inputs, batch 16, Adam
1e-4, gradient clipping 0.2, three generator steps per inpainter step, 12.5k steps, trained
transductively on the (unlabelled) frames of DAVIS-2016 trainval) with the two flow normalisations
on (``model.generator_flow_norm``, ``model.inpainter_context=mean``);
``configs/motion_vos_reference.yaml`` turns them off.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from densessl.datasets.motion_pairs import PairAugmentConfig
from densessl.engine.job import run_training_job
from densessl.engine.trainer import TrainConfig, Trainer
from densessl.errors import InputError
from densessl.tools._common import training_main
from densessl.video.motion_vos import MotionVOSNetConfig

log = logging.getLogger("densessl.train_motion_vos")

# A CPU-sized recipe for small synthetic videos (96×128, exact flow, a moving camera), used by the
# demo and the learning test: narrow networks, the two flow normalisations (as in the defaults:
# the reference's flow ÷ (0.208·W) is tiny next to the image channels on slow videos), ε four
# times the reference's (so the generator does not shrink its mask onto the few pixels with the
# highest error ratio), a larger learning rate with cosine decay (the last weights, the ones
# scored, are settled), 600 steps, and the mask logits undivided (mask_temperature 1, not the
# reference's 10): under Adam a step moves the logits by about lr × the head's fan-in ÷ the
# temperature, and with 8-channel heads ÷ 10 left one seed of five with masks below 0.5
# everywhere (J 0.30; 0.64–0.79 on all five with 1; see the README).
# Add the data keys (data.davis_root, data.flow_root, data.year, data.split) and train.out_dir.
SYNTHETIC_CPU_RECIPE: tuple[str, ...] = (
    "data.gaps=[1]",
    "model.generator_widths=[8,16,32]", "model.inpainter_widths=[8,16,32]",
    "model.inpainter_context=mean", "model.generator_flow_norm=true", "model.epsilon_per_element=2e-3",
    "model.mask_temperature=1",
    "augment.size=[96,128]", "augment.min_scale=0.8",
    "train.batch_size=8", "train.lr=1e-3", "train.schedule=cosine", "train.max_steps=600", "train.num_workers=0",
)
# The videos that recipe is for (the learning test, the demo, benchmarks/study_cis_synthetic.py):
# :class:`SyntheticConfig` settings for small slow videos whose camera pans and zooms a little (0.3
# of the default zoom), so that the flow magnitude alone does not single out the objects.
SYNTHETIC_MOTION_SIZE = (96, 128)
SYNTHETIC_MOTION_SCENE = dict(num_frames=8, height=SYNTHETIC_MOTION_SIZE[0], width=SYNTHETIC_MOTION_SIZE[1],
                              min_objects=1, max_objects=2, camera_zoom=0.3, pan_speed=(0.004, 0.01))


def write_synthetic_motion_set(
    root: Path, flows: Path, *, num_sequences: int = 80, num_val: int = 16, seed: int = 0, workers: int = 1
) -> list[str]:
    """The videos of ``SYNTHETIC_MOTION_SCENE`` in the DAVIS-2017 layout under ``root`` (the last
    ``num_val`` are val) and their exact forward flow as the ``+1`` tree of a flow cache under
    ``flows``. The defaults are the learning test's set. Returns the sequence names."""
    from densessl.datasets.synthetic import SyntheticConfig, write_synthetic_davis

    config = SyntheticConfig(num_sequences=num_sequences, num_val=num_val, seed=seed, workers=workers,
                             write_flow=False, write_video=False, **SYNTHETIC_MOTION_SCENE)
    return write_synthetic_davis(root, config, progress=False, flow_root=flows)


@dataclass
class MotionDataConfig:
    davis_root: str | None = None  # DAVIS-style folder (JPEGImages/<resolution>/<seq>/...)
    flow_root: str | None = None  # cached flow: <flow_root>/<gap>/<seq>/<frame>.flo
    year: int = 2016
    split: str = "trainval"
    sequences: list[str] | None = None  # restrict to these sequences
    resolution: str = "480p"
    gaps: list[int] = field(default_factory=lambda: [1, -1, 2, -2])


@dataclass
class MotionEvalConfig:
    """Unsupervised DAVIS evaluation during training (raw masks, scored in memory)."""

    davis_root: str | None = None  # None: no evaluation
    flow_root: str | None = None  # default: data.flow_root
    year: int = 2016
    split: str = "val"
    sequences: list[str] | None = None
    every: int = 0  # steps between evaluations (0: only at the end)
    at_start: bool = False
    flip: bool = False


def _default_train() -> TrainConfig:
    return TrainConfig(
        name="motion_vos", epochs=0, max_steps=12500, batch_size=16, lr=1e-4, optimizer="adam",
        schedule="constant", grad_clip=0.2, num_workers=8, find_unused_parameters=True,
    )


@dataclass
class MotionVOSConfig:
    train: TrainConfig = field(default_factory=_default_train)
    data: MotionDataConfig = field(default_factory=MotionDataConfig)
    model: MotionVOSNetConfig = field(default_factory=MotionVOSNetConfig)
    augment: PairAugmentConfig = field(default_factory=PairAugmentConfig)
    eval: MotionEvalConfig = field(default_factory=MotionEvalConfig)


def validate(cfg: MotionVOSConfig) -> None:
    """Cross-section checks, naming the keys."""
    if not cfg.data.davis_root:
        raise InputError("no training frames: set data.davis_root (a DAVIS-style folder)")
    if not cfg.data.flow_root:
        raise InputError("no cached flow: set data.flow_root (compute it with tools/compute_flow.py)")
    if not cfg.data.gaps or 0 in cfg.data.gaps:
        raise InputError(f"data.gaps must be nonzero frame offsets, got {cfg.data.gaps}")
    cfg.model.validate()
    cfg.augment.validate()


def _davis(root: str, year: int, split: str, sequences: list[str] | None, resolution: str = "480p"):
    from densessl.datasets.davis import DavisDataset

    return DavisDataset(root, year=year, split=split, resolution=resolution, sequences=sequences or None)


def build_training(cfg: MotionVOSConfig, rank: int = 0, world_size: int = 1):
    """Dataset, sampler and the training model of a config."""
    from densessl.datasets.motion_pairs import MotionPairDataset
    from densessl.datasets.video import ClipSampler
    from densessl.video.motion_vos import MotionVOSModel

    d = cfg.data
    davis = _davis(d.davis_root, d.year, d.split, d.sequences, d.resolution)
    dataset = MotionPairDataset(davis, d.flow_root, d.gaps, cfg.augment)
    sampler = ClipSampler(dataset.clip_counts(), clips_per_video=0, seed=cfg.train.seed, rank=rank, world_size=world_size)
    return dataset, sampler, MotionVOSModel(cfg.model)


def make_evaluator(cfg: MotionVOSConfig, model, device: torch.device):
    """``evaluate(step) -> {'J-Mean', 'J-Recall', 'J-Decay', 'F-Mean', ...}`` or None."""
    e = cfg.eval
    if not e.davis_root:
        return None
    from densessl.video.motion_vos_eval import MotionPredictConfig, evaluate_predictor, model_predictor

    davis = _davis(e.davis_root, e.year, e.split, e.sequences, cfg.data.resolution)
    flow_root = e.flow_root or cfg.data.flow_root
    predict = MotionPredictConfig(size=tuple(cfg.augment.size), gaps=tuple(cfg.data.gaps), flip=e.flip)

    def evaluate(step: int) -> dict[str, float]:
        scores = evaluate_predictor(davis, flow_root, model_predictor(model, predict, device), predict)
        return {k: float(v) for k, v in scores.global_row.items()}

    return evaluate


def make_drawer(cfg: MotionVOSConfig, dataset, model, device: torch.device, run_dir: Path, pairs: int = 4):
    """``draw(step)``: ``<run>/masks/step_<N>.png``, the generator's masks and the inpainter's
    reconstructions (:func:`densessl.eval.visualize.save_cis_picture`) on the middle pair of up to
    ``pairs`` sequences spread over the training set, uncropped, at the training size."""
    inputs: list[torch.Tensor] = []

    def draw(step: int) -> None:
        from densessl.datasets.motion_pairs import resize_flow, resize_image
        from densessl.eval.visualize import evenly_spaced, save_cis_picture
        from densessl.video.motion_vos import cis_view

        if not inputs:
            counts = dataset.clip_counts()
            with_pairs = [i for i, count in enumerate(counts) if count > 0]
            chosen = [with_pairs[k] for k in evenly_spaced(len(with_pairs), pairs)]
            size = tuple(cfg.augment.size)
            images, flows = [], []
            for index in chosen:
                image, flow, _ = dataset.load(index, counts[index] // 2)
                images.append(torch.from_numpy(resize_image(image, size)).permute(2, 0, 1).float() / 255)
                flows.append(torch.from_numpy(resize_flow(flow, size)).permute(2, 0, 1))
            inputs.extend([torch.stack(images).to(device), torch.stack(flows).to(device)])
        view = cis_view(model, *inputs)
        save_cis_picture(run_dir / "masks" / f"step_{step:07d}.png", view.images, view.flows, view.masks,
                         view.inpainted, title=f"{cfg.train.name}, step {step}")

    return draw


def export_model(model, cfg: MotionVOSConfig, path: Path) -> None:
    """``motion_vos.pt``: ``{"net_config": ..., "state_dict": ...}`` (read by ``load_motion_vos``)."""
    from densessl.engine.checkpoint import save_checkpoint

    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    save_checkpoint({"net_config": asdict(cfg.model), "state_dict": state}, path)


def train(cfg: MotionVOSConfig, resume: bool = False, overwrite: bool = False):
    """Run (or resume) a training job; returns the :class:`FitResult` (None off the main rank)."""
    validate(cfg)

    def make_trainer(dist, run_dir: Path) -> Trainer:
        dataset, sampler, model = build_training(cfg, dist.rank, dist.world_size)
        trainer = Trainer(
            cfg.train, model, dataset, sampler, dist, run_dir, cfg, evaluate=make_evaluator(cfg, model, dist.device),
            eval_every=cfg.eval.every, eval_at_start=cfg.eval.at_start,
            export=lambda folder: export_model(model, cfg, folder / "motion_vos.pt"),
            draw=make_drawer(cfg, dataset, model, dist.device, run_dir),
        )
        if dist.is_main:
            log.info(
                "%d (frame, flow) pairs from %d sequences, %d steps per epoch, %s; run folder %s",
                len(dataset), len(dataset.sequences), trainer.steps_per_epoch, trainer.describe_length(), run_dir,
            )
        return trainer

    return run_training_job(cfg.train, make_trainer, log, resume, overwrite, summary_keys=("loss", "inpainter_loss"))


def main(argv: list[str] | None = None) -> int:
    return training_main(
        argv,
        prog="train_motion_vos",
        description="Train a CIS motion segmentation model (mask generator + flow inpainter) on cached flow.",
        epilog="example: tools/train_motion_vos.py --config configs/motion_vos.yaml data.davis_root=/data/DAVIS "
        "data.flow_root=/data/DAVIS_flows eval.davis_root=/data/DAVIS train.name=cis",
        config_class=MotionVOSConfig,
        train=train,
    )


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main())
