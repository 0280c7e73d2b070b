"""The frame of a training job: processes, run folder, seeding, fitting and the closing summary."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Sequence

from densessl.engine.distributed import DistInfo, barrier, cleanup_distributed, init_distributed
from densessl.engine.seed import seed_everything
from densessl.engine.trainer import FitResult, TrainConfig, Trainer, prepare_run_dir


def run_training_job(
    cfg: TrainConfig,
    make_trainer: Callable[[DistInfo, Path], Trainer],
    log: logging.Logger,
    resume: bool = False,
    overwrite: bool = False,
    summary_keys: Sequence[str] = ("loss",),
) -> FitResult | None:
    """Start the processes, prepare ``runs/<name>``, seed (identical initial weights on every
    rank), build the trainer with ``make_trainer(dist, run_dir)``, fit, and log how it ended.

    Returns the :class:`FitResult` on the main rank, None on the others.
    """
    job_start = time.monotonic()  # a time budget counts the setup too: it means wall time
    dist = init_distributed(cfg.device)
    try:
        logging.basicConfig(level=logging.INFO if dist.is_main else logging.WARNING, format="%(message)s")
        run_dir = prepare_run_dir(cfg, resume=resume, overwrite=overwrite)
        barrier()
        seed_everything(cfg.seed, 0)
        trainer = make_trainer(dist, run_dir)
        trainer.session_start = job_start
        result = trainer.fit(resume=resume)
        if not dist.is_main:
            return None
        summary = ", ".join(f"{k} {v:.4g}" for k, v in result.train_metrics.items() if k in summary_keys)
        planned = "" if result.total_steps is None else f"/{result.total_steps}"
        log.info("stopped at step %d%s (%s) %s", result.step, planned, result.reason, summary)
        if result.eval_metrics:
            log.info("eval: %s", ", ".join(f"{k} {v:.4f}" for k, v in result.eval_metrics.items()))
        return result
    finally:
        cleanup_distributed()
