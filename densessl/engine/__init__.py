"""The one training loop: DDP (torchrun), AMP, checkpoint/resume, logging, seeding, configs."""

from densessl.engine.checkpoint import load_checkpoint, save_checkpoint
from densessl.engine.config import apply_overrides, from_dict, load_config, save_config, to_dict
from densessl.engine.distributed import DistInfo, cleanup_distributed, init_distributed
from densessl.engine.schedules import cosine_schedule, lr_factor
from densessl.engine.seed import capture_rng_state, restore_rng_state, seed_everything
from densessl.engine.trainer import FitResult, TrainConfig, Trainer, prepare_run_dir

__all__ = [
    "DistInfo", "FitResult", "TrainConfig", "Trainer", "apply_overrides", "capture_rng_state",
    "cleanup_distributed", "cosine_schedule", "from_dict", "init_distributed", "load_checkpoint",
    "load_config", "lr_factor", "prepare_run_dir", "restore_rng_state", "save_checkpoint",
    "save_config", "seed_everything", "to_dict",
]
