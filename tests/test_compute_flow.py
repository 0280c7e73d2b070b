"""DIS optical flow: accuracy on known motion, the cached-flow tool (files, resume, errors, PNGs)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from densessl.cli import main as cli_main
from densessl.datasets.davis import DavisDataset
from densessl.datasets.flow_io import flow_to_color, read_flow
from densessl.datasets.synthetic import SyntheticConfig, write_synthetic_davis
from densessl.tools.compute_flow import is_complete_flow
from densessl.tools.compute_flow import main as tool_main
from densessl.video.optical_flow import compute_sequence_flows, dis_flow, warp_by_flow
from conftest import MINI_DAVIS, requires_mini_davis, tree_hash

GAPS = (1, -1, 2, -2)
NUM_FRAMES = 6
# Large enough for real motion (about 1–2 px a frame); 64×96 frames move well under a pixel.
HEIGHT, WIDTH = 128, 224


# --- helpers: independent references --------------------------------------------------------


def _smooth_texture(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random gray texture in [0, 1], ``height×width`` float32."""
    coarse = rng.normal(size=(height // 6 + 3, width // 6 + 3)).astype(np.float32)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    field = cv2.GaussianBlur(field, (0, 0), 1.5)
    return (field - field.min()) / (field.max() - field.min())


def _bilinear(image: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Sample ``image`` (``H×W`` or ``H×W×C``) at float coordinates, clamping at the border."""
    height, width = image.shape[:2]
    x = np.clip(x, 0, width - 1)
    y = np.clip(y, 0, height - 1)
    x0 = np.minimum(np.floor(x).astype(int), width - 2)
    y0 = np.minimum(np.floor(y).astype(int), height - 2)
    fx, fy = x - x0, y - y0
    if image.ndim == 3:
        fx, fy = fx[..., None], fy[..., None]
    top = image[y0, x0] * (1 - fx) + image[y0, x0 + 1] * fx
    bottom = image[y0 + 1, x0] * (1 - fx) + image[y0 + 1, x0 + 1] * fx
    return top * (1 - fy) + bottom * fy


def _expected_files(root: Path, out: Path, gaps=GAPS, suffix=".flo") -> set[Path]:
    """Every flow file the tool should write: one per frame whose partner t + gap exists."""
    expected = set()
    for seq_dir in sorted((root / "JPEGImages" / "480p").iterdir()):
        names = sorted(p.stem for p in seq_dir.glob("*.jpg"))
        for t, name in enumerate(names):
            for gap in gaps:
                if 0 <= t + gap < len(names):
                    expected.add(out / f"{gap:+d}" / seq_dir.name / f"{name}{suffix}")
    return expected


def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


def _non_occluded(gt: np.ndarray, ids0: np.ndarray, ids1: np.ndarray, margin: int = 8) -> np.ndarray:
    """Pixels whose ground-truth target lands inside frame t+1 on the same layer (same id), away
    from the image border."""
    height, width = ids0.shape
    yy, xx = np.mgrid[:height, :width]
    tx = np.rint(xx + gt[..., 0]).astype(int)
    ty = np.rint(yy + gt[..., 1]).astype(int)
    keep = (tx >= 0) & (tx < width) & (ty >= 0) & (ty < height)
    same = np.zeros_like(keep)
    same[keep] = ids1[ty[keep], tx[keep]] == ids0[keep]
    interior = np.zeros_like(keep)
    interior[margin:-margin, margin:-margin] = True
    return same & interior


@pytest.fixture(scope="module")
def synthetic_set(tmp_path_factory) -> Path:
    """Two synthetic sequences, 6 frames of 128×224, with ground-truth forward flow."""
    root = tmp_path_factory.mktemp("synthetic") / "data"
    config = SyntheticConfig(num_sequences=2, num_frames=NUM_FRAMES, height=HEIGHT, width=WIDTH,
                             num_val=2, write_video=False, workers=1)
    write_synthetic_davis(root, config, progress=False)
    return root


@pytest.fixture(scope="module")
def computed(synthetic_set: Path, tmp_path_factory) -> Path:
    """The tool's output for ``synthetic_set`` (two worker processes, all four gaps)."""
    before = tree_hash(synthetic_set)
    out = tmp_path_factory.mktemp("flows") / "flows"
    assert tool_main(["--davis-root", str(synthetic_set), "--out", str(out), "--workers", "2",
                      "--quiet"]) == 0
    assert tree_hash(synthetic_set) == before, "the dataset must not be modified"
    return out


# --- DIS itself ----------------------------------------------------------------------------------


@pytest.mark.parametrize("preset", ["ultrafast", "fast", "medium"])
def test_dis_recovers_a_subpixel_translation(preset):
    rng = np.random.default_rng(0)
    height, width, pad = 72, 104, 8
    texture = _smooth_texture(rng, height + 2 * pad, width + 2 * pad)
    yy, xx = np.mgrid[:height, :width].astype(np.float64)
    first = (255 * _bilinear(texture, xx + pad, yy + pad)).round().astype(np.uint8)
    for dx, dy in [(1.3, -0.6), (0.4, 0.25), (-2.7, 1.8)]:
        # Pixel (x, y) of the first image is found at (x + dx, y + dy) in the second one.
        second = (255 * _bilinear(texture, xx + pad - dx, yy + pad - dy)).round().astype(np.uint8)
        flow = dis_flow(np.stack([first] * 3, -1), np.stack([second] * 3, -1), preset)
        assert flow.shape == (height, width, 2) and flow.dtype == np.float32
        interior = flow[10:-10, 10:-10]
        error = np.linalg.norm(interior - np.array([dx, dy], dtype=np.float32), axis=-1).mean()
        assert error < 0.3, (preset, dx, dy, error)


def test_compute_sequence_flows_matches_pairwise_dis(synthetic_set):
    seq = DavisDataset(synthetic_set, year=2017, split="val")[0]
    frames = [seq.frame(i) for i in range(seq.num_frames)]
    flows = compute_sequence_flows(frames, GAPS, "fast")
    assert sorted(flows) == sorted(GAPS)
    for gap in GAPS:
        assert len(flows[gap]) == NUM_FRAMES
        for t in range(NUM_FRAMES):
            if not 0 <= t + gap < NUM_FRAMES:
                assert flows[gap][t] is None
                continue
            reference = dis_flow(frames[t], frames[t + gap], "fast")  # a fresh instance per pair
            np.testing.assert_allclose(flows[gap][t], reference, atol=1e-5)


# --- the tool ------------------------------------------------------------------------------------


def test_tool_writes_exactly_the_expected_files(synthetic_set, computed):
    expected = _expected_files(synthetic_set, computed)
    assert len(expected) == 2 * (2 * (NUM_FRAMES - 1) + 2 * (NUM_FRAMES - 2))
    assert _files_under(computed) == expected  # nothing else: no frames without partner, no temp files
    for path in expected:
        flow = read_flow(path)
        assert flow.shape == (HEIGHT, WIDTH, 2) and np.isfinite(flow).all()


def test_tool_files_are_the_library_flows(synthetic_set, computed):
    seq = DavisDataset(synthetic_set, year=2017, split="val")[1]
    frames = [seq.frame(i) for i in range(seq.num_frames)]
    for t, gap in [(0, 2), (3, -2), (4, 1), (5, -1)]:
        cached = read_flow(computed / f"{gap:+d}" / seq.name / f"{t:05d}.flo")
        np.testing.assert_allclose(cached, dis_flow(frames[t], frames[t + gap]), atol=1e-5)


def test_forward_flow_agrees_with_ground_truth(synthetic_set, computed):
    dataset = DavisDataset(synthetic_set, year=2017, split="val")
    for seq in dataset:
        errors, magnitudes = [], []
        for t in range(seq.num_frames - 1):
            gt = read_flow(synthetic_set / "Flows" / "gt" / "480p" / seq.name / f"{t:05d}.flo")
            flow = read_flow(computed / "+1" / seq.name / f"{t:05d}.flo")
            keep = _non_occluded(gt, seq.mask(t), seq.mask(t + 1))
            assert keep.mean() > 0.5
            errors.append(np.linalg.norm(flow - gt, axis=-1)[keep])
            magnitudes.append(np.linalg.norm(gt, axis=-1)[keep])
        epe = float(np.concatenate(errors).mean())
        zero_flow_epe = float(np.concatenate(magnitudes).mean())
        # Measured: 0.29–0.38 px on these sequences (the frames carry blur, noise and
        # illumination changes that the ground truth ignores); zero flow scores 0.9–2.1 px.
        assert epe < 0.6, (seq.name, epe)
        assert epe < 0.5 * zero_flow_epe, (seq.name, epe, zero_flow_epe)


def test_backward_flow_inverts_forward_flow(synthetic_set, computed):
    dataset = DavisDataset(synthetic_set, year=2017, split="val")
    for seq in dataset:
        mismatch, moved = [], []
        for t in range(seq.num_frames - 1):
            gt = read_flow(synthetic_set / "Flows" / "gt" / "480p" / seq.name / f"{t:05d}.flo")
            keep = _non_occluded(gt, seq.mask(t), seq.mask(t + 1))
            forward = read_flow(computed / "+1" / seq.name / f"{t:05d}.flo")
            backward = read_flow(computed / "-1" / seq.name / f"{t + 1:05d}.flo")
            yy, xx = np.mgrid[:HEIGHT, :WIDTH].astype(np.float64)
            back_at_target = _bilinear(
                backward.astype(np.float64), xx + forward[..., 0], yy + forward[..., 1]
            )
            mismatch.append(np.linalg.norm(forward + back_at_target, axis=-1)[keep])
            moved.append(np.linalg.norm(forward, axis=-1)[keep])
        error, motion = float(np.concatenate(mismatch).mean()), float(np.concatenate(moved).mean())
        # Measured: 0.07–0.14 px against a motion of 0.9–2.1 px.
        assert error < 0.3, (seq.name, error)
        assert error < 0.25 * motion, (seq.name, error, motion)


def test_resume_skips_existing_files_and_overwrite_recomputes(synthetic_set, tmp_path, capsys):
    out = tmp_path / "flows"
    args = ["--davis-root", str(synthetic_set), "--sequences", "synth-001", "--out", str(out),
            "--workers", "1", "--quiet"]
    assert tool_main(args) == 0
    files = sorted(_files_under(out))
    assert len(files) == 2 * (NUM_FRAMES - 1) + 2 * (NUM_FRAMES - 2)
    contents = {path: path.read_bytes() for path in files}
    old = 1_000_000_000_000_000_000  # 2001, in ns
    for path in files:
        os.utime(path, ns=(old, old))
    capsys.readouterr()

    assert tool_main(args) == 0
    assert "computed 0 flows, skipped 18 existing" in capsys.readouterr().out
    assert all(path.stat().st_mtime_ns == old for path in files)

    # A missing file whose hidden temporary file was left by a killed run, and a truncated file
    # (as a non-atomic writer would leave): both are recomputed, nothing else is touched.
    missing = out / "+1" / "synth-001" / "00002.flo"
    missing.unlink()
    stale = missing.with_name(".00002.flo.12345.tmp")
    stale.write_bytes(contents[missing][:100])
    truncated = out / "-2" / "synth-001" / "00004.flo"
    truncated.write_bytes(contents[truncated][: len(contents[truncated]) // 2])
    os.utime(truncated, ns=(old, old))
    assert tool_main(args) == 0
    assert "computed 2 flows, skipped 16 existing" in capsys.readouterr().out
    assert missing.read_bytes() == contents[missing]
    assert truncated.read_bytes() == contents[truncated]
    assert truncated.stat().st_mtime_ns != old
    assert all(path.stat().st_mtime_ns == old for path in files if path not in (missing, truncated))

    assert tool_main(args + ["--overwrite"]) == 0
    assert "computed 18 flows, skipped 0 existing" in capsys.readouterr().out
    assert all(path.stat().st_mtime_ns != old for path in files)
    assert all(path.read_bytes() == contents[path] for path in files)  # DIS is deterministic


def test_completeness_check_of_flow_files(tmp_path):
    from densessl.datasets.flow_io import write_flow

    flow = np.random.default_rng(0).normal(size=(5, 7, 2)).astype(np.float32)
    for suffix in (".flo", ".npy"):
        path = tmp_path / f"a{suffix}"
        write_flow(path, flow)
        assert is_complete_flow(path, 5, 7)
        assert not is_complete_flow(path, 7, 5)
        data = path.read_bytes()
        path.write_bytes(data[:-4])
        assert not is_complete_flow(path, 5, 7)
        path.write_bytes(data[:6])
        assert not is_complete_flow(path, 5, 7)
    assert not is_complete_flow(tmp_path / "missing.flo", 5, 7)


def test_npy_format_and_gap_subset(synthetic_set, computed, tmp_path):
    out = tmp_path / "npy"
    assert tool_main(["--davis-root", str(synthetic_set), "--out", str(out), "--gaps", "+2,-1",
                      "--format", "npy", "--workers", "1", "--quiet"]) == 0
    expected = _expected_files(synthetic_set, out, gaps=(2, -1), suffix=".npy")
    assert _files_under(out) == expected
    for path in expected:
        flo = computed / path.parent.parent.name / path.parent.name / f"{path.stem}.flo"
        np.testing.assert_array_equal(np.load(path), read_flow(flo))


def test_visualize_writes_colour_pngs_of_the_frame_size(synthetic_set, tmp_path):
    out = tmp_path / "flows"
    args = ["--davis-root", str(synthetic_set), "--sequences", "synth-000", "--out", str(out),
            "--gaps", "+1", "-2", "--workers", "1", "--quiet"]
    assert tool_main(args) == 0
    assert not (out / "vis").exists()
    # Asking for the pictures later draws them from the cached flows without recomputing them.
    assert tool_main(args + ["--visualize"]) == 0
    flows = {p for p in _files_under(out) if p.suffix == ".flo"}
    pngs = _files_under(out / "vis")
    assert len(flows) == (NUM_FRAMES - 1) + (NUM_FRAMES - 2)
    assert pngs == {out / "vis" / p.relative_to(out).with_suffix(".png") for p in flows}
    for flo in flows:
        with Image.open(out / "vis" / flo.relative_to(out).with_suffix(".png")) as image:
            assert image.mode == "RGB" and image.size == (WIDTH, HEIGHT)
            np.testing.assert_array_equal(np.asarray(image), flow_to_color(read_flow(flo)))


# --- bad input -----------------------------------------------------------------------------------


def test_output_inside_the_dataset_is_refused_unless_asked(synthetic_set, tmp_path, capsys):
    before = tree_hash(synthetic_set)
    inside = synthetic_set / "Flows" / "dis"
    base = ["--davis-root", str(synthetic_set), "--workers", "1", "--quiet", "--gaps", "+1"]
    for out in (inside, synthetic_set):
        assert tool_main(base + ["--out", str(out)]) == 2
        assert "inside the dataset" in capsys.readouterr().err
    assert tree_hash(synthetic_set) == before

    # The same through the console command; with --inside-dataset the run goes ahead.
    copy = tmp_path / "data"
    write_synthetic_davis(copy, SyntheticConfig(num_sequences=1, num_frames=3, height=32, width=48,
                                                num_val=1, write_video=False, workers=1), progress=False)
    assert cli_main(["compute-flow", "--davis-root", str(copy), "--out", str(copy / "dis"),
                     "--quiet"]) == 2
    assert cli_main(["compute-flow", "--davis-root", str(copy), "--out", str(copy / "dis"),
                     "--inside-dataset", "--workers", "1", "--quiet"]) == 0
    assert len(_files_under(copy / "dis")) == 2 * 2 + 2 * 1


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--gaps", "+1", "0"], "nonzero"),
        (["--gaps", "two"], "'two'"),
        (["--preset", "slow"], "unknown DIS preset 'slow'"),
        (["--workers", "0"], "--workers"),
        (["--sequences", "synth-009"], "unknown sequence 'synth-009'"),
    ],
)
def test_bad_options_exit_2_naming_the_problem(synthetic_set, tmp_path, capsys, extra, message):
    out = tmp_path / "flows"
    assert tool_main(["--davis-root", str(synthetic_set), "--out", str(out), "--quiet"] + extra) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() or not _files_under(out)


def test_missing_dataset_root_is_named(tmp_path, capsys):
    missing = tmp_path / "no-such-davis"
    assert tool_main(["--davis-root", str(missing), "--out", str(tmp_path / "flows")]) == 2
    err = capsys.readouterr().err
    assert str(missing) in err and re.search("not found", err)


@requires_mini_davis
def test_forward_backward_consistency_on_real_frames():
    seq = DavisDataset(MINI_DAVIS, year=2016, split="val", sequences=["blackswan"])[0]
    frames = [seq.frame(i) for i in range(3)]
    flows = compute_sequence_flows(frames, (1, -1), "medium")
    height, width = frames[0].shape[:2]
    yy, xx = np.mgrid[:height, :width].astype(np.float64)
    for t in range(2):
        forward, backward = flows[1][t], flows[-1][t + 1]
        back_at_target = _bilinear(
            backward.astype(np.float64), xx + forward[..., 0], yy + forward[..., 1]
        )
        mismatch = np.linalg.norm(forward + back_at_target, axis=-1)
        # Measured on blackswan: median 0.08–0.09 px, 88 % of pixels within 1 px, for a mean
        # motion of about 6 px (occlusions and the water account for the rest).
        assert np.linalg.norm(forward, axis=-1).mean() > 3
        assert np.median(mismatch) < 0.3
        assert (mismatch < 1).mean() > 0.8


def naive_backward_warp(values: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """values[y + dy, x + dx] by explicit bilinear interpolation, coordinates clamped to the frame."""
    height, width = values.shape[:2]
    out = np.zeros_like(values, dtype=np.float64)
    for y in range(height):
        for x in range(width):
            sx = min(max(x + float(flow[y, x, 0]), 0.0), width - 1.0)
            sy = min(max(y + float(flow[y, x, 1]), 0.0), height - 1.0)
            x0, y0 = int(np.floor(sx)), int(np.floor(sy))
            x1, y1 = min(x0 + 1, width - 1), min(y0 + 1, height - 1)
            ax, ay = sx - x0, sy - y0
            out[y, x] = ((1 - ay) * ((1 - ax) * values[y0, x0] + ax * values[y0, x1])
                         + ay * ((1 - ax) * values[y1, x0] + ax * values[y1, x1]))
    return out


@pytest.mark.parametrize("channels", [None, 3])
def test_warp_by_flow_matches_naive_bilinear_sampling(channels):
    rng = np.random.default_rng(0)
    shape = (13, 17) if channels is None else (13, 17, channels)
    values = rng.random(shape).astype(np.float32)
    flow = rng.uniform(-4, 4, size=(13, 17, 2)).astype(np.float32)  # some samples land outside
    warped = warp_by_flow(values, flow)
    assert warped.shape == values.shape and warped.dtype == np.float32
    np.testing.assert_allclose(warped, naive_backward_warp(values, flow), atol=1e-5)
    with pytest.raises(ValueError, match="same H×W"):
        warp_by_flow(values, flow[:-1])


def test_warp_by_flow_brings_the_next_frame_back_with_the_forward_flow():
    """Frame t+1 warped by the flow t → t+1 is frame t (a smooth image under a sub-pixel shift)."""
    ys, xs = np.mgrid[0:40, 0:50].astype(np.float32)
    image = lambda x0: np.sin(0.3 * (xs - x0)) + np.cos(0.2 * ys)  # noqa: E731
    flow = np.zeros((40, 50, 2), np.float32)
    flow[..., 0] = 1.5  # everything moves 1.5 px right
    back = warp_by_flow(image(1.5), flow)
    np.testing.assert_allclose(back[:, :45], image(0.0)[:, :45], atol=0.02)  # away from the clamped border
