"""Label propagation over DAVIS-style sequences with any backbone, and scoring it.

:func:`propagate_sequence` streams one sequence: frames are decoded by a thread pool, features
are computed in batches on the device and released once they leave the context window, and
each prediction is written (indexed PNG, optional overlay) as soon as it is ready.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from densessl.datasets.davis import DavisDataset, DavisSequence
from densessl.datasets.palette import write_indexed_png
from densessl.errors import InputError
from densessl.eval.visualize import (
    OverlayVideoWriter,
    evenly_spaced,
    feature_pca_images,
    save_overlay_strip,
    save_strip,
)
from densessl.video.propagation import (
    PropagationConfig,
    make_config,
    mask_to_soft_labels,
    processing_size,
    propagate_labels,
    soft_labels_to_ids,
)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None``/``'auto'`` → CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def read_rgb(path: str | os.PathLike, size: tuple[int, int] | None = None) -> np.ndarray:
    """Read an image as ``H×W×3`` uint8 RGB, optionally resized (bilinear) to ``size=(H, W)``."""
    image = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if image is None:
        raise InputError("cannot read image", path)
    if size is not None and image.shape[:2] != tuple(size):
        image = cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_LINEAR)
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


class _FeatureStream:
    """Frame index → ``1×C×h×w`` L2-normalised features, computed in batches on demand.

    Frames are decoded ahead by a thread pool; features are kept until released, so memory is
    bounded by the context length.
    """

    def __init__(
        self,
        backbone: nn.Module,
        frame_paths: Sequence[Path],
        size: tuple[int, int],
        device: torch.device,
        batch_size: int,
        pool: ThreadPoolExecutor,
        store: dict[int, Tensor] | None = None,
    ) -> None:
        self.backbone, self.frame_paths, self.size = backbone, list(frame_paths), size
        self.device, self.batch_size, self.pool = device, batch_size, pool
        # with a store, features are kept there (never released) for another pass to reuse
        self._keep_all = store is not None
        self._features: dict[int, Tensor] = {} if store is None else store
        self._pending: dict[int, Future] = {}
        self._next_read = 0
        if not self._features:
            self._prefetch(2 * batch_size)

    def _prefetch(self, upto: int) -> None:
        upto = min(upto, len(self.frame_paths))
        while self._next_read < upto:
            index = self._next_read
            self._pending[index] = self.pool.submit(read_rgb, self.frame_paths[index], self.size)
            self._next_read += 1

    def _compute(self, start: int) -> None:
        stop = min(start + self.batch_size, len(self.frame_paths))
        self._prefetch(stop + self.batch_size)
        indices = [i for i in range(start, stop) if i not in self._features]
        frames = np.stack([self._pending.pop(i).result() for i in indices])
        batch = torch.from_numpy(frames).to(self.device, non_blocking=True)
        batch = batch.permute(0, 3, 1, 2).float().div_(255.0)
        with torch.inference_mode():
            features = self.backbone.features(batch).float()
        features = F.normalize(features, dim=1)
        for offset, index in enumerate(indices):
            self._features[index] = features[offset : offset + 1]

    def __call__(self, index: int) -> Tensor:
        if index not in self._features:
            self._compute(index)
        return self._features[index]

    def release(self, index: int) -> None:
        if index != 0 and not self._keep_all:
            self._features.pop(index, None)


@dataclass
class SequenceResult:
    name: str
    masks: np.ndarray  # T×H×W uint8 ids
    seconds: float


def propagate_sequence(
    backbone: nn.Module,
    sequence: DavisSequence,
    config: PropagationConfig,
    *,
    device: torch.device,
    out_dir: str | os.PathLike | None = None,
    overlay_dir: str | os.PathLike | None = None,
    overlay_video: bool = False,
    feature_batch: int = 8,
    pool: ThreadPoolExecutor | None = None,
    feature_store: dict[tuple[int, int], dict[int, Tensor]] | None = None,
) -> SequenceResult:
    """Propagate ``sequence``'s first mask to all frames.

    Writes ``<out_dir>/<seq>/<frame>.png`` when ``out_dir`` is given; with ``overlay_dir``, a
    PNG strip of five overlays (and an MP4 with ``overlay_video``). ``feature_store``
    (processing size → frame index → features of this sequence and backbone), when given, keeps
    every frame's features, so that another protocol at the same processing size needs no second
    backbone pass (memory: the whole sequence's features); a protocol at another size gets
    features of its own.

    Returns:
        The ``T×H×W`` uint8 id maps (frame 0 is the ground truth) and the time taken.
    """
    start_time = time.perf_counter()
    height, width = sequence.size
    size = processing_size(height, width, config)
    first_mask = sequence.first_mask()
    object_ids = sequence.object_ids()
    label_ids = [0, *object_ids]
    if len(label_ids) > 255:
        raise InputError(f"too many objects ({len(object_ids)})", sequence.mask_paths[0])
    own_pool = pool is None
    pool = pool or ThreadPoolExecutor(max_workers=4)
    store = None if feature_store is None else feature_store.setdefault(size, {})
    stream = _FeatureStream(backbone, sequence.frame_paths, size, device, feature_batch, pool, store)
    feature_size = tuple(stream(0).shape[-2:])
    first_labels = mask_to_soft_labels(first_mask, object_ids, feature_size,
                                       config.label_downsample).to(device)

    num_frames = sequence.num_frames
    masks = np.zeros((num_frames, height, width), dtype=np.uint8)
    writes: list[Future] = []
    sequence_out = None if out_dir is None else Path(out_dir) / sequence.name
    names = sequence.frame_names

    def on_frame(index: int, soft: Tensor) -> None:
        if index == 0:
            ids = first_mask.copy()
            ids[~np.isin(ids, label_ids)] = 0
        else:
            ids = soft_labels_to_ids(soft, (height, width), label_ids, config, size)
        masks[index] = ids
        if sequence_out is not None:
            writes.append(pool.submit(write_indexed_png, sequence_out / f"{names[index]}.png", ids))

    strip_frames = evenly_spaced(num_frames, 5) if overlay_dir is not None else []
    strip_features: dict[int, Tensor] = {}  # the strip's frames' features, for their picture

    def release(index: int) -> None:
        if index in strip_frames:
            strip_features[index] = stream(index).cpu()
        stream.release(index)

    propagate_labels(stream, first_labels, num_frames, config, on_frame=on_frame, release=release)
    for write in writes:
        write.result()
    if overlay_dir is not None:
        features = [strip_features[i] if i in strip_features else stream(i).cpu() for i in strip_frames]
        _write_overlays(Path(overlay_dir), sequence, masks, overlay_video, strip_frames, features)
    if own_pool:
        pool.shutdown()
    return SequenceResult(sequence.name, masks, time.perf_counter() - start_time)


def _write_overlays(
    overlay_dir: Path, sequence: DavisSequence, masks: np.ndarray, video: bool,
    picks: Sequence[int], features: Sequence[Tensor],
) -> None:
    """``<seq>.png``: the masks over the ``picks`` frames; ``features/<seq>.png``: those frames'
    features as colours (:func:`feature_pca_images`, basis of the first); ``<seq>.mp4``: every
    frame's overlay, with ``video``."""
    frames = [sequence.frame(i) for i in picks]
    save_overlay_strip(overlay_dir / f"{sequence.name}.png", frames, [masks[i] for i in picks])
    save_strip(overlay_dir / "features" / f"{sequence.name}.png",
               feature_pca_images(features, size=frames[0].shape[:2]))
    if video:
        writer = OverlayVideoWriter(overlay_dir / f"{sequence.name}.mp4", masks.shape[1:])
        for index in range(sequence.num_frames):
            writer.write(sequence.frame(index), masks[index])
        writer.close()


def propagate_dataset(
    backbone: nn.Module,
    dataset: DavisDataset,
    out_dir: str | os.PathLike,
    config: PropagationConfig,
    *,
    device: torch.device | str | None = None,
    overlay_dir: str | os.PathLike | None = None,
    overlay_video: bool = False,
    feature_batch: int = 8,
    progress: bool = True,
    also: Sequence[tuple[PropagationConfig, str | os.PathLike]] = (),
) -> dict[str, float]:
    """Propagate every sequence of ``dataset``, writing official-format PNGs into ``out_dir``.

    ``also``: further (protocol, output folder) pairs run on the same sequences. Protocols of
    ``config``'s processing size reuse its features (one backbone pass per frame); each other
    processing size gets one pass of its own. A sequence's features are kept until all its
    protocols are done (memory: whole sequences' features, one set per size).

    Returns:
        Timing of the ``config`` pass (features included): ``frames``, ``seconds`` and
        ``frames_per_second``.
    """
    device = resolve_device(device)
    backbone = backbone.to(device).eval()
    total_frames, seconds = 0, 0.0
    with ThreadPoolExecutor(max_workers=4) as pool:
        bar = tqdm(list(dataset), desc="propagate", unit="seq", disable=not progress)
        for sequence in bar:
            store: dict[tuple[int, int], dict[int, Tensor]] | None = {} if also else None
            result = propagate_sequence(
                backbone, sequence, config, device=device, out_dir=out_dir,
                overlay_dir=overlay_dir, overlay_video=overlay_video,
                feature_batch=feature_batch, pool=pool, feature_store=store,
            )
            for other, other_dir in also:
                propagate_sequence(backbone, sequence, other, device=device, out_dir=other_dir,
                                   pool=pool, feature_store=store)
            total_frames += sequence.num_frames
            seconds += result.seconds
            bar.set_postfix(seq=sequence.name, fps=f"{sequence.num_frames / result.seconds:.1f}")
    return {"frames": total_frames, "seconds": seconds,
            "frames_per_second": total_frames / max(seconds, 1e-9)}


def evaluate_backbone_on_davis(
    backbone: nn.Module,
    davis_root: str | os.PathLike,
    *,
    year: int = 2017,
    split: str = "val",
    protocol: str = "crw",
    device: torch.device | str | None = None,
    out_dir: str | os.PathLike | None = None,
    sequences: Sequence[str] | None = None,
    resolution: str = "480p",
    progress: bool = False,
    **overrides,
) -> dict[str, float]:
    """Propagate with ``backbone`` and score with the official DAVIS J&F.

    ``backbone`` needs ``features(x: B×3×H×W in [0, 1]) -> B×C×h×w``. Predictions go to
    ``out_dir`` (a temporary folder when None). ``overrides`` replace protocol settings.

    Returns:
        The official global columns (``'J&F-Mean'``, ``'J-Mean'``, ...), values in [0, 1],
        plus ``'frames_per_second'``.
    """
    import tempfile

    from densessl.eval.davis_metrics import evaluate_results

    config = make_config(protocol, **overrides)
    dataset = DavisDataset(davis_root, year=year, split=split, resolution=resolution,
                           sequences=sequences)
    with tempfile.TemporaryDirectory(prefix="densessl-prop-") as scratch:
        target = Path(out_dir) if out_dir is not None else Path(scratch)
        timing = propagate_dataset(backbone, dataset, target, config, device=device,
                                   progress=progress)
        scores = evaluate_results(dataset, target, year=year, split=split,
                                  task="semi-supervised", resolution=resolution)
    row = dict(scores.global_row)
    row["frames_per_second"] = timing["frames_per_second"]
    return row


def save_settings(path: str | os.PathLike, **settings) -> None:
    """Write the resolved settings of a run as JSON (dataclasses expanded)."""
    resolved = {
        key: asdict(value) if hasattr(value, "__dataclass_fields__") else value
        for key, value in settings.items()
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(resolved, indent=2, default=str) + "\n")
