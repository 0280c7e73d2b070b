"""Clip datasets over videos and frame folders: resampling, index cache, corrupt files, sampler."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import densessl.datasets.video as video
from densessl.datasets.video import (
    ClipDataset,
    ClipSampler,
    build_clip_dataset,
    build_index,
    collate_clips,
    find_frame_folders,
    find_videos,
    resample_indices,
)
from densessl.errors import InputError


def level(i: int) -> int:
    """Grey level that encodes frame index i (survives lossy compression)."""
    return 8 + 8 * i


def write_frame_folder(folder: Path, count: int, h: int = 24, w: int = 40) -> None:
    folder.mkdir(parents=True)
    for i in range(count):
        cv2.imwrite(str(folder / f"{i:05d}.png"), np.full((h, w, 3), level(i), np.uint8))


def write_video(path: Path, count: int, fps: float = 24.0, h: int = 32, w: int = 48) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, (w, h))
    for i in range(count):
        writer.write(np.full((h, w, 3), level(i), np.uint8))
    writer.release()


def decoded_index(frame: np.ndarray | torch.Tensor) -> int:
    mean = float(np.asarray(frame, dtype=np.float64).mean())
    return int(round((mean - 8) / 8))


# ------------------------------------------------------------------------------- resampling
@pytest.mark.parametrize("n,fps,target", [(60, 30.0, 8.0), (25, 24.0, 8.0), (10, 8.0, 8.0), (7, 30.0, 4.0)])
def test_resample_indices_follow_the_frame_times(n, fps, target):
    out = resample_indices(n, fps, target)
    expected = []
    i = 0
    while True:  # frame i of the resampled video shows time i / target
        t = i / target
        src = int(np.floor(t * fps + 1e-9))
        if t * fps > n - 1e-9 or src >= n:
            break
        expected.append(src)
        i += 1
    assert out.tolist() == expected
    assert resample_indices(n, fps, None).tolist() == list(range(n))


# ----------------------------------------------------------------------------- frame folders
def test_frame_folders_clips_resampled_and_resized(tmp_path):
    root = tmp_path / "frames"
    write_frame_folder(root / "a", 30)
    write_frame_folder(root / "b", 12)
    folders = find_frame_folders(root)
    assert [f.name for f in folders] == ["a", "b"]
    ds = build_clip_dataset(frames=root, clip_len=3, target_fps=10.0, frames_fps=30.0, short_side=12,
                            cache_dir=tmp_path / "cache")
    assert ds.clip_counts() == [10 - 3 + 1, 4 - 3 + 1]
    clip = ds[(0, 2)]
    assert clip.dtype == torch.uint8 and clip.shape == (3, 12, 20, 3)
    assert [decoded_index(f) for f in clip] == [6, 9, 12]  # every third frame from resampled frame 2
    ds.channels_first = True
    assert ds[(1, 1)].shape == (3, 3, 12, 20)


def test_frame_folders_without_a_rate_are_taken_to_be_at_the_target_rate(tmp_path):
    write_frame_folder(tmp_path / "frames" / "a", 12)
    ds = build_clip_dataset(frames=tmp_path / "frames", clip_len=4, target_fps=8.0, short_side=None,
                            cache_dir=tmp_path / "cache")
    assert ds.clip_counts() == [12 - 4 + 1]
    assert [decoded_index(f) for f in ds[(0, 5)]] == [5, 6, 7, 8]  # consecutive frames
    resampled = build_clip_dataset(frames=tmp_path / "frames", clip_len=4, target_fps=8.0, frames_fps=24.0,
                                   short_side=None, cache_dir=tmp_path / "cache")
    assert resampled.clip_counts() == [4 - 4 + 1]  # 24 → 8 fps: every third frame


def test_frame_folder_list_file(tmp_path):
    write_frame_folder(tmp_path / "data" / "x", 5)
    write_frame_folder(tmp_path / "data" / "y", 5)
    listing = tmp_path / "data" / "list.txt"
    listing.write_text("# two folders\nx\n\n" + str(tmp_path / "data" / "y") + "\n")
    assert [f.name for f in find_frame_folders(listing)] == ["x", "y"]
    listing.write_text("x\nmissing\n")
    with pytest.raises(InputError, match=r"list\.txt.*line 2"):
        find_frame_folders(listing)


def test_davis_root_gives_its_frames_not_its_masks(tmp_path):
    root = tmp_path / "DAVIS"
    for seq in ("bear", "car"):
        write_frame_folder(root / "JPEGImages" / "480p" / seq, 4)
        write_frame_folder(root / "Annotations" / "480p" / seq, 4)
    folders = find_frame_folders(root)
    assert folders == [root / "JPEGImages" / "480p" / "bear", root / "JPEGImages" / "480p" / "car"]
    write_frame_folder(root / "JPEGImages" / "Full-Resolution" / "bear", 4)
    for source in (root, root / "JPEGImages"):  # each sequence would be read at both resolutions
        with pytest.raises(InputError, match="480p, Full-Resolution.*JPEGImages/480p"):
            find_frame_folders(source)
    assert len(find_frame_folders(root / "JPEGImages" / "480p")) == 2


def test_missing_sources_are_input_errors(tmp_path):
    with pytest.raises(InputError, match="nowhere"):
        build_clip_dataset(videos=tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no video files"):
        build_clip_dataset(videos=tmp_path / "empty", cache_dir=tmp_path / "cache")
    with pytest.raises(InputError):
        build_clip_dataset()


# ------------------------------------------------------------------------------------ videos
def test_video_clips_with_decord_and_opencv_fallback(tmp_path, monkeypatch):
    write_video(tmp_path / "videos" / "sub" / "v.mp4", 24, fps=24.0)
    assert [p.name for p in find_videos(tmp_path / "videos")] == ["v.mp4"]
    ds = build_clip_dataset(videos=tmp_path / "videos", clip_len=4, target_fps=8.0, short_side=16,
                            cache_dir=tmp_path / "cache")
    assert ds.videos[0].num_frames == 24 and ds.videos[0].fps == pytest.approx(24.0)
    assert ds.clip_counts() == [8 - 4 + 1]  # 24 frames at 24 fps → 8 frames at 8 fps
    clip = ds[(0, 1)]
    assert clip.shape == (4, 16, 24, 3)
    assert [decoded_index(f) for f in clip] == [3, 6, 9, 12]
    monkeypatch.setattr(video, "decord", None)
    fallback = ds[(0, 1)]
    assert [decoded_index(f) for f in fallback] == [3, 6, 9, 12]
    assert (fallback.int() - clip.int()).abs().max() <= 3


def test_corrupt_videos_are_skipped_counted_and_logged_once(tmp_path, caplog):
    folder = tmp_path / "videos"
    write_video(folder / "good.mp4", 16)
    write_video(folder / "later_bad.mp4", 16)
    (folder / "broken.mp4").write_bytes(os.urandom(2000))
    with caplog.at_level(logging.WARNING, logger="densessl.data"):
        ds = build_clip_dataset(videos=folder, clip_len=2, target_fps=None, short_side=None,
                                cache_dir=tmp_path / "cache")
    assert [Path(v.path).name for v in ds.videos] == ["good.mp4", "later_bad.mp4"]
    assert sum("broken.mp4" in r.getMessage() for r in caplog.records) == 1

    # a video that breaks after indexing: replaced by another clip, logged once, never raises
    (folder / "later_bad.mp4").write_bytes(b"not a video any more")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="densessl.data"):
        clips = [ds[(1, s)] for s in range(3)]
    assert all(c.shape == (2, 32, 48, 3) for c in clips)
    assert list(ds.failures) == [str(folder / "later_bad.mp4")]
    assert sum("later_bad.mp4" in r.getMessage() for r in caplog.records) == 1


def test_index_cache_is_reused_and_invalidated(tmp_path, monkeypatch):
    folder = tmp_path / "videos"
    write_video(folder / "a.mp4", 10)
    cache = tmp_path / "cache"
    first = build_index(find_videos(folder), cache_dir=cache)
    cached_files = list((cache / "clip_index").glob("*.json"))
    assert len(cached_files) == 1
    assert not any(p.suffix == ".json" for p in folder.rglob("*"))  # nothing written next to the data

    def no_probe(path):
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr(video, "probe_video", no_probe)
    assert build_index(find_videos(folder), cache_dir=cache).videos == first.videos
    monkeypatch.undo()

    write_video(folder / "a.mp4", 14)  # changed file: new size and mtime → new key
    os.utime(folder / "a.mp4", ns=(1, 1))
    again = build_index(find_videos(folder), cache_dir=cache)
    assert again.videos[0].num_frames == 14
    with pytest.raises(InputError, match="cache folder"):
        build_index(find_videos(folder), cache_dir=folder / "cache")


# ----------------------------------------------------------------------------------- sampler
def test_sampler_plan_is_deterministic_capped_and_reshuffled():
    counts = [10, 0, 3, 7]
    sampler = ClipSampler(counts, clips_per_video=5, seed=3)
    plan0 = sampler.plan(0)
    assert plan0 == ClipSampler(counts, clips_per_video=5, seed=3).plan(0)
    assert plan0 != sampler.plan(1)
    per_video = {v: [s for vv, s in plan0 if vv == v] for v in range(4)}
    assert [len(per_video[v]) for v in range(4)] == [5, 0, 3, 5]
    assert all(len(set(s)) == len(s) for s in per_video.values())  # without replacement
    assert all(0 <= s < counts[v] for v, s in plan0)
    assert sorted(per_video[2]) == [0, 1, 2]
    all_clips = ClipSampler(counts, clips_per_video=0, seed=3).plan(0)
    assert len(all_clips) == 20


def test_sampler_shards_ranks_and_resumes_mid_epoch():
    counts = [4, 4, 4]
    full = ClipSampler(counts, clips_per_video=3, seed=1).plan(2)  # 9 clips
    shards = []
    for rank in range(2):
        s = ClipSampler(counts, clips_per_video=3, seed=1, rank=rank, world_size=2)
        s.set_epoch(2)
        shards.append(list(s))
        assert len(s) == 5
    padded = full + full[:1]
    assert shards[0] == padded[0::2] and shards[1] == padded[1::2]

    s = ClipSampler(counts, clips_per_video=3, seed=1)
    s.load_state_dict({"epoch": 2, "position": 4})
    assert list(s) == full[4:]
    assert list(s) == full  # the resume position applies to one pass only
    with pytest.raises(InputError):
        ClipSampler([0, 0])


def test_collate_centre_crops_and_loader_batches(tmp_path):
    a = torch.arange(2 * 6 * 8 * 3, dtype=torch.int64).reshape(2, 6, 8, 3).to(torch.uint8)
    b = torch.zeros(2, 4, 10, 3, dtype=torch.uint8)
    out = collate_clips([a, b])
    assert out.shape == (2, 2, 4, 8, 3)
    torch.testing.assert_close(out[0], a[:, 1:5])
    cf = collate_clips([a.permute(0, 3, 1, 2), b.permute(0, 3, 1, 2)])
    assert cf.shape == (2, 2, 3, 4, 8)

    write_frame_folder(tmp_path / "f" / "a", 8)
    write_frame_folder(tmp_path / "f" / "b", 8, h=30, w=40)
    ds = build_clip_dataset(frames=tmp_path / "f", clip_len=2, target_fps=None, short_side=12,
                            cache_dir=tmp_path / "cache")
    sampler = ClipSampler(ds.clip_counts(), clips_per_video=2, seed=0)
    batches = list(DataLoader(ds, batch_size=2, sampler=sampler, collate_fn=collate_clips, drop_last=True))
    assert len(batches) == 2
    assert batches[0].shape == (2, 2, 12, 16, 3) and batches[0].dtype == torch.uint8


def test_clip_dataset_rejects_bad_clip_len():
    with pytest.raises(InputError):
        ClipDataset([], clip_len=0)
