"""The training loop shared by every trainer.

A task gives a model whose ``forward(batch) -> (loss, metrics)`` (augmentation included, on the
device), a dataset with a resumable sampler, and optionally an evaluation callback. The loop
handles DDP, AMP (bf16/fp16), channels_last, ``torch.compile``, gradient clipping, per-step LR
schedules, logging (tqdm, ``log.jsonl``, TensorBoard), periodic evaluation, a time budget, and
checkpoints (``checkpoints/last.pt``, atomic) from which ``resume`` continues exactly: model,
optimizer, scaler, step, sampler position and every rank's RNG states are restored, so on CPU
the resumed loss sequence equals an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import math
import shutil
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from densessl.engine.checkpoint import load_checkpoint, save_checkpoint
from densessl.engine.config import save_config, to_dict
from densessl.engine.distributed import (
    DistInfo, all_reduce_mean, barrier, gather_objects, max_over_ranks,
)
from densessl.engine.runlog import RunLogger, truncate_log, write_run_info
from densessl.engine.schedules import SCHEDULES, lr_factor
from densessl.engine.seed import capture_rng_state, restore_rng_state, seed_everything
from densessl.errors import InputError
from densessl.models.modes import eval_mode

AMP_MODES = ("none", "auto", "bf16", "fp16")
OPTIMIZERS = ("adam", "adamw", "sgd")

log = logging.getLogger("densessl.engine")


@dataclass
class TrainConfig:
    """The ``train`` section of every training config."""

    name: str = "run"  # runs/<name>/
    out_dir: str = "runs"
    seed: int = 0
    epochs: int = 25
    max_steps: int = 0  # > 0: total steps instead of epochs × steps per epoch
    # > 0: time budget (wall time from the job's start), ending with a checkpoint. Without
    # max_steps it sets the run's length (over all sessions; epochs unused) and LR schedules
    # follow the clock; with max_steps it caps each session
    max_minutes: float = 0.0
    stop_after: int = 0  # > 0: end this session after this many steps (resumable), e.g. for tests
    batch_size: int = 20  # global: split evenly across processes
    num_workers: int = 4
    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0  # not applied to biases and norm parameters
    momentum: float = 0.9  # SGD only
    schedule: str = "step"  # constant | step | cosine
    milestones: list[float] = field(default_factory=lambda: [0.8])  # fractions of training
    gamma: float = 0.3
    warmup_steps: int = 0
    final_lr_factor: float = 0.0  # cosine: final lr / base lr
    grad_clip: float = 0.0  # > 0: clip the global gradient norm
    amp: str = "none"  # none | auto (bf16 on CUDA GPUs that support it, else none) | bf16 | fp16
    channels_last: bool | str = False  # true | false | auto (on CUDA devices)
    compile: bool = False
    cudnn_benchmark: bool = True  # CUDA: time the convolution algorithms once per input shape
    sync_bn: bool = False  # SyncBatchNorm under DDP on CUDA
    find_unused_parameters: bool = False  # DDP: some steps leave parameters without gradients
    checkpoint_every: int = 1000
    keep_exports: bool = False  # also keep each checkpoint's exported weights in checkpoints/step_<N>/
    keep_exports_last: int = 0  # with keep_exports: only the newest N of those folders (0: all)
    log_every: int = 20
    pictures: bool = True  # curves.png and the method's own pictures, at each checkpoint and at the end
    device: str = "auto"
    progress: bool = True


@dataclass
class FitResult:
    """How a :meth:`Trainer.fit` session ended."""

    step: int
    total_steps: int | None  # None: the time budget sets the length
    reason: str  # "done" | "time" | "stop_after" | "terminated" | "already_done"
    train_metrics: dict[str, float] = field(default_factory=dict)
    eval_metrics: dict[str, float] = field(default_factory=dict)


class ResumableSampler(Protocol):
    def set_epoch(self, epoch: int) -> None: ...
    def state_dict(self) -> dict[str, int]: ...
    def load_state_dict(self, state: dict[str, int]) -> None: ...
    def __len__(self) -> int: ...
    def __iter__(self) -> Iterator[Any]: ...


class EpochChain:
    """A resumable sampler's epochs one after another, each cut to whole batches, from a start
    (epoch, position) on, without end. One DataLoader iterator over it keeps its workers
    prefetching through epoch boundaries, where a new iterator per epoch would drain and refill
    the pipeline (a stall per epoch, which adds up when epochs are a few steps long)."""

    def __init__(self, sampler: ResumableSampler, samples_per_epoch: int) -> None:
        self.sampler = sampler
        self.samples_per_epoch = samples_per_epoch
        self.epoch = 0
        self.position = 0

    def start(self, epoch: int, position: int) -> None:
        self.epoch, self.position = epoch, position

    def __iter__(self) -> Iterator[Any]:
        epoch, position = self.epoch, self.position
        while True:
            self.sampler.set_epoch(epoch)
            self.sampler.load_state_dict({"epoch": epoch, "position": position})
            yield from itertools.islice(iter(self.sampler), max(0, self.samples_per_epoch - position))
            epoch, position = epoch + 1, 0


def _ignore_sigterm(worker_id: int) -> None:
    """DataLoader workers leave SIGTERM to the main process, which stops after the current step
    and ends them itself (a signal to the whole process group must not kill them first)."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def resolve_amp(amp: str, device: torch.device) -> str:
    """``train.amp`` for a device: ``auto`` is bf16 on a CUDA GPU with bf16 support, else none."""
    if amp != "auto":
        return amp
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "none"


def resolve_channels_last(setting: bool | str, device: torch.device) -> bool:
    """``train.channels_last`` for a device: ``auto`` is on for CUDA devices (tensor-core
    convolutions prefer NHWC), off elsewhere."""
    return device.type == "cuda" if setting == "auto" else bool(setting)


def configure_cudnn(device: torch.device, benchmark: bool) -> None:
    """``train.cudnn_benchmark`` on a CUDA device: let cuDNN time its convolution algorithms for
    each new input shape and keep the fastest (training shapes are fixed, so this happens once).
    Other devices are left alone."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = benchmark


def validate_train_config(cfg: TrainConfig, world_size: int = 1) -> None:
    """Raise InputError for impossible settings, naming the config key."""
    if cfg.optimizer not in OPTIMIZERS:
        raise InputError(f"train.optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")
    if cfg.schedule not in SCHEDULES:
        raise InputError(f"train.schedule must be one of {', '.join(SCHEDULES)}, got {cfg.schedule!r}")
    if cfg.amp not in AMP_MODES:
        raise InputError(f"train.amp must be one of {', '.join(AMP_MODES)}, got {cfg.amp!r}")
    if isinstance(cfg.channels_last, str) and cfg.channels_last != "auto":
        raise InputError(f"train.channels_last must be true, false or auto, got {cfg.channels_last!r}")
    if cfg.batch_size < 1 or cfg.batch_size % world_size:
        raise InputError(f"train.batch_size ({cfg.batch_size}) must be a positive multiple of the {world_size} processes")
    if cfg.lr <= 0:
        raise InputError(f"train.lr must be > 0, got {cfg.lr}")
    if cfg.epochs < 1 and cfg.max_steps < 1:
        raise InputError("set train.epochs or train.max_steps to at least 1")
    if cfg.checkpoint_every < 1 or cfg.log_every < 1:
        raise InputError("train.checkpoint_every and train.log_every must be >= 1")
    if cfg.keep_exports_last < 0:
        raise InputError(f"train.keep_exports_last must be >= 0 (0: keep all), got {cfg.keep_exports_last}")


def prepare_run_dir(cfg: TrainConfig, resume: bool, overwrite: bool = False) -> Path:
    """``<out_dir>/<name>``; refuses to start over an existing run without resume/overwrite."""
    run_dir = Path(cfg.out_dir) / cfg.name
    last = run_dir / "checkpoints" / "last.pt"
    if resume:
        if not last.is_file():
            raise InputError("--resume given but there is no checkpoint to resume from", last)
    elif (run_dir / "log.jsonl").exists() and not overwrite:
        raise InputError(
            "a run with this name exists; use --resume to continue it, --overwrite to start over, "
            "or another train.name",
            run_dir,
        )
    (run_dir / "checkpoints").mkdir(parents=True, exist_ok=True)
    return run_dir


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    """Adam / AdamW / SGD; weight decay only on parameters with more than one dimension."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            (decay if param.ndim > 1 else no_decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=cfg.lr)
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum)


class MetricWindow:
    """Sums of the scalar metrics of the steps since the last log line, kept where they are made.

    A metric that is a tensor on an accelerator is summed there: adding it only queues
    work. Host values (floats such as the lr, CPU tensors) are summed on the host. Moving a host
    tensor to a CUDA device from pageable memory waits for the GPU to finish everything queued,
    which, once per step, would take away the overlap of the host's kernel launches with the GPU.
    """

    def __init__(self) -> None:
        self.device_sums: dict[str, Tensor] = {}
        self.host_sums: dict[str, float] = {}
        self.steps = 0

    def add(self, metrics: dict[str, Tensor | float]) -> None:
        for key, value in metrics.items():
            if isinstance(value, Tensor) and value.device.type != "cpu":
                value = value.detach().float()
                self.device_sums[key] = self.device_sums[key] + value if key in self.device_sums else value
            else:
                self.host_sums[key] = self.host_sums.get(key, 0.0) + float(value)
        self.steps += 1

    def means(self) -> dict[str, float]:
        """Per-step means of every metric (one device-to-host transfer for all device sums)."""
        values = {k: v / self.steps for k, v in self.host_sums.items()}
        if self.device_sums:
            keys = list(self.device_sums)
            sums = torch.stack([self.device_sums[k].reshape(()) for k in keys]).tolist()
            values.update({k: v / self.steps for k, v in zip(keys, sums)})
        return values


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, dict):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch


class Trainer:
    """Runs ``model`` over ``dataset`` according to ``cfg``.

    Args:
        model: ``forward(batch) -> (loss, metrics)``; metrics are scalar tensors (detached).
            A model with an ``after_optimizer_step()`` method has it called after every
            optimizer step (moving averages of weights, momentum encoders).
        dataset, sampler, collate_fn: the data; the sampler yields this rank's keys and is
            resumable (``set_epoch``, ``state_dict``, ``load_state_dict``).
        dist: this process (see :func:`densessl.engine.distributed.init_distributed`).
        run_dir: from :func:`prepare_run_dir`.
        resolved_config: the whole config, saved as ``config.yaml`` and in checkpoints.
        evaluate: ``evaluate(step) -> metrics``, run on the main rank every ``eval_every``
            steps and at the end (``eval_at_start``: also before training).
        export: ``export(folder)`` writes the model's weights for use elsewhere (e.g. the
            backbone) into ``folder``; on the main rank after each checkpoint, into
            ``<run>/checkpoints/`` and, with ``cfg.keep_exports``, ``<run>/checkpoints/step_<N>/``.
        draw: ``draw(step)`` writes the method's pictures of the model into the run folder; on
            the main rank after each checkpoint, with ``cfg.pictures``. It must leave the model's
            mode and the global RNG states as it found them.
    """

    def __init__(
        self,
        cfg: TrainConfig,
        model: nn.Module,
        dataset: Dataset,
        sampler: ResumableSampler,
        dist: DistInfo,
        run_dir: Path,
        resolved_config: Any,
        collate_fn: Callable | None = None,
        evaluate: Callable[[int], dict[str, float]] | None = None,
        eval_every: int = 0,
        eval_at_start: bool = False,
        export: Callable[[Path], None] | None = None,
        draw: Callable[[int], None] | None = None,
    ) -> None:
        validate_train_config(cfg, dist.world_size)
        self.cfg = cfg
        self.dist = dist
        self.device = dist.device
        self.run_dir = Path(run_dir)
        self.resolved_config = to_dict(resolved_config)
        self.evaluate = evaluate
        self.eval_every = eval_every
        self.eval_at_start = eval_at_start
        self.export = export
        self.draw = draw
        self.per_rank_batch = cfg.batch_size // dist.world_size

        if cfg.sync_bn and dist.distributed and self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        configure_cudnn(self.device, cfg.cudnn_benchmark)
        self.model = model.to(self.device)
        if resolve_channels_last(cfg.channels_last, self.device):
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, cfg)
        for group in self.optimizer.param_groups:
            group["base_lr"] = group["lr"]
        self.amp = resolve_amp(cfg.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        train_model: nn.Module = self.model
        if dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            train_model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=ids, find_unused_parameters=cfg.find_unused_parameters
            )
        if cfg.compile:
            train_model = torch.compile(train_model)
        self.train_model = train_model

        self.steps_per_epoch = len(sampler) // self.per_rank_batch
        self.epoch_chain = EpochChain(sampler, self.steps_per_epoch * self.per_rank_batch)
        self.loader_generator = torch.Generator()
        self.loader = DataLoader(
            dataset,
            batch_size=self.per_rank_batch,
            sampler=self.epoch_chain,
            num_workers=cfg.num_workers,
            collate_fn=collate_fn,
            pin_memory=self.device.type == "cuda",
            drop_last=True,
            generator=self.loader_generator,
            persistent_workers=cfg.num_workers > 0,
            worker_init_fn=_ignore_sigterm,
        )
        if self.steps_per_epoch < 1:
            raise InputError(
                f"the data gives {len(sampler)} samples per process per epoch, fewer than one batch of "
                f"{self.per_rank_batch}: lower train.batch_size or add data"
            )
        # None: a time budget without max_steps, where the clock sets the length and the schedule
        self.total_steps: int | None = (
            cfg.max_steps if cfg.max_steps > 0
            else None if cfg.max_minutes > 0
            else cfg.epochs * self.steps_per_epoch
        )
        self.budget_s = cfg.max_minutes * 60
        self.clock: Callable[[], float] = time.monotonic
        self.earlier_sessions_s = 0.0  # training time of the sessions before a resume
        # when this session's clock started (default: its first step); jobs set it to their own
        # start, so that a time budget covers the setup too and means wall time
        self.session_start: float | None = None
        self._elapsed_all_ranks = 0.0  # elapsed_s() of the slowest rank at the last step's end
        self._terminate_requested = False
        self.step = 0
        self.epoch = 0
        self.batch_in_epoch = 0
        self.logger: RunLogger | None = None

    # ----------------------------------------------------------------------------- state
    @property
    def checkpoint_path(self) -> Path:
        return self.run_dir / "checkpoints" / "last.pt"

    def state_dict(self, rng_states: list[Any]) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {"step": self.step, "total_steps": self.total_steps},
            "elapsed_s": self.elapsed_s(),
            "scaler": self.scaler.state_dict(),
            "step": self.step,
            "epoch": self.epoch,
            "sampler": {"epoch": self.epoch, "position": self.batch_in_epoch * self.per_rank_batch},
            "rng": rng_states,
            "world_size": self.dist.world_size,
            "config": self.resolved_config,
        }

    def save(self) -> None:
        """Checkpoint (collective: every rank must call it at the same step)."""
        rng_states = gather_objects(capture_rng_state())
        if self.dist.is_main:
            save_checkpoint(self.state_dict(rng_states), self.checkpoint_path)
            if self.export is not None:
                self.export(self.run_dir / "checkpoints")
                if self.cfg.keep_exports:
                    self.export(self.run_dir / "checkpoints" / f"step_{self.step:07d}")
                    if self.cfg.keep_exports_last > 0:
                        kept = sorted(p for p in (self.run_dir / "checkpoints").glob("step_*")
                                      if p.is_dir() and p.name[5:].isdigit())
                        for stale in kept[: -self.cfg.keep_exports_last]:
                            shutil.rmtree(stale)
            self.save_pictures(of_model=True)
        barrier()

    def save_pictures(self, of_model: bool) -> None:
        """``<run>/curves.png`` (the log's metrics against the step) and, with ``of_model``, the
        method's pictures (``draw``), on the main rank with ``cfg.pictures``. A picture that cannot
        be drawn is reported and does not stop training."""
        if not self.dist.is_main or not self.cfg.pictures:
            return
        from densessl.eval.visualize import save_training_curves

        jobs: list[tuple[str, Callable[[], Any]]] = []
        if (self.run_dir / "log.jsonl").is_file():
            jobs.append(("curves.png", lambda: save_training_curves(self.run_dir / "log.jsonl",
                                                                    self.run_dir / "curves.png")))
        if of_model and self.draw is not None:
            jobs.append((f"the pictures of step {self.step}", lambda: self.draw(self.step)))
        for what, job in jobs:
            try:
                job()
            except Exception as error:  # a picture only: training and its results are unaffected
                log.warning("could not draw %s in %s: %s", what, self.run_dir, error)

    def load(self, path: Path) -> None:
        state = load_checkpoint(path, map_location="cpu")
        missing = {"model", "optimizer", "step", "sampler", "rng"} - set(state)
        if missing:
            raise InputError(f"not a training checkpoint (missing {', '.join(sorted(missing))})", path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.step = int(state["step"])
        self.earlier_sessions_s = float(state.get("elapsed_s", 0.0))
        self.epoch = int(state["sampler"]["epoch"])
        self.batch_in_epoch = int(state["sampler"]["position"]) // self.per_rank_batch
        rng = state["rng"]
        if len(rng) == self.dist.world_size:
            restore_rng_state(rng[self.dist.rank])
        else:  # different number of processes: continue, but not bit-exactly
            seed_everything(self.cfg.seed + 1000 * self.step, self.dist.rank)

    # ------------------------------------------------------------------------------ loop
    @property
    def clock_defined(self) -> bool:
        """A time budget without ``max_steps``: the clock sets the length and the LR schedule."""
        return self.total_steps is None

    def elapsed_s(self) -> float:
        """Training time so far in seconds, the sessions before a resume included."""
        session = 0.0 if self.session_start is None else self.clock() - self.session_start
        return self.earlier_sessions_s + session

    def remaining(self) -> bool:
        """Whether the earlier sessions left steps (or, when the clock sets the length, time)."""
        if self.clock_defined:
            return self.earlier_sessions_s < self.budget_s
        return self.step < self.total_steps

    def describe_length(self) -> str:
        if self.clock_defined:
            return f"{self.cfg.max_minutes:g} minutes of training (the clock sets the length and the lr schedule)"
        return f"{self.total_steps} steps in all"

    def _set_lr(self) -> float:
        progress = None
        if self.clock_defined:  # every rank must use the same lr: the slowest clock decides
            progress = min(1.0, self._elapsed_all_ranks / self.budget_s)
        factor = lr_factor(
            self.step, self.total_steps or 0, self.cfg.schedule, self.cfg.milestones, self.cfg.gamma,
            self.cfg.warmup_steps, self.cfg.final_lr_factor, progress=progress,
        )
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor
        return self.optimizer.param_groups[0]["lr"]

    def _train_step(self, batch: Any) -> dict[str, Tensor | float]:
        cfg = self.cfg
        lr = self._set_lr()
        amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.amp)
        with torch.autocast(self.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None):
            loss, model_metrics = self.train_model(batch)
        metrics: dict[str, Tensor | float] = {"loss": loss.detach(), **model_metrics}
        self.scaler.scale(loss).backward()
        if cfg.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            metrics["grad_norm"] = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip).detach()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        after_step = getattr(self.model, "after_optimizer_step", None)
        if after_step is not None:  # e.g. moving averages of weights
            after_step()
        metrics["lr"] = lr
        return metrics

    def _log_window(self, window: MetricWindow, window_start: float, progress: Any) -> dict[str, float]:
        """Log the mean metrics of the steps in ``window`` (over all ranks) at this step."""
        elapsed = self.clock() - window_start
        values = all_reduce_mean(window.means(), self.device)
        if not math.isfinite(values.get("loss", 0.0)):
            raise RuntimeError(f"the loss is not finite at step {self.step}: {values['loss']}")
        values["epoch"] = self.epoch
        values["samples_per_s"] = window.steps * self.cfg.batch_size / max(elapsed, 1e-9)
        values["elapsed_s"] = self.elapsed_s()  # training time, earlier sessions included
        self.logger.log(self.step, values)
        if progress is not None:
            progress.set_postfix(loss=f"{values['loss']:.4f}", lr=f"{values['lr']:.2e}")
        return values

    def _run_eval(self) -> dict[str, float]:
        results: dict[str, float] = {}
        if self.evaluate is not None and self.dist.is_main:
            # evaluating must not change what training draws next (building a backbone copy
            # initialises weights from the global RNG), so a run is the same with or without it
            rng_state = capture_rng_state()
            try:
                with eval_mode(self.model), torch.no_grad():
                    results = {k: float(v) for k, v in self.evaluate(self.step).items()}
            finally:
                restore_rng_state(rng_state)
            if self.logger is not None:
                self.logger.log(self.step, {**results, "elapsed_s": self.elapsed_s()}, kind="eval")
        barrier()
        return results

    def fit(self, resume: bool = False) -> FitResult:
        """Train to ``total_steps`` (or until the time budget / ``stop_after``)."""
        cfg = self.cfg
        seed_everything(cfg.seed, self.dist.rank)
        if resume:
            self.load(self.checkpoint_path)
        if self.dist.is_main:
            if resume:
                truncate_log(self.run_dir / "log.jsonl", self.step)
            else:
                (self.run_dir / "log.jsonl").unlink(missing_ok=True)
            save_config(self.resolved_config, self.run_dir / "config.yaml")
            write_run_info(self.run_dir, self.dist.world_size)
            if cfg.max_minutes > 0 and not self.clock_defined and cfg.schedule != "constant":
                log.warning(
                    "train.schedule=%s runs over train.max_steps=%d steps, and train.max_minutes=%g "
                    "caps each session: if the time budget ends first the schedule is cut short. "
                    "Leave train.max_steps at 0 for a run whose length and schedule follow the clock.",
                    cfg.schedule, self.total_steps, cfg.max_minutes,
                )
        self.logger = RunLogger(self.run_dir, enabled=self.dist.is_main)
        result = FitResult(self.step, self.total_steps, "done")
        try:
            if not self.remaining():
                result.reason = "already_done"
                return result
            if self.eval_at_start and self.step == 0 and self.evaluate is not None:
                result.eval_metrics = self._run_eval()
            with self._stop_on_sigterm():
                result = self._loop(result)
        finally:
            self.logger.close()
            self.session_start = None  # the next fit() is a new session
            self.save_pictures(of_model=False)  # the curves with the final evaluation, after the last checkpoint
        return result

    @contextlib.contextmanager
    def _stop_on_sigterm(self) -> Iterator[None]:
        """While training, SIGTERM (``timeout``, a scheduler's preemption, torchrun passing it on)
        ends the session after the current step, with a checkpoint, instead of killing it."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            self._terminate_requested = True

        previous = signal.signal(signal.SIGTERM, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def _batches(self) -> Iterator[Any]:
        """This rank's batches from (epoch, batch_in_epoch) on, across epochs, from one iterator."""
        self.epoch_chain.start(self.epoch, self.batch_in_epoch * self.per_rank_batch)
        self.loader_generator.manual_seed(self.cfg.seed * 100_003 + self.epoch * 1009 + self.dist.rank)
        return iter(self.loader)

    def _loop(self, result: FitResult) -> FitResult:
        cfg = self.cfg
        if self.session_start is None:
            self.session_start = self.clock()
        (self._elapsed_all_ranks,) = max_over_ranks([self.elapsed_s()], self.device)
        session_steps = 0
        window = MetricWindow()
        window_start = self.clock()
        progress = None
        if self.dist.is_main and cfg.progress:
            from tqdm import tqdm

            progress = tqdm(total=self.total_steps, initial=self.step, desc=cfg.name, unit="step", dynamic_ncols=True)
            if self.clock_defined:
                progress.set_description(f"{cfg.name} ({cfg.max_minutes:g} min)")
        self.model.train()
        stop_reason = ""
        try:
            # the time budget is checked inside, on every rank at once (max_over_ranks)
            batches = self._batches()
            while not stop_reason and (self.total_steps is None or self.step < self.total_steps):
                metrics = self._train_step(_to_device(next(batches), self.device))
                self.step += 1
                self.batch_in_epoch += 1
                session_steps += 1
                window.add(metrics)
                if progress is not None:
                    progress.update(1)

                last_step = self.step == self.total_steps
                if self.step % cfg.log_every == 0 or last_step:
                    result.train_metrics = self._log_window(window, window_start, progress)
                    window, window_start = MetricWindow(), self.clock()

                if self.eval_every > 0 and self.step % self.eval_every == 0 and not last_step:
                    result.eval_metrics = self._run_eval()

                session_over = cfg.max_minutes > 0 and self.clock() - self.session_start > self.budget_s
                # one collective per step: 2 = SIGTERM on some rank, 1 = a session over its cap
                # on some rank; and the slowest rank's clock, for the stop and the next step's lr
                code, self._elapsed_all_ranks = max_over_ranks(
                    [2.0 if self._terminate_requested else float(session_over), self.elapsed_s()], self.device
                )
                if code == 2.0:
                    stop_reason = "terminated"
                elif (self._elapsed_all_ranks >= self.budget_s) if self.clock_defined else (code == 1.0):
                    stop_reason = "time"
                elif cfg.stop_after > 0 and session_steps >= cfg.stop_after:
                    stop_reason = "stop_after"
                if stop_reason and window.steps:  # the steps since the last log line
                    result.train_metrics = self._log_window(window, window_start, progress)
                if self.step % cfg.checkpoint_every == 0 or last_step or stop_reason:
                    self.save()
                if last_step or stop_reason:
                    break
                if self.batch_in_epoch == self.steps_per_epoch:
                    self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        finally:
            if progress is not None:
                progress.close()
        result.step = self.step
        result.reason = stop_reason or "done"
        # a run that the clock defines ends on time as planned: score it too
        if (not stop_reason or (stop_reason == "time" and self.clock_defined)) and self.evaluate is not None:
            result.eval_metrics = self._run_eval()
        return result
