"""Train a contrastive random walk (CRW) model on unlabelled video.

``python tools/train_crw.py --config configs/crw.yaml [key=value ...] [--resume | --overwrite]``;
multi-GPU / multi-process with ``torchrun --nproc_per_node N tools/train_crw.py ...``.
The defaults are the paper's recipe (ResNet-18, 7×7 patches of 64×64 in 256×256 frames,
τ 0.05, edge dropout 0.1, clips of 4 frames at 8 fps, batch 20, Adam 1e-4, ×0.3 at 80%).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from densessl.engine.evaluation import DavisEvalConfig, layer_copy, make_davis_evaluator
from densessl.engine.distributed import barrier
from densessl.engine.job import run_training_job
from densessl.engine.trainer import TrainConfig, Trainer, resolve_channels_last
from densessl.errors import InputError
from densessl.tools._common import training_main

log = logging.getLogger("densessl.train_crw")


@dataclass
class CRWDataConfig:
    videos: str | None = None  # folder tree of video files
    frames: str | None = None  # folder of frame folders, or a text file listing frame folders
    frames_fps: float = 0.0  # frame rate of frame folders (<= 0: taken to be target_fps, every frame used)
    target_fps: float = 8.0  # resample to this rate (<= 0: keep every frame)
    clip_len: int = 4
    clips_per_video: int = 5  # per epoch (<= 0: all)
    clip_stride: int = 1  # spacing of candidate clip starts (resampled frames)
    short_side: int = 256  # CPU resize before batching (0: none)
    cache_dir: str | None = None  # clip index cache (default ~/.cache/densessl)


@dataclass
class CRWModelConfig:
    backbone: str = "resnet18-crw"
    weights: str | None = None  # local file to start from
    out_layer: str = "layer4"  # layer trained (evaluation uses eval.layer of the same weights)
    mode: str = "patch"  # patch | dense | roi
    embed_dim: int = 128
    head_depth: int = 0
    temperature: float = 0.05
    edge_dropout: float = 0.1
    min_cycle: int = 2  # shortest palindrome 0→…→k→…→0


@dataclass
class CRWAugmentConfig:
    frame_size: int = 256
    crop_scale: tuple[float, float] = (0.8, 0.95)
    crop_ratio: tuple[float, float] = (0.7, 1.3)
    patch_size: int = 64
    patch_stride: int = 32
    patch_scale: tuple[float, float] = (0.7, 0.9)
    patch_ratio: tuple[float, float] = (0.7, 1.3)
    color_jitter: float = 0.0
    flip: bool = False
    same_crop_on_clip: bool = False


def _default_train() -> TrainConfig:
    return TrainConfig(name="crw", epochs=25, batch_size=20, lr=1e-4, optimizer="adam", schedule="step",
                       milestones=[0.8], gamma=0.3, num_workers=8, amp="auto", channels_last="auto")


@dataclass
class CRWConfig:
    train: TrainConfig = field(default_factory=_default_train)
    data: CRWDataConfig = field(default_factory=CRWDataConfig)
    model: CRWModelConfig = field(default_factory=CRWModelConfig)
    augment: CRWAugmentConfig = field(default_factory=CRWAugmentConfig)
    eval: DavisEvalConfig = field(default_factory=lambda: DavisEvalConfig(every=5000))


def validate(cfg: CRWConfig) -> None:
    """Cross-section checks, naming the keys."""
    from densessl.video.crw import MODES

    if not cfg.data.videos and not cfg.data.frames:
        raise InputError("no training data: set data.videos (folder of videos) or data.frames (frame folders)")
    if cfg.model.mode not in MODES:
        raise InputError(f"model.mode must be one of {', '.join(MODES)}, got {cfg.model.mode!r}")
    if cfg.data.clip_len < cfg.model.min_cycle + 1:
        raise InputError(
            f"data.clip_len={cfg.data.clip_len} is too short for palindromes from frame "
            f"model.min_cycle={cfg.model.min_cycle}: use at least {cfg.model.min_cycle + 1} frames"
        )
    a = cfg.augment
    if a.patch_size > a.frame_size:
        raise InputError(f"augment.patch_size ({a.patch_size}) exceeds augment.frame_size ({a.frame_size})")
    if a.patch_stride < 1:
        raise InputError("augment.patch_stride must be >= 1")


def build_training(
    cfg: CRWConfig, rank: int = 0, world_size: int = 1, progress: bool = True, device: torch.device | None = None
):
    """Dataset, sampler and the training model (augmentation + CRW) of a config, for ``device``
    (default CPU; it decides ``train.channels_last=auto``)."""
    from densessl.augment.crw import CRWAugment
    from densessl.datasets.video import ClipSampler, build_clip_dataset
    from densessl.models.backbones import create_backbone
    from densessl.video.crw import CRW, CRWTrainModel

    d = cfg.data
    if rank == 0 and d.frames and d.frames_fps <= 0 and d.target_fps > 0:
        log.info("frame folders are taken to be at data.target_fps=%g already (every frame is used); "
                 "set data.frames_fps to their rate to resample them", d.target_fps)
    # the main rank builds (and caches) the index first, the others then read the cache
    dataset = None
    for turn in (0, 1):
        if (rank == 0) == (turn == 0):
            dataset = build_clip_dataset(
                videos=d.videos, frames=d.frames, clip_len=d.clip_len,
                target_fps=d.target_fps if d.target_fps > 0 else None, frames_fps=d.frames_fps,
                short_side=d.short_side or None, cache_dir=d.cache_dir, progress=progress and rank == 0,
            )
        barrier()
    sampler = ClipSampler(
        dataset.clip_counts(), clips_per_video=d.clips_per_video, seed=cfg.train.seed,
        rank=rank, world_size=world_size, clip_stride=d.clip_stride,
    )
    m = cfg.model
    backbone = create_backbone(m.backbone, weights=m.weights, out_layer=m.out_layer)
    augment = CRWAugment(**asdict(cfg.augment), with_patches=m.mode == "patch")
    model = CRW(
        backbone, mode=m.mode, embed_dim=m.embed_dim, head_depth=m.head_depth, temperature=m.temperature,
        edge_dropout=m.edge_dropout, min_cycle=m.min_cycle,
        channels_last=resolve_channels_last(cfg.train.channels_last, device or torch.device("cpu")),
    )
    return dataset, sampler, CRWTrainModel(augment, model)


def train(cfg: CRWConfig, resume: bool = False, overwrite: bool = False):
    """Run (or resume) a CRW training job; returns the :class:`FitResult` (None off the main rank)."""
    validate(cfg)

    def make_trainer(dist, run_dir: Path) -> Trainer:
        from densessl.datasets.video import collate_clips

        dataset, sampler, model = build_training(cfg, dist.rank, dist.world_size, cfg.train.progress, dist.device)
        backbone = model.model.backbone
        evaluate = make_davis_evaluator(
            cfg.eval, lambda: layer_copy(backbone, cfg.model.backbone, cfg.eval.layer, dist.device),
            dist.device, run_dir,
        )

        def export(folder: Path) -> None:
            from densessl.engine.checkpoint import save_checkpoint

            save_checkpoint(
                {k: v.detach().cpu() for k, v in backbone.state_dict().items()},
                folder / "backbone.pt",
            )

        picture_clip: list[torch.Tensor] = []  # read at the first picture, then kept

        def draw(step: int) -> None:
            """``walks/step_<N>.png``: the walk on the first clip of the first epoch's plan."""
            from densessl.eval.visualize import save_walk_picture
            from densessl.video.crw import walk_view

            if not picture_clip:
                picture_clip.append(dataset[sampler.plan(0)[0]].to(dist.device))
            view = walk_view(model, picture_clip[0], seed=cfg.train.seed)
            save_walk_picture(
                run_dir / "walks" / f"step_{step:07d}.png", view.frames.numpy(), view.centres.numpy(),
                view.source_of_last.numpy(), view.returns_home.numpy(), title=f"{cfg.train.name}, step {step}",
            )

        trainer = Trainer(
            cfg.train, model, dataset, sampler, dist, run_dir, cfg, collate_fn=collate_clips,
            evaluate=evaluate, eval_every=cfg.eval.every, eval_at_start=cfg.eval.at_start, export=export,
            draw=draw,
        )
        if dist.is_main:
            log.info(
                "%d clips per epoch from %d videos, %d steps per epoch, %s; run folder %s",
                len(sampler.plan(0)), len(dataset), trainer.steps_per_epoch, trainer.describe_length(), run_dir,
            )
        return trainer

    return run_training_job(cfg.train, make_trainer, log, resume, overwrite, summary_keys=("loss", "cycle_acc"))


def main(argv: list[str] | None = None) -> int:
    return training_main(
        argv,
        prog="train_crw",
        description="Train a contrastive random walk model on video (paper recipe by default).",
        epilog="example: tools/train_crw.py --config configs/crw.yaml data.videos=/data/kinetics "
        "eval.davis_root=/data/DAVIS train.name=crw-k400",
        config_class=CRWConfig,
        train=train,
    )


if __name__ == "__main__":  # pragma: no cover
    import sys

    sys.exit(main())
