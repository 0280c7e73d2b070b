"""The training engine: configs, schedules, checkpoints, RNG state, exact resume, DDP, time budget."""

from __future__ import annotations

import json
import math
import os
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import Dataset

from densessl.augment.crw import CRWAugment, clip_to_float
from densessl.datasets.video import ClipSampler
from densessl.engine.checkpoint import load_checkpoint, save_checkpoint
from densessl.engine.config import apply_overrides, from_dict, load_config, to_dict
from densessl.engine.distributed import DistInfo, cleanup_distributed, init_distributed
from densessl.engine.schedules import cosine_schedule, lr_factor
from densessl.engine.seed import capture_rng_state, restore_rng_state, seed_everything
from densessl.engine.trainer import (
    EpochChain, MetricWindow, TrainConfig, Trainer, configure_cudnn, prepare_run_dir, resolve_amp,
    resolve_channels_last,
)
from densessl.errors import InputError
from densessl.video.crw import CRW


# ------------------------------------------------------------------------------------- config
@dataclass
class Inner:
    size: int = 3
    scale: tuple[float, float] = (0.5, 1.0)
    path: str | None = None
    options: dict = field(default_factory=dict)


@dataclass
class Outer:
    lr: float = 0.1
    flag: bool = False
    names: list[str] = field(default_factory=lambda: ["a"])
    inner: Inner = field(default_factory=Inner)


def test_config_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-4\ninner:\n  size: 5\n")
    cfg = load_config(Outer, path, ["flag=true", "inner.scale=[0.2, 0.3]", "names=[x, y]",
                                    "inner.path=/tmp/x", "inner.options.radius=4", "lr=3e-4"])
    assert cfg.lr == pytest.approx(3e-4) and isinstance(cfg.lr, float)
    assert cfg.flag is True and cfg.names == ["x", "y"]
    assert cfg.inner == Inner(size=5, scale=(0.2, 0.3), path="/tmp/x", options={"radius": 4})
    assert load_config(Outer, path).lr == pytest.approx(1e-4)  # YAML's "1e-4" string → float
    assert from_dict(Outer, to_dict(cfg)) == cfg
    assert load_config(Outer, None, ["inner.path=null"]).inner.path is None


def test_config_errors_name_the_key_and_list_valid_keys(tmp_path):
    with pytest.raises(InputError, match=r"inner\.sise.*valid keys under inner: options, path, scale, size"):
        load_config(Outer, None, ["inner.sise=4"])
    with pytest.raises(InputError, match="'lrr'.*flag, inner, lr, names"):
        load_config(Outer, None, ["lrr=1"])
    with pytest.raises(InputError, match=r"inner\.size.*integer"):
        load_config(Outer, None, ["inner.size=big"])
    with pytest.raises(InputError, match="key=value"):
        load_config(Outer, None, ["lr"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("inner:\n  colour: 3\n")
    with pytest.raises(InputError, match=r"bad\.yaml.*inner\.colour"):
        load_config(Outer, bad)
    bad.write_text("lr: [1\n")
    with pytest.raises(InputError, match=r"bad\.yaml"):
        load_config(Outer, bad)
    with pytest.raises(InputError, match="does not exist"):
        load_config(Outer, tmp_path / "missing.yaml")
    with pytest.raises(InputError, match="no sub-keys"):
        apply_overrides(Outer, to_dict(Outer()), ["lr.x=1"])


def test_crw_default_config_is_the_paper_recipe():
    from densessl.tools.train_crw import CRWConfig

    root = Path(__file__).resolve().parents[1]
    cfg = load_config(CRWConfig, root / "configs" / "crw.yaml")
    assert cfg == load_config(CRWConfig)  # the YAML spells out the built-in defaults
    assert (cfg.train.optimizer, cfg.train.lr, cfg.train.batch_size, cfg.train.epochs) == ("adam", 1e-4, 20, 25)
    assert (cfg.train.milestones, cfg.train.gamma, cfg.train.weight_decay) == ([0.8], 0.3, 0.0)
    assert (cfg.train.amp, cfg.train.channels_last, cfg.data.frames_fps) == ("auto", "auto", 0)
    assert load_config(CRWConfig, None, ["train.channels_last=true"]).train.channels_last is True
    assert (cfg.model.temperature, cfg.model.edge_dropout, cfg.model.out_layer) == (0.05, 0.1, "layer4")
    assert (cfg.data.clip_len, cfg.data.target_fps, cfg.data.clips_per_video) == (4, 8.0, 5)
    assert (cfg.augment.frame_size, cfg.augment.patch_size, cfg.augment.patch_stride) == (256, 64, 32)
    assert cfg.augment.crop_scale == (0.8, 0.95) and cfg.augment.patch_scale == (0.7, 0.9)


def test_auto_amp_is_bf16_only_on_cuda_gpus_that_support_it():
    assert resolve_amp("auto", torch.device("cpu")) == "none"
    assert resolve_amp("bf16", torch.device("cpu")) == "bf16" and resolve_amp("none", torch.device("cpu")) == "none"
    if torch.cuda.is_available():
        expected = "bf16" if torch.cuda.is_bf16_supported() else "none"
        assert resolve_amp("auto", torch.device("cuda")) == expected
    assert resolve_channels_last("auto", torch.device("cpu")) is False
    assert resolve_channels_last("auto", torch.device("cuda")) is True
    assert resolve_channels_last(True, torch.device("cpu")) is True


def test_cudnn_benchmark_is_set_for_cuda_devices_only(monkeypatch):
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    configure_cudnn(torch.device("cpu"), True)
    assert torch.backends.cudnn.benchmark is False
    configure_cudnn(torch.device("cuda"), True)
    assert torch.backends.cudnn.benchmark is True
    configure_cudnn(torch.device("cuda", 0), False)
    assert torch.backends.cudnn.benchmark is False
    assert TrainConfig().cudnn_benchmark is True


# ---------------------------------------------------------------------------------- schedules
def test_metric_window_means_and_where_it_sums():
    window = MetricWindow()
    for step in range(4):
        window.add({"loss": torch.tensor(float(step)), "lr": 0.5 * step, "flag": torch.tensor(step % 2 == 0)})
    assert window.steps == 4
    assert window.means() == pytest.approx({"loss": 1.5, "lr": 0.75, "flag": 0.5})
    # a metric already on an accelerator is summed there, a host value is never moved to it
    accelerated = MetricWindow()
    accelerated.add({"loss": torch.ones((), device="meta"), "lr": 1e-3, "flag": torch.tensor(1.0)})
    assert accelerated.device_sums["loss"].device.type == "meta"
    assert accelerated.host_sums == {"lr": 1e-3, "flag": 1.0}


def test_step_schedule_drops_at_eighty_percent():
    factors = [lr_factor(s, 25, "step", [0.8], 0.3) for s in range(25)]
    assert factors[:20] == [1.0] * 20 and factors[20:] == pytest.approx([0.3] * 5)
    assert lr_factor(9, 10, "step", [0.5, 0.8], 0.1) == pytest.approx(0.01)


def test_cosine_and_warmup():
    assert lr_factor(0, 100, "cosine", warmup_steps=0) == pytest.approx(1.0)
    assert lr_factor(50, 100, "cosine") == pytest.approx(0.5)
    assert lr_factor(100, 100, "cosine", final_factor=0.1) == pytest.approx(0.1)
    warm = [lr_factor(s, 100, "constant", warmup_steps=4) for s in range(6)]
    assert warm == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0])
    values = cosine_schedule(1.0, 0.0, 10, warmup_steps=2)
    assert len(values) == 10 and values[0] == 0.0 and values[2] == pytest.approx(1.0)
    assert np.all(np.diff(values[2:]) <= 0)
    with pytest.raises(ValueError):
        lr_factor(0, 10, "linear")


def test_schedules_follow_a_given_fraction_of_training():
    assert lr_factor(3, 0, "step", [0.8], 0.3, progress=0.79) == 1.0
    assert lr_factor(3, 0, "step", [0.8], 0.3, progress=0.8) == pytest.approx(0.3)
    for done in (0.0, 0.25, 0.5, 1.0):  # the same cosine as by steps
        assert lr_factor(7, 0, "cosine", final_factor=0.1, progress=done) == pytest.approx(
            lr_factor(round(done * 100), 100, "cosine", final_factor=0.1))
    assert lr_factor(0, 0, "constant", warmup_steps=4, progress=0.5) == pytest.approx(0.25)  # warmup counts steps


# ---------------------------------------------------------------------------- checkpoints, RNG
def test_checkpoint_atomic_and_weights_only(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint({"a": torch.ones(2), "step": 3, "nested": {"x": [1, 2.5, "s"]}}, path)
    save_checkpoint({"a": torch.zeros(2), "step": 4}, path)  # replaces
    state = load_checkpoint(path)
    assert state["step"] == 4 and torch.equal(state["a"], torch.zeros(2))
    assert sorted(os.listdir(path.parent)) == ["last.pt"]  # no temporary files left
    path.write_bytes(b"garbage")
    with pytest.raises(InputError, match="last.pt"):
        load_checkpoint(path)
    with pytest.raises(InputError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pt")


def test_rng_state_round_trip(tmp_path):
    seed_everything(5)
    state = capture_rng_state()
    save_checkpoint({"rng": state}, tmp_path / "r.pt")
    first = (random.random(), np.random.rand(), torch.rand(3))
    seed_everything(99)
    restore_rng_state(load_checkpoint(tmp_path / "r.pt")["rng"])
    second = (random.random(), np.random.rand(), torch.rand(3))
    assert first[0] == second[0] and first[1] == second[1] and torch.equal(first[2], second[2])


# --------------------------------------------------------------------------------- the loop
class TinyBackbone(nn.Module):
    stride = 2
    out_channels = 8

    def __init__(self) -> None:
        super().__init__()
        # GroupNorm, not BatchNorm: per-sample normalisation keeps DDP equal to one big batch
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.GroupNorm(2, 8), nn.ReLU(), nn.Conv2d(8, 8, 3, 1, 1))

    def features(self, x):
        return self.net(x)


class ToyCRW(nn.Module):
    """Dense-mode CRW on 16×16 frames; random crops + edge dropout when ``random`` is set."""

    def __init__(self, random: bool) -> None:
        super().__init__()
        self.augment = CRWAugment(frame_size=16, patch_size=8, patch_stride=8, with_patches=False) if random else None
        self.crw = CRW(TinyBackbone(), mode="dense", embed_dim=8, temperature=0.1, edge_dropout=0.1 if random else 0.0)

    def forward(self, clip):
        frames = self.augment(clip).frames if self.augment is not None else clip_to_float(clip)
        return self.crw.loss(self.crw.nodes_from_frames(frames))


class ToyClips(Dataset):
    """uint8 clips 3×H×W×3 determined by the (video, start) key."""

    def __init__(self, size: int = 16) -> None:
        self.size = size

    def __len__(self) -> int:
        return 4

    def __getitem__(self, key):
        g = torch.Generator().manual_seed(100 * key[0] + key[1])
        base = torch.randint(0, 256, (3, 4, 4), generator=g, dtype=torch.uint8)
        frame = torch.nn.functional.interpolate(base[None].float(), size=(self.size, self.size), mode="bilinear")[0]
        clip = torch.stack([torch.roll(frame, shifts=t, dims=2) for t in range(3)])  # moving pattern
        return clip.permute(0, 2, 3, 1).round().clamp(0, 255).to(torch.uint8)


def make_trainer(tmp_path, name, resume=False, random=True, dist=None, **overrides):
    cfg = TrainConfig(name=name, out_dir=str(tmp_path / "runs"), max_steps=6, batch_size=4, num_workers=0,
                      lr=1e-2, milestones=[0.5], log_every=1, checkpoint_every=2, progress=False, seed=7)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    dist = dist or DistInfo()
    run_dir = prepare_run_dir(cfg, resume=resume)
    seed_everything(0)
    model = ToyCRW(random)
    sampler = ClipSampler([3, 3, 3, 3], clips_per_video=2, seed=cfg.seed, rank=dist.rank, world_size=dist.world_size)
    return Trainer(cfg, model, ToyClips(), sampler, dist, run_dir, {"train": to_dict(cfg)})


def train_losses(run_dir: Path) -> list[tuple[int, float]]:
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [(r["step"], r["loss"]) for r in rows if r["kind"] == "train"]


def test_resume_continues_exactly(tmp_path):
    full = make_trainer(tmp_path, "full")
    assert full.steps_per_epoch == 2  # 8 clips per epoch: the 6 steps cross two epoch boundaries
    result = full.fit()
    assert result.reason == "done" and result.step == 6
    reference = train_losses(full.run_dir)
    assert [s for s, _ in reference] == [1, 2, 3, 4, 5, 6]

    part = make_trainer(tmp_path, "part", stop_after=3)  # interrupted in the middle of epoch 1
    assert part.fit().reason == "stop_after"
    state = load_checkpoint(part.run_dir / "checkpoints" / "last.pt")
    assert state["step"] == 3 and state["sampler"] == {"epoch": 1, "position": 4}
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "config"} <= set(state)
    with open(part.run_dir / "log.jsonl", "a") as handle:  # a line logged after the checkpoint
        handle.write(json.dumps({"step": 4, "kind": "train", "loss": -1.0}) + "\n")

    resumed = make_trainer(tmp_path, "part", resume=True)
    assert resumed.fit(resume=True).reason == "done"
    assert train_losses(part.run_dir) == reference  # bit-identical on CPU
    a = load_checkpoint(full.run_dir / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(part.run_dir / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the learning rate followed the schedule (×0.3 from step 3 of 6)
    lrs = [json.loads(l)["lr"] for l in (part.run_dir / "log.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([1e-2, 1e-2, 1e-2, 3e-3, 3e-3, 3e-3])
    for name in ("config.yaml", "git.json", "environment.json"):
        assert (part.run_dir / name).is_file()
    assert yaml.safe_load((part.run_dir / "config.yaml").read_text())["train"]["name"] == "part"


def test_trainer_calls_the_models_after_step_hook_once_per_step_after_the_update(tmp_path):
    trainer = make_trainer(tmp_path, "hook")
    seen = []

    def after_optimizer_step():  # the optimizer has stepped and cleared the gradients
        seen.append((trainer.optimizer.state[first]["step"].item(), first.grad))

    first = next(trainer.model.parameters())
    trainer.model.after_optimizer_step = after_optimizer_step
    trainer.fit()
    assert seen == [(float(n), None) for n in range(1, 7)]


def test_epoch_chain_runs_whole_batches_of_each_epoch_back_to_back():
    import itertools

    sampler = ClipSampler([3, 2, 4], clips_per_video=2, seed=5)  # 6 clips an epoch; batches of 4
    chain = EpochChain(sampler, samples_per_epoch=4)
    chain.start(epoch=2, position=1)
    expected = sampler.plan(2)[1:4] + sampler.plan(3)[:4] + sampler.plan(4)[:4]
    assert list(itertools.islice(chain, 11)) == expected
    chain.start(epoch=0, position=4)  # a checkpoint at the end of an epoch goes on with the next
    assert list(itertools.islice(chain, 4)) == sampler.plan(1)[:4]


def test_one_loader_iterator_per_session(tmp_path, monkeypatch):
    trainer = make_trainer(tmp_path, "chain")  # 6 steps over 3 epochs
    starts = []
    original = trainer.epoch_chain.start
    monkeypatch.setattr(trainer.epoch_chain, "start", lambda *a: starts.append(a) or original(*a))
    assert trainer.fit().step == 6
    assert starts == [(0, 0)]
    assert [json.loads(l)["epoch"] for l in (trainer.run_dir / "log.jsonl").read_text().splitlines()] == [0, 0, 1, 1, 2, 2]


def test_run_folder_protection(tmp_path):
    make_trainer(tmp_path, "r", max_steps=1).fit()
    with pytest.raises(InputError, match="--resume"):
        make_trainer(tmp_path, "r")
    with pytest.raises(InputError, match="no checkpoint"):
        make_trainer(tmp_path, "fresh", resume=True)
    assert make_trainer(tmp_path, "r", resume=True, max_steps=1).fit(resume=True).reason == "already_done"


def test_time_budget_writes_a_final_checkpoint(tmp_path):
    trainer = make_trainer(tmp_path, "timed", max_minutes=1e-9, max_steps=50)
    result = trainer.fit()
    assert result.reason == "time" and result.step == 1
    assert load_checkpoint(trainer.checkpoint_path)["step"] == 1


@pytest.mark.parametrize("stop", [dict(stop_after=3), dict(max_minutes=1e-9)], ids=["stop_after", "time"])
def test_a_session_that_stops_early_logs_its_last_steps(tmp_path, stop):
    trainer = make_trainer(tmp_path, "early", log_every=5, max_steps=50, **stop)
    result = trainer.fit()
    logged = train_losses(trainer.run_dir)
    assert [step for step, _ in logged] == [result.step]  # before the first full window of 5
    assert result.train_metrics["loss"] == logged[0][1]


def clocked(trainer: Trainer, seconds_per_step: float) -> Trainer:
    """The trainer's clock reads ``seconds_per_step`` × the steps done: time-budget runs become
    deterministic."""
    trainer.clock = lambda: trainer.step * seconds_per_step
    return trainer


def test_without_max_steps_the_clock_sets_the_length_and_the_schedule(tmp_path, caplog):
    budget = dict(max_minutes=1.0, max_steps=0, epochs=1)  # 60 s at 6 s a step: 10 steps, not 1 epoch (2)
    full = clocked(make_trainer(tmp_path, "clock", **budget), 6.0)
    assert full.total_steps is None and "1 minutes of training" in full.describe_length()
    with caplog.at_level("WARNING", logger="densessl.engine"):
        result = full.fit()
    assert not [r for r in caplog.records if r.name == "densessl.engine"]  # nothing is cut short
    assert result.reason == "time" and result.step == 10
    rows = [json.loads(l) for l in (full.run_dir / "log.jsonl").read_text().splitlines()]
    # ×0.3 once half the time is spent (milestone 0.5: the step starting at 30 s)
    assert [r["lr"] for r in rows] == pytest.approx([1e-2] * 5 + [3e-3] * 5)
    assert load_checkpoint(full.checkpoint_path)["elapsed_s"] == pytest.approx(60.0)

    part = clocked(make_trainer(tmp_path, "clock-part", stop_after=4, **budget), 6.0)
    assert part.fit().reason == "stop_after"
    resumed = clocked(make_trainer(tmp_path, "clock-part", resume=True, **budget), 6.0)
    assert resumed.fit(resume=True).reason == "time" and resumed.step == 10  # the budget spans sessions
    assert train_losses(part.run_dir) == train_losses(full.run_dir)
    again = clocked(make_trainer(tmp_path, "clock-part", resume=True, **budget), 6.0)
    assert again.fit(resume=True).reason == "already_done"
    longer = clocked(make_trainer(tmp_path, "clock-part", resume=True, **{**budget, "max_minutes": 1.2}), 6.0)
    assert longer.fit(resume=True).step == 12


@pytest.mark.parametrize("schedule, warns", [("step", True), ("cosine", True), ("constant", False)])
def test_time_budget_warns_when_the_schedule_follows_steps(tmp_path, caplog, schedule, warns):
    trainer = make_trainer(tmp_path, f"timed-{schedule}", max_minutes=1e-9, max_steps=50, schedule=schedule)
    with caplog.at_level("WARNING", logger="densessl.engine"):
        trainer.fit()
    messages = [r.getMessage() for r in caplog.records if r.name == "densessl.engine"]
    assert bool(messages) == warns
    if warns:
        assert "train.max_minutes" in messages[0] and "50 steps" in messages[0]


def test_a_jobs_time_budget_counts_its_setup(tmp_path):
    import logging
    import time

    from densessl.engine.job import run_training_job

    cfg = TrainConfig(name="setup", out_dir=str(tmp_path / "runs"), max_minutes=0.5 / 60, batch_size=4,
                      num_workers=0, progress=False, log_every=1)

    def slow_setup(dist, run_dir):
        time.sleep(0.6)  # longer than the whole budget
        sampler = ClipSampler([3, 3, 3, 3], clips_per_video=2, seed=0)
        return Trainer(cfg, ToyCRW(True), ToyClips(), sampler, dist, run_dir, {"train": to_dict(cfg)})

    result = run_training_job(cfg, slow_setup, logging.getLogger("test"))
    assert result.reason == "time" and result.step == 1


def test_sigterm_ends_the_session_after_the_step_with_a_checkpoint(tmp_path):
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        pytest.skip("signal handlers can only be installed from the main thread")
    trainer = make_trainer(tmp_path, "term", max_steps=6)
    train_step = trainer._train_step

    def step_then_sigterm(batch):
        metrics = train_step(batch)
        if trainer.step == 2:  # during the third step
            os.kill(os.getpid(), signal.SIGTERM)
        return metrics

    trainer._train_step = step_then_sigterm
    handler_before = signal.getsignal(signal.SIGTERM)
    result = trainer.fit()
    assert result.reason == "terminated" and result.step == 3
    assert load_checkpoint(trainer.checkpoint_path)["step"] == 3
    assert signal.getsignal(signal.SIGTERM) is handler_before
    resumed = make_trainer(tmp_path, "term", resume=True, max_steps=6)
    assert resumed.fit(resume=True).reason == "done" and resumed.step == 6


def test_amp_clipping_and_periodic_evaluation(tmp_path):
    calls = []
    trainer = make_trainer(tmp_path, "amp", amp="bf16", grad_clip=0.5, max_steps=4)
    trainer.evaluate = lambda step: calls.append(step) or {"score": float(step)}
    trainer.eval_every = 2
    result = trainer.fit()
    assert calls == [2, 4] and result.eval_metrics == {"score": 4.0}
    rows = [json.loads(l) for l in (trainer.run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["score"] for r in rows if r["kind"] == "eval"] == [2.0, 4.0]
    assert all(math.isfinite(r["grad_norm"]) for r in rows if r["kind"] == "train")
    fp16 = make_trainer(tmp_path, "fp16", amp="fp16", max_steps=1)
    fp16.fit()
    assert "scale" in load_checkpoint(fp16.checkpoint_path)["scaler"]


def test_curves_are_drawn_at_each_checkpoint_and_after_the_final_evaluation(tmp_path, monkeypatch):
    import densessl.eval.visualize as visualize

    drawn: list[list[int]] = []  # the eval steps in the log at each drawing

    def record(log_path, out_path):
        rows = [json.loads(line) for line in Path(log_path).read_text().splitlines()]
        drawn.append([r["step"] for r in rows if r["kind"] == "eval"])
        return visualize_original(log_path, out_path)

    visualize_original = visualize.save_training_curves
    monkeypatch.setattr(visualize, "save_training_curves", record)
    trainer = make_trainer(tmp_path, "curves", max_steps=4)  # checkpoints at steps 2 and 4
    trainer.evaluate = lambda step: {"score": float(step)}
    trainer.fit()
    assert drawn == [[], [], [4]]
    assert (trainer.run_dir / "curves.png").is_file()

    def broken(log_path, out_path):
        raise RuntimeError("no fonts")

    monkeypatch.setattr(visualize, "save_training_curves", broken)
    again = make_trainer(tmp_path, "curves-broken", max_steps=2)
    assert again.fit().step == 2  # a picture that cannot be drawn does not stop training


def test_evaluation_does_not_change_the_training(tmp_path):
    """An evaluator that draws from every global RNG (as building a backbone copy does) leaves
    the run identical to one without evaluation."""
    plain = make_trainer(tmp_path, "plain")
    plain.fit()

    def greedy_evaluator(step: int) -> dict[str, float]:
        nn.Linear(64, 64)  # default initialisation draws from torch's RNG
        return {"draws": float(torch.rand(()) + np.random.rand() + random.random())}

    evaluated = make_trainer(tmp_path, "evaluated")
    evaluated.evaluate, evaluated.eval_every, evaluated.eval_at_start = greedy_evaluator, 2, True
    evaluated.fit()
    rows = [json.loads(l) for l in (evaluated.run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [0, 2, 4, 6]
    assert train_losses(evaluated.run_dir) == train_losses(plain.run_dir)


def test_bad_train_settings_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="train.amp"):
        make_trainer(tmp_path, "x", amp="fp8")
    with pytest.raises(InputError, match="train.channels_last"):
        make_trainer(tmp_path, "z", channels_last="sometimes")
    with pytest.raises(InputError, match="batch"):
        make_trainer(tmp_path, "y", batch_size=64)  # more than one epoch's clips


# ---------------------------------------------------------------------------------------- DDP
def _join_process_group(rank: int, world_size: int, tmp_path: str) -> DistInfo:
    """Join through a rendezvous file: no TCP port to pick, so no race with other processes
    for a port that was free a moment ago. init_distributed then finds the group joined."""
    import torch.distributed

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/rendezvous",
                                         rank=rank, world_size=world_size)
    return init_distributed("cpu")


def _ddp_worker(rank: int, world_size: int, tmp_path: str) -> None:
    dist = _join_process_group(rank, world_size, tmp_path)
    try:
        trainer = make_trainer(Path(tmp_path), "ddp", random=False, dist=dist, max_steps=1,
                               optimizer="sgd", momentum=0.0, lr=1.0)
        trainer.fit()
    finally:
        cleanup_distributed()


def _ddp_clock_worker(rank: int, world_size: int, tmp_path: str) -> None:
    dist = _join_process_group(rank, world_size, tmp_path)
    try:
        trainer = make_trainer(Path(tmp_path), "ddp-clock", random=False, dist=dist, max_steps=0, max_minutes=1.0,
                               optimizer="sgd", momentum=0.0)
        clocked(trainer, 6.0 + 2.0 * rank)  # rank 1's clock runs a third faster
        result = trainer.fit()
        torch.save({"step": result.step, "model": trainer.model.state_dict()}, Path(tmp_path) / f"rank{rank}.pt")
    finally:
        cleanup_distributed()


@pytest.mark.slow
def test_ddp_ranks_share_the_clock_of_a_time_budget(tmp_path):
    """Each rank's clock differs; the lr schedule and the stop follow the slowest, so the replicas
    stay identical (rank 0 alone would drop the lr one step later and stop two steps later)."""
    import torch.multiprocessing as mp

    mp.spawn(_ddp_clock_worker, args=(2, str(tmp_path)), nprocs=2, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    assert ranks[0]["step"] == ranks[1]["step"] == 8  # rank 1: 8 steps × 8 s ≥ 60 s
    for key, value in ranks[0]["model"].items():
        assert torch.equal(value, ranks[1]["model"][key]), key
    lrs = [json.loads(l)["lr"] for l in (tmp_path / "runs" / "ddp-clock" / "log.jsonl").read_text().splitlines()]
    assert lrs == pytest.approx([1e-2] * 4 + [3e-3] * 4)  # 4 × 8 s ≥ 30 s: rank 1's clock decides


@pytest.mark.slow
def test_ddp_two_processes_match_one_process_on_the_combined_batch(tmp_path):
    """SGD with lr 1 and no momentum: the parameter change after one step is the gradient."""
    import torch.multiprocessing as mp

    torch.set_num_threads(1)
    single = make_trainer(tmp_path, "single", random=False, max_steps=1, optimizer="sgd", momentum=0.0, lr=1.0)
    initial = {k: v.clone() for k, v in single.model.state_dict().items()}
    single.fit()
    mp.spawn(_ddp_worker, args=(2, str(tmp_path)), nprocs=2, join=True)

    one = load_checkpoint(tmp_path / "runs" / "single" / "checkpoints" / "last.pt")["model"]
    two = load_checkpoint(tmp_path / "runs" / "ddp" / "checkpoints" / "last.pt")["model"]
    assert load_checkpoint(tmp_path / "runs" / "ddp" / "checkpoints" / "last.pt")["world_size"] == 2
    for key, start in initial.items():
        grad_one = start - one[key]
        grad_two = start - two[key]
        assert grad_one.abs().max() > 0 or key.endswith("bias")
        torch.testing.assert_close(grad_two, grad_one, atol=1e-5, rtol=1e-4)


def test_records_carry_the_training_time_across_a_resume(tmp_path):
    """``elapsed_s`` in every train and eval record, the earlier sessions' time included."""
    first = clocked(make_trainer(tmp_path, "timed-log", stop_after=3), seconds_per_step=10.0)
    first.evaluate, first.eval_every = (lambda step: {"score": 0.5}), 2
    first.fit()
    second = clocked(make_trainer(tmp_path, "timed-log", resume=True), seconds_per_step=10.0)
    second.evaluate, second.eval_every = (lambda step: {"score": 0.5}), 2
    second.fit(resume=True)
    rows = [json.loads(line) for line in (second.run_dir / "log.jsonl").read_text().splitlines()]
    train = [(r["step"], r["elapsed_s"]) for r in rows if r["kind"] == "train"]
    assert [step for step, _ in train] == [1, 2, 3, 4, 5, 6]
    elapsed = [seconds for _, seconds in train]
    assert all(b > a for a, b in zip(elapsed, elapsed[1:]))  # rises through the resume
    assert all(isinstance(r["elapsed_s"], float) for r in rows if r["kind"] == "eval")


@pytest.mark.parametrize("training", [True, False])
def test_eval_mode_sets_every_submodule_back_on_errors_too(training):
    from densessl.models.modes import eval_mode

    net = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.BatchNorm1d(3)).train(training)
    with pytest.raises(KeyError):
        with eval_mode(net) as inside:
            assert inside is net and not any(m.training for m in net.modules())
            raise KeyError("boom")
    assert all(m.training == training for m in net.modules())
