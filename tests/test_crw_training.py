"""CRW training end to end: the tool, resume, exported backbone, and learning on synthetic video."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from PIL import Image

from densessl.datasets.synthetic import SyntheticConfig, write_synthetic_davis
from densessl.engine.checkpoint import load_checkpoint
from densessl.tools.train_crw import main


def make_set(root: Path, **kwargs) -> Path:
    """Synthetic DAVIS-style set plus a list file of its training frame folders."""
    settings = dict(num_sequences=4, num_frames=10, height=48, width=64, write_flow=False, write_video=False,
                    num_val=1, workers=1, seed=0)
    settings.update(kwargs)
    write_synthetic_davis(root, SyntheticConfig(**settings))
    names = (root / "ImageSets" / "2017" / "train.txt").read_text().split()
    listing = root / "train_frames.txt"
    listing.write_text("".join(f"JPEGImages/480p/{name}\n" for name in names))
    return listing


def log_rows(run_dir: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def test_tool_rejects_bad_input(tmp_path, capsys):
    assert main(["train.lrr=1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "train.lrr" in err and "valid keys under train" in err
    assert main([f"train.out_dir={tmp_path}"]) == 2
    assert "data.videos" in capsys.readouterr().err
    assert main(["data.frames=/nonexistent/frames", f"train.out_dir={tmp_path}"]) == 2
    assert "/nonexistent/frames" in capsys.readouterr().err
    assert main(["--config", str(tmp_path / "none.yaml")]) == 2
    assert "none.yaml" in capsys.readouterr().err
    assert main([f"data.frames={tmp_path}", "data.clip_len=2"]) == 2
    assert "clip_len" in capsys.readouterr().err


def tiny_run_args(tmp_path: Path, name: str) -> list[str]:
    """A 3-step CRW run on 32 px frames of a small generated set, in ``<tmp_path>/runs/<name>``."""
    listing = make_set(tmp_path / "data")
    return [
        f"data.frames={listing}", "data.target_fps=0", "data.short_side=40", f"data.cache_dir={tmp_path / 'cache'}",
        "augment.frame_size=32", "augment.patch_size=16", "augment.patch_stride=8", "model.out_layer=layer1",
        "train.batch_size=2", "train.num_workers=0", "train.log_every=1", "train.progress=false",
        f"train.out_dir={tmp_path / 'runs'}", f"train.name={name}", "train.max_steps=3",
    ]


def test_tool_trains_resumes_and_exports_the_backbone(tmp_path):
    args = tiny_run_args(tmp_path, "tiny")
    assert main(args + ["train.stop_after=2"]) == 0
    run = tmp_path / "runs" / "tiny"
    assert [r["step"] for r in log_rows(run, "train")] == [1, 2]
    assert main(args) == 2  # the run exists: needs --resume or --overwrite
    assert main(args + ["--resume"]) == 0
    assert [r["step"] for r in log_rows(run, "train")] == [1, 2, 3]
    state = load_checkpoint(run / "checkpoints" / "last.pt")
    assert state["step"] == 3 and state["config"]["model"]["out_layer"] == "layer1"

    from densessl.models.backbones import create_backbone

    exported = create_backbone("resnet18-crw", weights=run / "checkpoints" / "backbone.pt", out_layer="layer1")
    trained = {k[len("model.backbone."):]: v for k, v in state["model"].items() if k.startswith("model.backbone.")}
    for key, value in exported.state_dict().items():
        assert torch.equal(value, trained[key])
    assert main(args + ["--overwrite", "train.max_steps=1"]) == 0
    assert [r["step"] for r in log_rows(run, "train")] == [1]


def test_keep_exports_keeps_the_backbone_of_every_checkpoint(tmp_path):
    args = tiny_run_args(tmp_path, "keep") + ["train.checkpoint_every=2", "train.keep_exports=true"]
    assert main(args) == 0
    folder = tmp_path / "runs" / "keep" / "checkpoints"
    assert sorted(p.name for p in folder.glob("step_*")) == ["step_0000002", "step_0000003"]
    at_2, at_3, latest = (load_checkpoint(f) for f in (
        folder / "step_0000002" / "backbone.pt", folder / "step_0000003" / "backbone.pt", folder / "backbone.pt"))
    assert all(torch.equal(at_3[k], latest[k]) for k in latest)
    assert not all(torch.equal(at_2[k], at_3[k]) for k in at_3)  # step 3 trained on


def test_pictures_of_the_walk_and_the_curves_at_each_checkpoint(tmp_path):
    args = tiny_run_args(tmp_path, "pictures") + ["train.checkpoint_every=2"]
    assert main(args) == 0
    run = tmp_path / "runs" / "pictures"
    assert sorted(p.name for p in (run / "walks").iterdir()) == ["step_0000002.png", "step_0000003.png"]
    with Image.open(run / "walks" / "step_0000003.png") as picture:
        assert picture.size[0] > 3 * 256 and picture.size[1] > 256  # three panels of 32 px frames ×8
    assert (run / "curves.png").is_file()
    assert main(tiny_run_args(tmp_path / "off", "none") + ["train.pictures=false"]) == 0
    assert not (tmp_path / "off" / "runs" / "none" / "walks").exists()
    assert not (tmp_path / "off" / "runs" / "none" / "curves.png").exists()


def test_keep_exports_last_keeps_the_newest_folders(tmp_path):
    args = tiny_run_args(tmp_path, "last") + ["train.checkpoint_every=1", "train.keep_exports=true",
                                              "train.keep_exports_last=2"]
    assert main(args) == 0
    folder = tmp_path / "runs" / "last" / "checkpoints"
    assert sorted(p.name for p in folder.glob("step_*")) == ["step_0000002", "step_0000003"]
    assert main(args[:-1] + ["train.keep_exports_last=-1", "--overwrite"]) == 2


def train_on_synthetic_video(tmp_path: Path, mode: str, evaluate: bool = True) -> tuple[Path, Path, list[str]]:
    """90 CPU steps of CRW on 26 synthetic videos (4 held out); with ``evaluate``, J&F on the
    held-out videos at step 0 and at the end.

    Returns (data root, run folder, the tool's arguments)."""
    data = tmp_path / "data"
    listing = make_set(data, num_sequences=30, num_frames=20, height=96, width=128, num_val=4,
                       workers=2)
    run = tmp_path / "runs" / "learn"
    args = [
        f"data.frames={listing}", "data.target_fps=0", "data.short_side=72", f"data.cache_dir={tmp_path / 'cache'}",
        f"model.mode={mode}", "model.out_layer=layer2",
        "augment.frame_size=64", "augment.patch_size=16", "augment.patch_stride=8",
        "train.batch_size=8", "train.max_steps=90", "train.lr=1e-3", "train.num_workers=0", "train.log_every=5",
        "train.progress=false", f"train.out_dir={run.parent}", "train.name=learn",
    ]
    if evaluate:
        args += [f"eval.davis_root={data}", "eval.at_start=true", "eval.layer=layer2"]
    torch.set_num_threads(2)
    assert main(args) == 0
    return data, run, args


def initial_and_trained(run: Path, args: list[str]):
    """The run's initial network (same seed) and the trained one, with their resolved config."""
    from densessl.engine.config import load_config
    from densessl.engine.seed import seed_everything
    from densessl.tools.train_crw import CRWConfig, build_training

    cfg = load_config(CRWConfig, None, args)
    seed_everything(cfg.train.seed)
    _, _, initial = build_training(cfg, progress=False)
    _, _, trained = build_training(cfg, progress=False)
    trained.load_state_dict(load_checkpoint(run / "checkpoints" / "last.pt")["model"])
    return cfg, initial, trained


def first_frame_only_jf(model, cfg, data: Path) -> float:
    """J&F of label propagation on the held-out videos from the first frame alone (no recent
    frames): long-range correspondence."""
    from densessl.engine.evaluation import layer_copy
    from densessl.video.davis_propagation import evaluate_backbone_on_davis

    backbone = layer_copy(model.model.backbone, cfg.model.backbone, "layer2", torch.device("cpu"))
    scores = evaluate_backbone_on_davis(backbone, data, year=2017, split="val", protocol="crw",
                                        device=torch.device("cpu"), num_recent=0)
    return scores["J&F-Mean"]


@pytest.mark.slow
def test_crw_learns_correspondence_on_synthetic_video(tmp_path):
    """The loss falls well below ln N, the walk generalises to held-out videos, and label
    propagation (J&F) on held-out videos beats the same network at random init."""
    from densessl.datasets.video import ClipSampler, build_clip_dataset, collate_clips
    from densessl.video.crw import walk_metrics

    data, run, args = train_on_synthetic_video(tmp_path, "patch")
    chance = math.log(49)
    train_rows = log_rows(run, "train")
    assert sum(r["loss"] for r in train_rows[-2:]) / 2 < 0.7 * chance

    # the walk generalises: held-out clips, same crops for the initial and the trained network
    cfg, initial, trained = initial_and_trained(run, args)
    val_names = (data / "ImageSets" / "2017" / "val.txt").read_text().split()
    val_list = data / "val_frames.txt"
    val_list.write_text("".join(f"JPEGImages/480p/{name}\n" for name in val_names))
    val = build_clip_dataset(frames=val_list, clip_len=4, target_fps=None, short_side=72, cache_dir=tmp_path / "cache")
    keys = ClipSampler(val.clip_counts(), clips_per_video=4, seed=1).plan(0)
    clips = collate_clips([val[k] for k in keys])
    before = walk_metrics(initial, clips, seed=3)
    after = walk_metrics(trained, clips, seed=3)
    assert before["loss"] > 0.8 * chance  # near chance at random init
    assert after["loss"] < before["loss"] - 0.25 * chance
    assert after["cycle_acc"] > before["cycle_acc"] + 0.1

    # Label propagation with the trained layer beats the same network at random init. With the
    # CRW protocol (frame 0 + 20 recent frames) consecutive frames are easy to match even for
    # random features, and 90 CPU steps gain 3-10 points (0.41 → 0.51 here); propagating from
    # the first frame alone measures long-range correspondence, where they gain 17–24 points.
    evals = log_rows(run, "eval")
    assert [r["step"] for r in evals] == [0, 90]
    assert all(0.0 <= r["J&F-Mean"] <= 1.0 for r in evals)
    assert evals[-1]["J&F-Mean"] > evals[0]["J&F-Mean"] + 0.03

    long_before, long_after = first_frame_only_jf(initial, cfg, data), first_frame_only_jf(trained, cfg, data)
    assert long_after > long_before + 0.10
    print(f"J&F {evals[0]['J&F-Mean']:.3f} at init -> {evals[-1]['J&F-Mean']:.3f} trained; "
          f"first frame only {long_before:.3f} -> {long_after:.3f}; "
          f"held-out cycle accuracy {before['cycle_acc']:.3f} -> {after['cycle_acc']:.3f}")


@pytest.mark.slow
def test_crw_roi_mode_learns_long_range_correspondence(tmp_path):
    """``model.mode=roi`` (one encoder pass per frame, patches pooled from the feature map)
    learns: the loss falls and first-frame-only propagation gains the margin required of patch mode."""
    data, run, args = train_on_synthetic_video(tmp_path, "roi", evaluate=False)
    train_rows = log_rows(run, "train")
    assert sum(r["loss"] for r in train_rows[-2:]) / 2 < 0.6 * math.log(49)
    cfg, initial, trained = initial_and_trained(run, args)
    long_before, long_after = first_frame_only_jf(initial, cfg, data), first_frame_only_jf(trained, cfg, data)
    assert long_after > long_before + 0.10
    print(f"roi: first frame only {long_before:.3f} -> {long_after:.3f}")
