"""The synthetic DAVIS-style generator: determinism, scene content, exact flow, files on disk."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from densessl.datasets.flow_io import read_flo
from densessl.datasets.palette import read_id_png
from densessl.datasets.synthetic import (
    SyntheticConfig,
    generate_sequence,
    sequence_name,
    split_names,
    write_synthetic_davis,
)
from densessl.datasets.synthetic.generate import sequence_rngs
from densessl.datasets.synthetic.scene import build_scene
from densessl.errors import InputError
from densessl.tools.make_synthetic_davis import main as tool_main

SMALL = SyntheticConfig(num_sequences=3, num_frames=30, height=64, width=112, workers=1)


@pytest.fixture(scope="module")
def sequences() -> list:
    """Six clean (no illumination/noise/blur) sequences with flow, 30 frames at 64×112."""
    return [generate_sequence(SMALL, i, with_flow=True, photometric=False) for i in range(6)]


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


# --- determinism ---------------------------------------------------------------------------------


def test_same_seed_same_bytes_different_seed_differs():
    config = dataclasses.replace(SMALL, num_frames=6)
    a = generate_sequence(config, 1)
    b = generate_sequence(config, 1)
    assert a.frames.dtype == np.uint8 and a.frames.shape == (6, 64, 112, 3)
    assert a.masks.dtype == np.uint8 and a.masks.shape == (6, 64, 112)
    assert a.flows.dtype == np.float32 and a.flows.shape == (5, 64, 112, 2)
    for field in ("frames", "masks", "flows"):
        assert _digest(getattr(a, field)) == _digest(getattr(b, field))
    other_seed = generate_sequence(dataclasses.replace(config, seed=1), 1)
    other_index = generate_sequence(config, 2)
    assert _digest(other_seed.frames) != _digest(a.frames)
    assert _digest(other_index.frames) != _digest(a.frames)
    # A sequence does not depend on how many sequences the set has.
    bigger = generate_sequence(dataclasses.replace(config, num_sequences=50), 1)
    assert _digest(bigger.frames) == _digest(a.frames)


def test_photometric_effects_change_pixels_not_geometry():
    config = dataclasses.replace(SMALL, num_frames=4)
    clean = generate_sequence(config, 0, photometric=False)
    noisy = generate_sequence(config, 0, photometric=True)
    np.testing.assert_array_equal(clean.masks, noisy.masks)
    np.testing.assert_array_equal(clean.flows, noisy.flows)
    difference = np.abs(clean.frames.astype(int) - noisy.frames.astype(int))
    assert difference.mean() > 1.0  # illumination, blur and noise are applied
    # noise differs between frames: the residual is not the same image twice
    assert np.abs(difference[1] - difference[0]).mean() > 0.5


# --- scene content -------------------------------------------------------------------------------


def test_ids_areas_and_first_frame_visibility(sequences):
    counts = set()
    for seq in sequences:
        k = seq.num_objects
        counts.add(k)
        assert SMALL.min_objects <= k <= SMALL.max_objects
        assert seq.masks.max() <= k
        # every object is clearly visible in frame 0 (needed for semi-supervised propagation)
        assert set(np.unique(seq.masks[0])) == set(range(k + 1))
        # visible_area is the mask pixel count; visible ≤ in frame ≤ amodal
        per_id = np.stack([(seq.masks == i).sum(axis=(1, 2)) for i in range(1, k + 1)], -1)
        np.testing.assert_array_equal(seq.visible_area, per_id)
        assert np.all(seq.visible_area <= seq.in_frame_area)
        assert np.all(seq.in_frame_area <= seq.amodal_area)
    assert len(counts) > 1  # the object count varies


def test_objects_move_occlude_and_leave_the_frame(sequences):
    occlusion = partial_exit = False
    for seq in sequences:
        for k in range(1, seq.num_objects + 1):
            ys, xs = np.nonzero(seq.masks[0] == k)
            start = np.array([xs.mean(), ys.mean()])
            moved = 0.0
            for t in range(1, len(seq.masks)):
                ys, xs = np.nonzero(seq.masks[t] == k)
                if xs.size:
                    moved = max(moved, float(np.linalg.norm([xs.mean(), ys.mean()] - start)))
            assert moved > 2.0, (seq.name, k)
        occlusion |= bool(np.any(seq.visible_area < seq.in_frame_area - 10))
        outside = (seq.in_frame_area > 0) & (seq.in_frame_area < 0.8 * seq.amodal_area)
        partial_exit |= bool(outside.any())
    assert occlusion and partial_exit


def test_object_shapes_are_non_convex(sequences):
    solidities = []
    for seq in sequences:
        for k in range(1, seq.num_objects + 1):
            t = int(np.argmax(seq.visible_area[:, k - 1] == seq.amodal_area[:, k - 1]))
            if seq.visible_area[t, k - 1] != seq.amodal_area[t, k - 1]:
                continue  # never fully visible
            mask = (seq.masks[t] == k).astype(np.uint8)
            contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            contour = max(contours, key=cv2.contourArea)
            solidities.append(cv2.contourArea(contour) / cv2.contourArea(cv2.convexHull(contour)))
    assert solidities and min(solidities) < 0.92


def _warp_error(seq, t: int, flow: np.ndarray) -> float:
    """Mean |frame_{t+1}(p + flow) − frame_t(p)| over pixels whose point stays visible on the
    same layer and in the frame, at least 2 px away from any object boundary (both frames)."""
    height, width = seq.masks.shape[1:]
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    true_x, true_y = xs + seq.flows[t, ..., 0], ys + seq.flows[t, ..., 1]
    tx = np.clip(np.rint(true_x).astype(int), 0, width - 1)
    ty = np.clip(np.rint(true_y).astype(int), 0, height - 1)
    kernel = np.ones((5, 5), np.uint8)
    edge0 = cv2.morphologyEx(seq.masks[t], cv2.MORPH_GRADIENT, kernel) > 0
    edge1 = cv2.morphologyEx(seq.masks[t + 1], cv2.MORPH_GRADIENT, kernel) > 0
    inside = (true_x >= 2) & (true_x <= width - 3) & (true_y >= 2) & (true_y <= height - 3)
    valid = inside & (seq.masks[t + 1][ty, tx] == seq.masks[t]) & ~edge0 & ~edge1[ty, tx]
    assert valid.mean() > 0.4
    warped = cv2.remap(
        seq.frames[t + 1].astype(np.float32), xs + flow[..., 0], ys + flow[..., 1],
        cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT,
    )
    return float(np.abs(warped - seq.frames[t].astype(np.float32)).mean(-1)[valid].mean())


def test_flow_warps_next_frame_onto_current(sequences):
    true, zero, shifted = [], [], []
    for seq in sequences:
        for t in range(0, len(seq.flows), 6):
            flow = seq.flows[t]
            true.append(_warp_error(seq, t, flow))
            zero.append(_warp_error(seq, t, np.zeros_like(flow)))
            shifted.append(min(
                _warp_error(seq, t, flow + np.float32(offset))
                for offset in ([0.5, 0], [-0.5, 0], [0, 0.5], [0, -0.5])
            ))
    true, zero, shifted = map(np.mean, (true, zero, shifted))
    assert true < 1.5  # only resampling error remains (grey levels, 0–255)
    assert true < 0.35 * zero
    assert true < 0.5 * shifted  # sub-pixel accurate: half a pixel off is much worse


def _canonical_naive(layer, t: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """g_t(p) = u + δ_t(u), u = A_t⁻¹ (p − o_t), written out independently (float64)."""
    points = np.stack([x, y], -1).astype(np.float64) - layer.origin[t]
    u = points @ np.linalg.inv(layer.linear[t]).T
    c = u.copy()
    d = layer.deformation
    if d is not None:
        for axis in range(2):
            for j in range(d.amp.shape[1]):
                phase = u @ d.k[axis, j] + d.rate[axis, j] * t * d.time_scale + d.phase[axis, j]
                c[:, axis] += d.amp[axis, j] * np.sin(phase)
    return c


@pytest.mark.parametrize("motion_scale", [1.0, 2.5])
def test_flow_maps_each_point_to_the_same_canonical_point(motion_scale):
    """Definition of the ground truth: the layer visible at p in frame t shows, at p + flow in
    frame t+1, the same point of its texture: g_{t+1}(p + flow(p)) = g_t(p)."""
    config = dataclasses.replace(SMALL, num_frames=6, motion_scale=motion_scale)
    checked = 0
    for index in range(4):
        scene = build_scene(config, sequence_rngs(config, index)[0])
        seq = generate_sequence(config, index, photometric=False)
        by_id = dict(zip(scene.ids, scene.objects))
        for t in range(config.num_frames - 1):
            for k in range(seq.num_objects + 1):
                ys, xs = np.nonzero(seq.masks[t] == k)
                layer = scene.background if k == 0 else by_id[k]
                flow = seq.flows[t][ys, xs]
                before = _canonical_naive(layer, t, xs, ys)
                after = _canonical_naive(layer, t + 1, xs + flow[:, 0], ys + flow[:, 1])
                assert np.abs(after - before).max() < 0.005, (index, t, k)
                checked += xs.size
    assert checked == 4 * 5 * 64 * 112


def test_motion_scale_keeps_the_first_frame_and_speeds_up_motion():
    slow = generate_sequence(dataclasses.replace(SMALL, num_frames=3), 1, photometric=False)
    fast = generate_sequence(dataclasses.replace(SMALL, num_frames=3, motion_scale=3.0), 1, photometric=False)
    assert np.array_equal(slow.frames[0], fast.frames[0])
    speed = lambda seq: float(np.linalg.norm(seq.flows[0], axis=-1).mean())  # noqa: E731
    assert speed(fast) > 2.0 * speed(slow)
    with pytest.raises(InputError, match="motion_scale"):
        dataclasses.replace(SMALL, motion_scale=0.0).validate()


def test_camera_zoom_zero_leaves_a_panning_camera():
    """Without zoom and roll the background moves rigidly: one translation per frame, at least
    the minimum pan speed; the default camera's flow varies across the background."""
    config = dataclasses.replace(SMALL, num_frames=4, camera_zoom=0.0, pan_speed=(0.01, 0.012))
    diag = float(np.hypot(config.height, config.width))
    for index in range(3):
        panning = generate_sequence(config, index, photometric=False)
        default = generate_sequence(dataclasses.replace(SMALL, num_frames=4), index, photometric=False)
        for t in range(3):
            background = panning.flows[t][panning.masks[t] == 0]
            assert np.ptp(background, axis=0).max() < 1e-3
            assert np.linalg.norm(background[0]) > 0.5 * 0.01 * diag  # the wobble may slow the pan a little
            assert np.ptp(default.flows[t][default.masks[t] == 0], axis=0).max() > 0.05
    for bad in (dict(camera_zoom=-1.0), dict(pan_speed=(0.01, 0.0)), dict(pan_speed=(-0.1, 0.1))):
        with pytest.raises(InputError, match=next(iter(bad))):
            dataclasses.replace(SMALL, **bad).validate()


def test_config_validation_names_the_setting():
    with pytest.raises(InputError, match="max_objects"):
        generate_sequence(dataclasses.replace(SMALL, min_objects=3, max_objects=2), 0)
    with pytest.raises(InputError, match="num_frames"):
        generate_sequence(dataclasses.replace(SMALL, num_frames=1), 0)
    with pytest.raises(InputError, match="val_fraction"):
        SyntheticConfig(val_fraction=1.5).validate()


def test_split_names():
    train, val = split_names(SyntheticConfig(num_sequences=5, val_fraction=0.4))
    assert train == ["synth-000", "synth-001", "synth-002"] and val == ["synth-003", "synth-004"]
    train, val = split_names(SyntheticConfig(num_sequences=5, num_val=1))
    assert len(train) == 4 and val == ["synth-004"]
    assert split_names(SyntheticConfig(num_sequences=4, val_fraction=0.0))[1] == []


# --- files on disk -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> tuple[Path, SyntheticConfig, list[str]]:
    root = tmp_path_factory.mktemp("synthetic") / "davis"
    config = dataclasses.replace(SMALL, num_frames=8, val_fraction=0.34)
    return root, config, write_synthetic_davis(root, config, progress=False)


def test_layout_is_readable(written):
    root, config, names = written
    assert names == [sequence_name(i) for i in range(3)]
    train = (root / "ImageSets/2017/train.txt").read_text().split()
    val = (root / "ImageSets/2017/val.txt").read_text().split()
    assert train == names[:2] and val == names[2:]
    meta = json.loads((root / "meta.json").read_text())
    assert meta["config"]["seed"] == 0 and (root / "README.txt").is_file()
    for name, info in zip(names, meta["sequences"]):
        assert info["name"] == name
        memory = generate_sequence(config, names.index(name))
        assert info["num_objects"] == memory.num_objects
        jpgs = sorted((root / "JPEGImages/480p" / name).glob("*.jpg"))
        pngs = sorted((root / "Annotations/480p" / name).glob("*.png"))
        flos = sorted((root / "Flows/gt/480p" / name).glob("*.flo"))
        assert [p.name for p in jpgs] == [f"{t:05d}.jpg" for t in range(8)]
        assert [p.stem for p in pngs] == [p.stem for p in jpgs]
        assert [p.name for p in flos] == [f"{t:05d}.flo" for t in range(7)]
        for t in (0, 7):
            with Image.open(pngs[t]) as image:
                assert image.mode == "P" and image.size == (112, 64)
            ids = read_id_png(pngs[t])
            np.testing.assert_array_equal(ids, memory.masks[t])
            assert ids.max() <= info["num_objects"]
            rgb = np.asarray(Image.open(jpgs[t]).convert("RGB"), dtype=np.float32)
            assert rgb.shape == (64, 112, 3)
            # the same frame through JPEG (chroma subsampled), in RGB order
            error = np.abs(rgb - memory.frames[t]).mean()
            assert error < 8
            assert error < 0.5 * np.abs(rgb - memory.frames[t][..., ::-1]).mean()
        np.testing.assert_array_equal(read_flo(flos[3]), memory.flows[3])


def test_video_decodes_with_opencv_and_decord(written):
    root, config, names = written
    path = root / "Videos" / f"{names[0]}.mp4"
    capture = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    assert len(frames) == config.num_frames and frames[0].shape == (64, 112, 3)
    jpg = cv2.imread(str(root / "JPEGImages/480p" / names[0] / "00003.jpg"))
    assert np.abs(frames[3].astype(int) - jpg.astype(int)).mean() < 12  # same picture
    decord = pytest.importorskip("decord")
    reader = decord.VideoReader(str(path))
    assert len(reader) == config.num_frames and reader[0].asnumpy().shape == (64, 112, 3)


def test_refuses_non_empty_folder_and_overwrites_only_its_sequences(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    notes = root / "notes.txt"
    notes.write_text("mine")
    config = dataclasses.replace(SMALL, num_sequences=1, num_frames=3, write_video=False)
    with pytest.raises(InputError, match="not empty") as info:
        write_synthetic_davis(root, config, progress=False)
    assert str(root) in str(info.value)
    assert sorted(p.name for p in root.iterdir()) == ["notes.txt"]
    stale = root / "JPEGImages/480p/synth-000/00099.jpg"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"old")
    write_synthetic_davis(root, config, overwrite=True, progress=False)
    assert notes.read_text() == "mine"
    assert not stale.exists()  # the sequence folder was replaced, not merged
    assert len(list((root / "JPEGImages/480p/synth-000").glob("*.jpg"))) == 3
    assert not (root / "Videos").exists()
    a_file = tmp_path / "file"
    a_file.write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        write_synthetic_davis(a_file, config, progress=False)
    with pytest.raises(InputError, match="even"):
        write_synthetic_davis(tmp_path / "odd", dataclasses.replace(config, height=63,
                                                                   write_video=True))


def test_worker_processes_write_identical_files(tmp_path, written):
    root, config, names = written
    parallel = tmp_path / "parallel"
    write_synthetic_davis(parallel, dataclasses.replace(config, workers=2), progress=False)
    for relative in ("JPEGImages/480p/synth-001/00005.jpg", "Annotations/480p/synth-002/00007.png",
                     "Flows/gt/480p/synth-000/00006.flo", "Videos/synth-001.mp4"):
        assert (parallel / relative).read_bytes() == (root / relative).read_bytes(), relative


def test_tool(tmp_path, capsys):
    out = tmp_path / "tool"
    argv = ["--out", str(out), "--sequences", "2", "--frames", "3", "--height", "32",
            "--width", "48", "--num-val", "1", "--no-flow", "--no-video", "--workers", "1",
            "--quiet"]
    assert tool_main(argv) == 0
    assert "wrote 2 sequences (1 train, 1 val)" in capsys.readouterr().out
    assert not (out / "Flows").exists() and not (out / "Videos").exists()
    assert len(list((out / "Annotations/480p/synth-001").glob("*.png"))) == 3
    assert tool_main(argv) == 2
    assert "not empty" in capsys.readouterr().err
    assert tool_main(argv + ["--overwrite"]) == 0
    assert tool_main(argv + ["--overwrite", "--max-objects", "0"]) == 2
    assert "--max-objects" in capsys.readouterr().err
    assert tool_main(argv + ["--overwrite", "--camera-zoom", "0", "--pan-speed", "0.01", "0.02"]) == 0
    settings = json.loads((out / "meta.json").read_text())["config"]
    assert settings["camera_zoom"] == 0.0 and settings["pan_speed"] == [0.01, 0.02]
    assert tool_main(argv + ["--overwrite", "--pan-speed", "0.02", "0.01"]) == 2
    assert "--pan-speed" in capsys.readouterr().err


def test_flow_cache_holds_the_exact_flow_of_every_frame(tmp_path):
    config = dataclasses.replace(SMALL, num_sequences=2, num_frames=4, write_video=False, num_val=1)
    root, cache = tmp_path / "set", tmp_path / "flows"
    names = write_synthetic_davis(root, config, progress=False, flow_root=cache)
    longer = dataclasses.replace(config, num_frames=config.num_frames + 1)
    for index, name in enumerate(names):
        cached = sorted((cache / "+1" / name).glob("*.flo"))
        assert [p.stem for p in cached] == [f"{t:05d}" for t in range(config.num_frames)]  # the last frame too
        assert len(list((root / "JPEGImages/480p" / name).glob("*.jpg"))) == config.num_frames
        assert len(list((root / "Flows/gt/480p" / name).glob("*.flo"))) == config.num_frames - 1
        reference = generate_sequence(longer, index, with_flow=True)
        for t, path in enumerate(cached):
            np.testing.assert_array_equal(read_flo(path), reference.flows[t])
            np.testing.assert_array_equal(Image.open(root / f"Annotations/480p/{name}/{t:05d}.png"),
                                          reference.masks[t])
    assert json.loads((root / "meta.json").read_text())["flow_cache"] == str(cache)

    # an existing cache is neither merged into nor replaced without overwrite
    other = tmp_path / "other"
    with pytest.raises(InputError, match="flow cache already holds") as info:
        write_synthetic_davis(other, config, progress=False, flow_root=cache)
    assert str(cache / "+1" / names[0]) in str(info.value)
    stale = cache / "+1" / names[0] / "00099.flo"
    stale.write_bytes(b"old")
    write_synthetic_davis(other, config, progress=False, flow_root=cache, overwrite=True)
    assert not stale.exists()


def test_tool_writes_a_flow_cache(tmp_path, capsys):
    out, cache = tmp_path / "tool", tmp_path / "cache"
    argv = ["--out", str(out), "--sequences", "1", "--frames", "3", "--height", "32", "--width", "48",
            "--num-val", "0", "--no-flow", "--no-video", "--workers", "1", "--quiet", "--flow-cache", str(cache)]
    assert tool_main(argv) == 0
    assert len(list((cache / "+1" / "synth-000").glob("*.flo"))) == 3
    assert not (out / "Flows").exists()
