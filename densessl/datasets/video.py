"""Clip datasets over videos and frame folders, for self-supervised video training.

- Sources: a folder tree of video files (mp4/avi/webm/mkv; decoded with decord, OpenCV as the
  fallback) or frame folders (DAVIS/Kinetics-style JPEG folders: a folder whose sub-folders
  hold frames, or a text file listing frame folders, one per line).
- Index: number of frames and frame rate of every video, cached on disk in a cache folder
  (never in the dataset folder), keyed by the file list with sizes and modification times.
  Unreadable videos are skipped, counted and logged once each.
- Clips: frames resampled to ``target_fps``, ``clip_len`` consecutive resampled frames;
  :class:`ClipSampler` draws up to ``clips_per_video`` clips of every video per epoch,
  deterministically from (seed, epoch), sharded across ranks, resumable mid-epoch.
- Output: uint8 ``T×H×W×3`` (or ``T×3×H×W``), the short side resized on the CPU to a fixed
  size; :func:`collate_clips` centre-crops a batch to its common size.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterator, Sequence

import cv2
import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Sampler

from densessl.errors import InputError

try:  # decord is optional (no wheels on some platforms); OpenCV is the fallback
    import decord  # type: ignore

    decord.bridge.set_bridge("native")
except Exception:  # pragma: no cover - depends on the platform
    decord = None

log = logging.getLogger("densessl.data")

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mkv", ".mov", ".m4v")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")
INDEX_VERSION = 1


@dataclass(frozen=True)
class VideoInfo:
    """One indexed source: a video file (``kind="video"``) or a frame folder (``"frames"``)."""

    path: str
    kind: str
    num_frames: int
    fps: float


# ----------------------------------------------------------------------------------- discovery
def find_videos(root: str | os.PathLike) -> list[Path]:
    """All video files under ``root`` (recursive, sorted)."""
    root = Path(root)
    if not root.is_dir():
        raise InputError("video folder does not exist or is not a folder", root)
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_EXTENSIONS and p.is_file())


def list_frames(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def find_frame_folders(source: str | os.PathLike) -> list[Path]:
    """Frame folders from a folder (every sub-folder, at any depth, that holds images) or a list file.

    A list file has one folder per line (relative paths are relative to the list file's
    folder; blank lines and ``#`` comments are ignored). In a folder tree, DAVIS-style mask
    folders (under a folder named ``Annotations*``) are not frames and are left out; a
    ``JPEGImages`` folder with several resolutions (``480p``, ``Full-Resolution``) is an error,
    since every sequence would be read once per resolution.
    """
    source = Path(source)
    if source.is_file():
        folders = []
        for number, line in enumerate(source.read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            folder = Path(line) if os.path.isabs(line) else source.parent / line
            if not folder.is_dir():
                raise InputError(f"line {number}: frame folder {folder} does not exist", source)
            folders.append(folder)
        if not folders:
            raise InputError("the frame-folder list is empty", source)
        return folders
    if not source.is_dir():
        raise InputError("frame folder (or list file) does not exist", source)
    folders = sorted({p.parent for p in source.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS})
    masks = {f for f in folders if any(part.startswith("Annotations") for part in f.relative_to(source).parts)}
    if masks:
        log.info("frame folders: %d mask folders under Annotations* left out", len(masks))
        folders = [f for f in folders if f not in masks]
    resolutions: dict[Path, set[str]] = {}
    for folder in folders:
        parts = folder.parts
        if "JPEGImages" in parts[:-2]:  # <...>/JPEGImages/<resolution>/.../<sequence>
            at = len(parts) - 1 - parts[::-1].index("JPEGImages")
            resolutions.setdefault(Path(*parts[: at + 1]), set()).add(parts[at + 1])
    for jpeg_images, found in resolutions.items():
        if len(found) > 1:
            raise InputError(
                f"holds frames at several resolutions ({', '.join(sorted(found))}): give one of them, "
                f"e.g. data.frames={jpeg_images / sorted(found)[0]}", jpeg_images)
    return folders


# --------------------------------------------------------------------------------------- index
def default_cache_dir() -> Path:
    """``$DENSESSL_CACHE`` or ``~/.cache/densessl``."""
    return Path(os.environ.get("DENSESSL_CACHE", Path.home() / ".cache" / "densessl"))


def _fingerprint(paths: Sequence[Path]) -> list[list]:
    rows = []
    for p in paths:
        st = p.stat()
        rows.append([str(p.resolve()), st.st_mtime_ns, st.st_size if p.is_file() else 0])
    return rows


def probe_video(path: str | os.PathLike) -> tuple[int, float]:
    """(frame count, frames per second) of a video file; raises RuntimeError when unreadable."""
    path = str(path)
    if decord is not None:
        try:
            reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
            count, fps = len(reader), float(reader.get_avg_fps())
            if count > 0 and fps > 0:
                return count, fps
        except Exception:  # decord raises RuntimeError/DECORDError: try OpenCV
            pass
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise RuntimeError(f"cannot open video {path}")
        count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
        fps = float(cap.get(cv2.CAP_PROP_FPS))
        ok, _ = cap.read()
        if not ok or count <= 0 or fps <= 0:
            raise RuntimeError(f"cannot decode video {path}")
        return count, fps
    finally:
        cap.release()


@dataclass
class ClipIndex:
    """Indexed sources and what was skipped (``skipped``: path → reason)."""

    videos: list[VideoInfo]
    skipped: dict[str, str]


def build_index(
    videos: Sequence[Path] = (),
    frame_folders: Sequence[Path] = (),
    frames_fps: float = 30.0,
    cache_dir: str | os.PathLike | None = None,
    use_cache: bool = True,
    progress: bool = False,
) -> ClipIndex:
    """Index video files and frame folders (frame count, fps), with an on-disk cache.

    Args:
        videos: video files.
        frame_folders: frame folders (their frame rate is ``frames_fps``).
        cache_dir: where the index cache lives (default :func:`default_cache_dir`); must not be
            inside a dataset folder.
    """
    videos, frame_folders = [Path(p) for p in videos], [Path(p) for p in frame_folders]
    if not videos and not frame_folders:
        raise InputError("no videos or frame folders found")
    cache_root = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    data_root = Path(os.path.commonpath([str(p.resolve().parent) for p in videos + frame_folders]))
    resolved_cache = cache_root.resolve()
    if resolved_cache == data_root or data_root in resolved_cache.parents:
        raise InputError(f"the cache folder must not be inside the dataset folder {data_root}", cache_root)
    key_data = {
        "version": INDEX_VERSION,
        "videos": _fingerprint(videos),
        "frames": _fingerprint(frame_folders),
        "frames_fps": frames_fps,
    }
    key = hashlib.sha1(json.dumps(key_data, sort_keys=True).encode()).hexdigest()[:20]
    cache_file = cache_root / "clip_index" / f"{key}.json"
    if use_cache and cache_file.is_file():
        try:
            data = json.loads(cache_file.read_text())
            index = ClipIndex([VideoInfo(**v) for v in data["videos"]], dict(data["skipped"]))
            _log_skipped(index.skipped)
            return index
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("ignoring unreadable clip index cache %s", cache_file)

    infos: list[VideoInfo] = []
    skipped: dict[str, str] = {}
    items = [("video", p) for p in videos] + [("frames", p) for p in frame_folders]
    iterator = items
    if progress:
        from tqdm import tqdm

        iterator = tqdm(items, desc="indexing videos", unit="video")
    for kind, path in iterator:
        try:
            if kind == "video":
                count, fps = probe_video(path)
            else:
                count, fps = len(list_frames(path)), float(frames_fps)
                if count == 0:
                    raise RuntimeError("no frames")
        except Exception as error:  # unreadable source: skip, never crash
            skipped[str(path)] = str(error) or type(error).__name__
            continue
        infos.append(VideoInfo(str(path), kind, int(count), float(fps)))
    index = ClipIndex(infos, skipped)
    _log_skipped(skipped)
    if use_cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps({"videos": [asdict(v) for v in infos], "skipped": skipped}))
        os.replace(tmp, cache_file)
    return index


_LOGGED: set[str] = set()


def _log_once(path: str, reason: str) -> None:
    if path not in _LOGGED:
        _LOGGED.add(path)
        log.warning("skipping unreadable video %s: %s", path, reason)


def _log_skipped(skipped: dict[str, str]) -> None:
    for path, reason in skipped.items():
        _log_once(path, reason)


# ------------------------------------------------------------------------------------ decoding
def resample_indices(num_frames: int, fps: float, target_fps: float | None) -> np.ndarray:
    """Source frame indices of a video resampled to ``target_fps`` (None: every frame).

    Frame i of the resampled video shows time ``i / target_fps``: source frame
    ``floor(i · fps / target_fps)``, for every such time inside the video.
    """
    if target_fps is None or target_fps <= 0 or fps <= 0:
        return np.arange(num_frames)
    step = fps / target_fps
    count = int(np.ceil(num_frames / step - 1e-9))
    return np.floor(np.arange(count) * step + 1e-9).astype(np.int64)


def resize_short_side(frame: np.ndarray, short_side: int | None) -> np.ndarray:
    """Resize an H×W×3 frame so its short side is ``short_side`` (None: unchanged)."""
    if not short_side:
        return frame
    h, w = frame.shape[:2]
    if min(h, w) == short_side:
        return frame
    scale = short_side / min(h, w)
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    return cv2.resize(frame, size, interpolation=interp)


def read_video_frames(path: str, indices: Sequence[int]) -> np.ndarray:
    """Decode the given frames of a video → N×H×W×3 uint8 RGB (decord, else OpenCV)."""
    indices = [int(i) for i in indices]
    if decord is not None:
        try:
            reader = decord.VideoReader(path, ctx=decord.cpu(0), num_threads=1)
            return reader.get_batch(indices).asnumpy()
        except Exception:
            pass
    cap = cv2.VideoCapture(path)
    try:
        if not cap.isOpened():
            raise RuntimeError(f"cannot open video {path}")
        wanted = sorted(set(indices))
        cap.set(cv2.CAP_PROP_POS_FRAMES, wanted[0])
        frames: dict[int, np.ndarray] = {}
        position = wanted[0]
        while position <= wanted[-1]:
            ok, frame = cap.read()
            if not ok:
                raise RuntimeError(f"cannot decode frame {position} of {path}")
            if position in wanted:
                frames[position] = cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
            position += 1
        return np.stack([frames[i] for i in indices])
    finally:
        cap.release()


def read_frame_files(paths: Sequence[Path]) -> np.ndarray:
    """Read image files → N×H×W×3 uint8 RGB."""
    frames = []
    for p in paths:
        image = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if image is None:
            raise RuntimeError(f"cannot read image {p}")
        frames.append(cv2.cvtColor(image, cv2.COLOR_BGR2RGB))
    if len({f.shape for f in frames}) > 1:
        raise RuntimeError("frames of different sizes")
    return np.stack(frames)


# ------------------------------------------------------------------------------------- dataset
class ClipDataset(Dataset):
    """Clips of ``clip_len`` frames at ``target_fps`` from indexed videos / frame folders.

    Items are addressed by ``(video, start)`` pairs (from :class:`ClipSampler`); ``start``
    counts resampled frames. ``dataset[(v, s)]`` returns uint8 ``T×H×W×3`` (``T×3×H×W`` with
    ``channels_first``) with the short side resized to ``short_side``. A clip that cannot be
    decoded is replaced by a clip from the next readable video (the failure is logged once and
    counted in ``failures``), so an epoch never stops on a corrupt file.
    """

    def __init__(
        self,
        videos: Sequence[VideoInfo],
        clip_len: int = 4,
        target_fps: float | None = 8.0,
        short_side: int | None = 256,
        channels_first: bool = False,
        max_retries: int = 20,
    ) -> None:
        if clip_len < 1:
            raise InputError(f"clip_len must be >= 1, got {clip_len}")
        self.clip_len = clip_len
        self.target_fps = target_fps
        self.short_side = short_side
        self.channels_first = channels_first
        self.max_retries = max_retries
        self.videos = list(videos)
        self._indices = [resample_indices(v.num_frames, v.fps, target_fps) for v in self.videos]
        self.failures: dict[str, str] = {}
        self._frame_lists: dict[int, list[Path]] = {}

    def __len__(self) -> int:
        return len(self.videos)

    def clip_counts(self) -> list[int]:
        """Number of clip start positions of every video (0 when it is too short)."""
        return [max(0, len(ix) - self.clip_len + 1) for ix in self._indices]

    def frame_indices(self, video: int, start: int) -> np.ndarray:
        """Source frame indices of clip ``start`` of ``video``."""
        return self._indices[video][start : start + self.clip_len]

    def _read(self, video: int, start: int) -> np.ndarray:
        info = self.videos[video]
        indices = self.frame_indices(video, start)
        if len(indices) < self.clip_len:
            raise RuntimeError(f"clip {start} is past the end ({len(self._indices[video])} resampled frames)")
        if info.kind == "video":
            frames = read_video_frames(info.path, indices)
        else:
            if video not in self._frame_lists:
                self._frame_lists[video] = list_frames(info.path)
            files = self._frame_lists[video]
            frames = read_frame_files([files[i] for i in indices])
        if len(frames) != self.clip_len:
            raise RuntimeError("decoded the wrong number of frames")
        return np.stack([resize_short_side(f, self.short_side) for f in frames])

    def __getitem__(self, key: tuple[int, int] | int) -> Tensor:
        video, start = (int(key), 0) if isinstance(key, (int, np.integer)) else (int(key[0]), int(key[1]))
        counts = None
        for attempt in range(self.max_retries + 1):
            path = self.videos[video].path
            if path not in self.failures:
                try:
                    frames = self._read(video, start)
                    break
                except Exception as error:
                    self.failures[path] = str(error) or type(error).__name__
                    _log_once(path, self.failures[path])
            # deterministic replacement: the next video with clips, its middle clip
            counts = counts or self.clip_counts()
            video = (video + 1) % len(self.videos)
            while counts[video] == 0:
                video = (video + 1) % len(self.videos)
            start = counts[video] // 2
        else:
            raise RuntimeError(f"no readable clip after {self.max_retries} replacements")
        clip = torch.from_numpy(np.ascontiguousarray(frames))
        return clip.permute(0, 3, 1, 2).contiguous() if self.channels_first else clip


def collate_clips(batch: Sequence[Tensor]) -> Tensor:
    """Stack uint8 clips T×H×W×3 (or T×3×H×W) of possibly different sizes → B×T×H×W×3.

    Clips are centre-cropped to the smallest height and width in the batch.
    """
    channels_first = batch[0].shape[1] == 3 and batch[0].shape[-1] != 3
    h_axis = 2 if channels_first else 1
    h = min(c.shape[h_axis] for c in batch)
    w = min(c.shape[h_axis + 1] for c in batch)
    out = []
    for c in batch:
        y0 = (c.shape[h_axis] - h) // 2
        x0 = (c.shape[h_axis + 1] - w) // 2
        out.append(c[:, :, y0 : y0 + h, x0 : x0 + w] if channels_first else c[:, y0 : y0 + h, x0 : x0 + w])
    return torch.stack(out)


# ------------------------------------------------------------------------------------- sampler
class ClipSampler(Sampler):
    """Up to ``clips_per_video`` random clips of each video per epoch, shuffled, per rank.

    The epoch's plan depends only on (seed, epoch), so every rank computes the same plan and
    takes its share (``rank::world_size``, padded like ``DistributedSampler``). Resume mid-epoch
    with :meth:`load_state_dict` (``position`` = samples of this epoch already consumed on this
    rank).

    Args:
        clip_counts: clip start positions per video (``ClipDataset.clip_counts()``).
        clips_per_video: clips per video per epoch (<= 0: all of them).
        clip_stride: spacing of candidate clip starts, in resampled frames.
    """

    def __init__(
        self,
        clip_counts: Sequence[int],
        clips_per_video: int = 5,
        seed: int = 0,
        shuffle: bool = True,
        rank: int = 0,
        world_size: int = 1,
        clip_stride: int = 1,
    ) -> None:
        self.clip_counts = list(clip_counts)
        if not any(self.clip_counts):
            raise InputError("no video is long enough for one clip")
        self.clips_per_video = clips_per_video
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self.clip_stride = max(1, clip_stride)
        self.epoch = 0
        self.position = 0

    def plan(self, epoch: int) -> list[tuple[int, int]]:
        """All (video, start) pairs of an epoch, in order, before sharding."""
        rng = np.random.default_rng([self.seed, epoch])
        pairs: list[tuple[int, int]] = []
        for video, count in enumerate(self.clip_counts):
            starts = np.arange(0, count, self.clip_stride)
            if len(starts) == 0:
                continue
            take = len(starts) if self.clips_per_video <= 0 else min(self.clips_per_video, len(starts))
            chosen = rng.choice(starts, size=take, replace=False) if self.shuffle else starts[:take]
            pairs.extend((video, int(s)) for s in np.sort(chosen))
        if self.shuffle:
            order = rng.permutation(len(pairs))
            pairs = [pairs[i] for i in order]
        return pairs

    def _shard(self, epoch: int) -> list[tuple[int, int]]:
        pairs = self.plan(epoch)
        total = -(-len(pairs) // self.world_size) * self.world_size
        pairs = (pairs * (total // max(1, len(pairs)) + 1))[:total]
        return pairs[self.rank : total : self.world_size]

    def __len__(self) -> int:
        n = len(self.plan(self.epoch))
        return -(-n // self.world_size)

    def __iter__(self) -> Iterator[tuple[int, int]]:
        pairs = self._shard(self.epoch)
        start, self.position = self.position, 0  # a resumed position applies to one pass only
        return iter(pairs[start:])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])


# ---------------------------------------------------------------------------------- factories
def build_clip_dataset(
    videos: str | os.PathLike | None = None,
    frames: str | os.PathLike | None = None,
    clip_len: int = 4,
    target_fps: float | None = 8.0,
    frames_fps: float | None = None,
    short_side: int | None = 256,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> ClipDataset:
    """A :class:`ClipDataset` over a folder of videos and/or frame folders (or a list file).

    Frame folders carry no frame rate: ``frames_fps`` is theirs, and they are resampled from it to
    ``target_fps``; None takes them to be at ``target_fps`` already (every frame is used).
    """
    if videos is None and frames is None:
        raise InputError("give a video folder (data.videos) or frame folders (data.frames)")
    video_files = find_videos(videos) if videos else []
    folders = find_frame_folders(frames) if frames else []
    if videos and not video_files:
        raise InputError(f"no video files ({', '.join(VIDEO_EXTENSIONS)}) found", videos)
    if frames and not folders:
        raise InputError("no frame folders (folders with .jpg/.png frames) found", frames)
    if frames_fps is None or frames_fps <= 0:
        frames_fps = target_fps or 0.0  # fps 0: every frame (see resample_indices)
    index = build_index(video_files, folders, frames_fps=frames_fps, cache_dir=cache_dir, progress=progress)
    if index.skipped:
        log.warning("%d of %d sources unreadable and skipped", len(index.skipped), len(video_files) + len(folders))
    if not index.videos:
        raise InputError("none of the videos could be read", videos or frames)
    return ClipDataset(index.videos, clip_len=clip_len, target_fps=target_fps, short_side=short_side)
