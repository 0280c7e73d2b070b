"""Pictures: overlays, training curves, feature colours, the CRW walk and the CIS masks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from densessl.eval.visualize import (
    _curve_panels,
    evenly_spaced,
    feature_pca_images,
    overlay_mask,
    position_colours,
    save_cis_picture,
    save_run_comparison,
    save_training_curves,
    save_walk_picture,
)


def test_overlay_leaves_background_and_colours_objects():
    frame = np.full((6, 8, 3), 100, np.uint8)
    ids = np.zeros((6, 8), np.uint8)
    ids[2:5, 2:6] = 1
    out = overlay_mask(frame, ids, alpha=0.5)
    assert (out[ids == 0] == 100).all()
    assert not (out[3, 3] == 100).all()


def write_log(path, records, garbage=""):
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + garbage)


def test_training_curves_panels_and_picture(tmp_path):
    records = [
        {"step": 0, "kind": "eval", "time": 1.0, "J&F-Mean": 0.40, "J-Mean": 0.39},
        *({"step": s, "kind": "train", "time": 2.0 + s, "loss": 4.0 - s, "loss_k2": 3.0 - s, "loss_k3": 5.0 - s,
           "lr": 1e-4, "epoch": s // 2, "flag": True, "note": "text", "grad_norm": float("nan")}
          for s in (1, 2, 3)),
        {"step": 3, "kind": "eval", "time": 9.0, "J&F-Mean": 0.55, "J-Mean": 0.52, "frames_per_second": 12.5},
    ]
    log = tmp_path / "run" / "log.jsonl"
    log.parent.mkdir()
    write_log(log, records, garbage='{"step": 4, "kind": "tr')  # cut short by an interrupted run
    panels = _curve_panels([json.loads(line) for line in log.read_text().splitlines()[:-1]])
    # no epoch, bools, strings or NaN; scores share a panel, an eval timing gets its own
    assert set(panels) == {"loss", "loss_k*", "lr", "evaluation", "eval/frames_per_second"}
    assert panels["loss_k*"]["loss_k3"] == ([1, 2, 3], [4.0, 3.0, 2.0])
    assert panels["evaluation"]["J&F-Mean"] == ([0, 3], [0.40, 0.55])

    out = tmp_path / "curves.png"
    titles = save_training_curves(log, out)
    assert titles == ["loss", "loss_k*", "lr", "evaluation", "eval/frames_per_second"]
    with Image.open(out) as image:
        assert image.size[0] > 600 and image.size[1] > 200


def test_training_curves_of_an_empty_log_draw_nothing(tmp_path):
    log = tmp_path / "log.jsonl"
    write_log(log, [{"step": 0, "kind": "train", "time": 1.0}])
    assert save_training_curves(log, tmp_path / "curves.png") == []
    assert not (tmp_path / "curves.png").exists()


def planted_features(generator: torch.Generator, channels: int = 16, size: tuple[int, int] = (12, 20)) -> torch.Tensor:
    """C×h×w features whose variance lies mostly along three known directions."""
    directions = torch.linalg.qr(torch.randn(channels, channels, generator=generator))[0][:, :3]
    strengths = torch.tensor([5.0, 3.0, 2.0])
    codes = torch.randn(size[0] * size[1], 3, generator=generator) * strengths
    flat = codes @ directions.T + 0.05 * torch.randn(size[0] * size[1], channels, generator=generator)
    return flat.T.reshape(channels, *size)


def test_feature_pca_follows_the_principal_components():
    """Each colour channel is an increasing function of the projection on the matching
    eigenvector of the covariance (numpy's, computed here), up to the clipping."""
    features = planted_features(torch.Generator().manual_seed(0))
    picture = feature_pca_images([features])[0]
    assert picture.shape == (12, 20, 3) and picture.dtype == np.uint8
    flat = features.reshape(16, -1).T.double().numpy()
    centred = flat - flat.mean(axis=0)
    _, eigenvectors = np.linalg.eigh(np.cov(centred, rowvar=False))  # ascending eigenvalues
    for channel in range(3):
        vector = eigenvectors[:, -1 - channel]
        vector = vector * np.sign(vector[np.abs(vector).argmax()])  # the documented sign rule
        projection = centred @ vector
        colour = picture[..., channel].reshape(-1).astype(float)
        inside = (colour > 0) & (colour < 255)
        assert inside.mean() > 0.9  # 1st–99th percentile scale
        assert np.corrcoef(projection[inside], colour[inside])[0, 1] > 0.999


def test_feature_pca_colours_move_with_the_features():
    """The basis and scale of the first map apply to all: shifted features give the shifted
    picture, and a point keeps its colour."""
    first = planted_features(torch.Generator().manual_seed(1))
    shifted = torch.roll(first, shifts=3, dims=-1)
    a, b = feature_pca_images([first.unsqueeze(0), shifted.unsqueeze(0)])
    assert np.array_equal(np.roll(a, 3, axis=1), b)


def test_feature_pca_enlarges_and_handles_few_channels():
    features = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(2))
    picture = feature_pca_images([features], size=(8, 12))[0]
    assert picture.shape == (8, 12, 3)
    assert (picture[..., 2] == 0).all()  # two channels: no third component
    assert np.array_equal(picture[::2, ::2], feature_pca_images([features])[0])


@pytest.mark.parametrize("scale", [1.0, 1e-3])
def test_feature_pca_does_not_depend_on_the_features_scale(scale):
    features = planted_features(torch.Generator().manual_seed(3))
    difference = feature_pca_images([features * scale])[0].astype(int) - feature_pca_images([features])[0]
    assert np.abs(difference).max() <= 1  # rounding only


def test_position_colours_differ_across_the_frame_and_vary_smoothly():
    points = np.array([[4.0, 4.0], [6.0, 4.0], [60.0, 4.0], [4.0, 60.0]])
    colours = position_colours(points, 64).astype(int)
    near, across, down = (np.abs(colours[0] - colours[i]).sum() for i in (1, 2, 3))
    assert across > 100 and down > 100 and 4 * near < min(across, down)


def test_walk_picture_panels(tmp_path):
    """A walk that stays put colours the last frame exactly like the first: the first two panels
    are equal below their labels; nodes that do not return home become rings in the third."""
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    frames = np.stack([frame, frame, frame])
    grid = np.stack(np.meshgrid([8.0, 16.0, 24.0], [8.0, 16.0, 24.0]), axis=-1).reshape(-1, 2)
    centres = np.stack([grid] * 3)
    home = np.ones(9, bool)
    path = tmp_path / "walk.png"
    save_walk_picture(path, frames, centres, np.arange(9), home)
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape == (22 + 256, 3 * 256 + 2 * 6, 3)  # 32 px frames enlarged ×8
    first, last, third = (picture[22:, i * 262 : i * 262 + 256] for i in range(3))
    assert np.array_equal(first, last) and np.array_equal(first, third)
    home[4] = False
    save_walk_picture(path, frames, centres, np.roll(np.arange(9), 1), home)
    picture = np.asarray(Image.open(path).convert("RGB"))
    first, last, third = (picture[22:, i * 262 : i * 262 + 256] for i in range(3))
    assert not np.array_equal(first, last) and not np.array_equal(first, third)


def test_cis_picture_shows_the_reconstruction_only_inside_the_mask(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (2, 8, 12, 3), dtype=np.uint8)
    flows = rng.normal(size=(2, 8, 12, 2)).astype(np.float32)
    masks = np.zeros((2, 8, 12), np.float32)
    masks[1, 2:6, 3:9] = 0.9
    path = tmp_path / "cis.png"
    save_cis_picture(path, images, flows, masks, -flows)
    picture = np.asarray(Image.open(path).convert("RGB"))
    assert picture.shape == (22 + 2 * 128, 4 * 192, 3)  # 8×12 tiles enlarged ×16
    tile = lambda row, column: picture[22 + row * 128 : 22 + (row + 1) * 128, column * 192 : (column + 1) * 192]
    assert np.array_equal(tile(0, 1), tile(0, 3))  # nothing hidden: the flow itself
    assert np.array_equal(tile(0, 0), np.kron(images[0], np.ones((16, 16, 1), np.uint8)))
    hidden = np.kron(masks[1] > 0.5, np.ones((16, 16), bool))
    assert np.array_equal(tile(1, 1)[~hidden], tile(1, 3)[~hidden])  # outside the mask: the flow
    assert not np.array_equal(tile(1, 1)[hidden], tile(1, 3)[hidden])  # inside: the reconstruction


def run_log(folder, seconds_per_step: float, losses, scores):
    """A run folder with a log of train records (steps 1, 2, …) and evaluations (step: score)."""
    folder.mkdir(parents=True)
    records = [{"step": s, "kind": "train", "time": 0.0, "loss": v, "lr": 1e-3, "elapsed_s": s * seconds_per_step}
               for s, v in enumerate(losses, 1)]
    records += [{"step": s, "kind": "eval", "time": 0.0, "J&F-Mean": v, "elapsed_s": s * seconds_per_step}
                for s, v in scores.items()]
    write_log(folder / "log.jsonl", records)
    return folder


def test_run_comparison_by_step_or_minutes(tmp_path, monkeypatch):
    import densessl.eval.visualize as visualize

    slow = run_log(tmp_path / "slow", 60.0, [3.0, 2.5, 2.0], {3: 0.5})
    fast = run_log(tmp_path / "fast", 20.0, [3.0, 2.8, 2.6, 2.4, 2.2, 2.0, 1.9, 1.8, 1.7], {9: 0.6})
    drawn = {}
    monkeypatch.setattr(visualize, "_draw_panels", lambda runs, titles, out, x_label, title: drawn.update(
        runs=runs, titles=titles, x_label=x_label))
    logs = {"slow": slow / "log.jsonl", "fast": fast / "log.jsonl"}
    assert save_run_comparison(logs, tmp_path / "c.png") == ["loss", "lr", "evaluation"]
    assert drawn["runs"]["fast"]["loss"]["loss"][0] == [float(s) for s in range(1, 10)]
    assert save_run_comparison(logs, tmp_path / "c.png", x="minutes", metrics=["loss", "J&F-Mean"]) == [
        "loss", "evaluation"]
    assert drawn["x_label"] == "training minutes"
    assert drawn["runs"]["slow"]["evaluation"]["J&F-Mean"] == ([3.0], [0.5])  # step 3 at 60 s a step
    assert drawn["runs"]["fast"]["evaluation"]["J&F-Mean"] == ([3.0], [0.6])  # step 9 at 20 s a step


def test_run_comparison_errors_name_the_log(tmp_path):
    from densessl.errors import InputError

    run = run_log(tmp_path / "a", 1.0, [1.0, 0.5], {})
    old = tmp_path / "old"
    old.mkdir()
    write_log(old / "log.jsonl", [{"step": 1, "kind": "train", "time": 0.0, "loss": 1.0}])  # no elapsed_s
    with pytest.raises(InputError, match=r"old/log.jsonl: the log holds no metric records with their training"):
        save_run_comparison({"a": run / "log.jsonl", "old": old / "log.jsonl"}, tmp_path / "c.png", x="minutes")
    with pytest.raises(InputError, match="no run logged any of the metrics nope"):
        save_run_comparison({"a": run / "log.jsonl"}, tmp_path / "c.png", metrics=["nope"])
    assert not (tmp_path / "c.png").exists()


def test_compare_runs_tool(tmp_path, capsys):
    from densessl.cli import main as cli

    a = run_log(tmp_path / "a", 60.0, [3.0, 2.5, 2.0], {3: 0.5})
    b = run_log(tmp_path / "b", 20.0, [3.0, 2.8, 2.6], {3: 0.6})
    out = tmp_path / "compare.png"
    assert cli(["compare-runs", str(a), str(b), "--x", "minutes", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    with Image.open(out) as picture:
        assert picture.size[0] > 600
    assert cli(["compare-runs", str(a), str(b), "--out", str(out)]) == 2  # exists
    assert "pass --overwrite" in capsys.readouterr().err
    assert cli(["compare-runs", str(a), str(tmp_path), "--out", str(tmp_path / "x.png")]) == 2
    assert "no log.jsonl" in capsys.readouterr().err
    assert cli(["compare-runs", str(a), str(b), "--labels", "one", "--out", str(tmp_path / "y.png")]) == 2
    assert "1 labels for 2 runs" in capsys.readouterr().err


def test_evenly_spaced_indices():
    assert evenly_spaced(40, 5) == [0, 10, 20, 29, 39]  # round(9.75) = 10, round(29.25) = 29
    assert evenly_spaced(3, 5) == [0, 1, 2]  # fewer frames than asked: each once
    assert evenly_spaced(1, 4) == [0]
    assert evenly_spaced(10, 1) == [0]
    for length in range(1, 30):
        for count in range(2, 8):
            picks = evenly_spaced(length, count)
            assert picks[0] == 0 and picks[-1] == length - 1 and len(picks) == min(length, count)
