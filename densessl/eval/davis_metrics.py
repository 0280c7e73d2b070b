"""DAVIS region (J) and boundary (F) scores, equivalent to the official evaluation toolkits.

Definitions follow the DAVIS-2017 toolkit (``davis2017-evaluation``) and, for DAVIS-2016, the
original toolkit:

* J = |S∩G| / |S∪G|, 1 when both are empty.
* F: 1-pixel boundary maps (a pixel differs from its east, south or south-east neighbour; on
  the last row only east counts, on the last column only south, the bottom-right pixel is never
  a boundary), both dilated with a disk of radius ``ceil(bound_th * sqrt(H² + W²))``;
  precision / recall of one boundary against the other's dilation; F = 2PR / (P + R). Empty
  cases are judged on the boundary maps, as the official code does (a full-frame mask has no
  boundary pixels): both empty → 1, one empty → 0.
* The first and the last frame of every sequence are not scored.
* Per object: mean = nanmean, recall = mean(x > 0.5), decay = nanmean(first quarter) −
  nanmean(last quarter) with the official (overlapping) bins. The official code casts the bin
  indices to uint8, which wraps past 255 frames; plain integers are used here.
* Global columns are means over objects; J&F-Mean = (J-Mean + F-Mean) / 2.

Semi-supervised (2017): objects are ids ``1 .. max(first GT frame)`` (the official scorer takes
the largest id of the first annotation, void excluded, not the set of ids over the whole
sequence); void (255) pixels count as background; prediction ids above that count are an
error. Deviation: the official scorer also exits when the prediction never uses its largest
id in the scored frames; here such an object simply scores as an empty prediction.

DAVIS-2016: one object; any nonzero GT pixel is foreground, and any nonzero predicted pixel
too (2016 results are usually 0/255 PNGs). The unsupervised (motion VOS) task is the 2016
single merged foreground: any nonzero prediction against any nonzero GT, one row per sequence.
On a DAVIS-2017-layout set the unsupervised task merges the objects the same way (ids 1-254;
void stays background), which is how motion segmentation is scored on multi-object data.
"""

from __future__ import annotations

import csv
import math
import multiprocessing
import os
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from densessl.datasets.davis import VOID_ID, DavisDataset, DavisSequence, read_result_masks
from densessl.errors import InputError

__all__ = [
    "BOUND_TH",
    "GLOBAL_COLUMNS",
    "PER_OBJECT_COLUMNS",
    "TASKS",
    "DavisScores",
    "ObjectScores",
    "boundary_map",
    "boundary_radius",
    "db_eval_iou",
    "db_statistics",
    "disk_kernel",
    "evaluate_results",
    "evaluate_sequence_masks",
    "f_measure",
    "format_scores_table",
    "write_global_csv",
    "write_per_sequence_csv",
]

BOUND_TH = 0.008
GLOBAL_COLUMNS = ("J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay")
PER_OBJECT_COLUMNS = ("Sequence", "J-Mean", "F-Mean")
TASKS = ("semi-supervised", "unsupervised")


# ----------------------------------------------------------------------------- per frame


def db_eval_iou(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Region similarity J per frame.

    Args:
        gt, pred: ``...×H×W`` masks (nonzero = object), same shape.
    Returns:
        ``...`` float64 J values (a 0-d array for a single ``H×W`` pair); 1 where both are empty.
    """
    gt = np.asarray(gt).astype(bool, copy=False)
    pred = np.asarray(pred).astype(bool, copy=False)
    if gt.shape != pred.shape or gt.ndim < 2:
        raise ValueError(
            f"expected two ...×H×W masks of one shape, got {gt.shape} and {pred.shape}"
        )
    inter = np.count_nonzero(gt & pred, axis=(-2, -1))
    union = np.count_nonzero(gt | pred, axis=(-2, -1))
    with np.errstate(divide="ignore", invalid="ignore"):
        j = np.asarray(inter, dtype=np.float64) / union
    return np.where(union == 0, 1.0, j)


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """1-pixel boundary map of ``...×H×W`` masks (nonzero = object), as the official ``seg2bmap``.

    A pixel is a boundary pixel where the mask differs from its east, south or south-east
    neighbour. On the last row only the east neighbour is compared, on the last column only the
    south one, and the bottom-right pixel is never a boundary pixel.
    """
    seg = np.asarray(mask).astype(bool, copy=False)
    if seg.ndim < 2:
        raise ValueError(f"expected a ...×H×W mask, got shape {seg.shape}")
    out = np.zeros(seg.shape, dtype=bool)
    core = seg[..., :-1, :-1]
    out[..., :-1, :-1] = (
        (core != seg[..., :-1, 1:]) | (core != seg[..., 1:, :-1]) | (core != seg[..., 1:, 1:])
    )
    out[..., -1, :-1] = seg[..., -1, :-1] != seg[..., -1, 1:]
    out[..., :-1, -1] = seg[..., :-1, -1] != seg[..., 1:, -1]
    out[..., -1, -1] = False
    return out


def boundary_radius(height: int, width: int, bound_th: float = BOUND_TH) -> int:
    """Dilation radius in pixels: ``ceil(bound_th * sqrt(H² + W²))``, or ``bound_th`` if ≥ 1."""
    if bound_th >= 1:
        if bound_th != int(bound_th):
            raise ValueError(
                f"bound_th >= 1 is a radius in pixels and must be whole, got {bound_th}"
            )
        return int(bound_th)
    if bound_th < 0:
        raise ValueError(f"bound_th must be >= 0, got {bound_th}")
    return int(np.ceil(bound_th * np.linalg.norm([height, width])))


def disk_kernel(radius: int) -> np.ndarray:
    """Disk structuring element ``(2r+1)×(2r+1)`` uint8: offsets with dx² + dy² ≤ r²."""
    offsets = np.arange(-radius, radius + 1)
    return (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius * radius).astype(np.uint8)


def f_measure(gt: np.ndarray, pred: np.ndarray, bound_th: float = BOUND_TH) -> np.ndarray:
    """Boundary F-measure per frame.

    Args:
        gt, pred: ``...×H×W`` masks (nonzero = object), same shape.
        bound_th: tolerance as a fraction of the image diagonal (< 1) or in pixels (≥ 1).
    Returns:
        ``...`` float64 F values (a 0-d array for a single ``H×W`` pair).
    """
    gt = np.asarray(gt).astype(bool, copy=False)
    pred = np.asarray(pred).astype(bool, copy=False)
    if gt.shape != pred.shape or gt.ndim < 2:
        raise ValueError(
            f"expected two ...×H×W masks of one shape, got {gt.shape} and {pred.shape}"
        )
    lead, (height, width) = gt.shape[:-2], gt.shape[-2:]
    gt = gt.reshape(-1, height, width)
    pred = pred.reshape(-1, height, width)
    kernel = disk_kernel(boundary_radius(height, width, bound_th))
    either = gt | pred
    rows_any, cols_any = either.any(axis=2), either.any(axis=1)
    out = np.empty(gt.shape[0], dtype=np.float64)
    for t in range(gt.shape[0]):
        ys, xs = np.flatnonzero(rows_any[t]), np.flatnonzero(cols_any[t])
        if ys.size == 0:
            out[t] = 1.0  # both masks empty: no boundary on either side
            continue
        # Boundary pixels lie within one pixel above / left of the masks' bounding box, so the
        # maps are computed on the box grown by one pixel on every side: the extra row / column
        # is background (or the image edge), which keeps seg2bmap's last-row / last-column rule
        # exact. Dilation values are only read at boundary pixels, all inside the box, and
        # cv2's dilation border adds nothing, so dilating the crop is exact too.
        window = (
            slice(max(ys[0] - 1, 0), min(ys[-1] + 2, height)),
            slice(max(xs[0] - 1, 0), min(xs[-1] + 2, width)),
        )
        g = boundary_map(gt[t][window]).view(np.uint8)
        p = boundary_map(pred[t][window]).view(np.uint8)
        n_gt, n_pred = np.count_nonzero(g), np.count_nonzero(p)
        if n_gt == 0 or n_pred == 0:
            # (P, R) = (1, 1) when both are empty, else (1, 0) or (0, 1): F = 1 or 0.
            out[t] = 1.0 if n_gt == n_pred else 0.0
            continue
        pred_match = np.count_nonzero(p & cv2.dilate(g, kernel))
        gt_match = np.count_nonzero(g & cv2.dilate(p, kernel))
        precision = pred_match / float(n_pred)
        recall = gt_match / float(n_gt)
        total = precision + recall
        out[t] = 0.0 if total == 0 else 2 * precision * recall / total
    return out.reshape(lead)


def db_statistics(values: Sequence[float] | np.ndarray) -> tuple[float, float, float]:
    """Official per-object statistics of per-frame scores: ``(mean, recall, decay)``.

    mean = nanmean(x); recall = mean(x > 0.5); decay = nanmean(bin 0) − nanmean(bin 3) with
    ``ids = round(linspace(1, n, 5) + 1e-10) − 1`` and bin i = ``x[ids[i] : ids[i+1] + 1]``.
    Indices are plain integers (the official uint8 cast wraps past 255 frames).
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    ids = (np.round(np.linspace(1, len(x), 5) + 1e-10) - 1).astype(np.int64)
    bins = [x[ids[i] : ids[i + 1] + 1] for i in range(4)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", category=RuntimeWarning)
        mean = float(np.nanmean(x))
        recall = float(np.nanmean(x > 0.5))
        decay = float(np.nanmean(bins[0]) - np.nanmean(bins[3]))
    return mean, recall, decay


# ----------------------------------------------------------------------------- results


@dataclass
class ObjectScores:
    """Per-frame and summary scores of one object (one merged foreground when unsupervised).

    ``j`` and ``f`` hold the scored frames only (the first and last frames are excluded).
    """

    sequence: str
    object_id: int
    j: np.ndarray
    f: np.ndarray
    frame_names: list[str] = field(default_factory=list)
    j_mean: float = field(init=False)
    j_recall: float = field(init=False)
    j_decay: float = field(init=False)
    f_mean: float = field(init=False)
    f_recall: float = field(init=False)
    f_decay: float = field(init=False)

    def __post_init__(self) -> None:
        self.j = np.asarray(self.j, dtype=np.float64)
        self.f = np.asarray(self.f, dtype=np.float64)
        self.j_mean, self.j_recall, self.j_decay = db_statistics(self.j)
        self.f_mean, self.f_recall, self.f_decay = db_statistics(self.f)

    @property
    def name(self) -> str:
        """Row name in the per-sequence CSV: ``<seq>_<object id>``."""
        return f"{self.sequence}_{self.object_id}"


@dataclass
class DavisScores:
    """Scores of a set of sequences; ``global_row`` and ``per_object_rows`` are the CSV rows."""

    objects: list[ObjectScores]
    task: str = "semi-supervised"
    year: int = 2017
    split: str = "val"
    elapsed_s: float = 0.0

    def _mean(self, attribute: str) -> float:
        if not self.objects:
            return math.nan
        return float(np.mean([getattr(obj, attribute) for obj in self.objects]))

    @property
    def global_row(self) -> dict[str, float]:
        """``J&F-Mean, J-Mean, J-Recall, J-Decay, F-Mean, F-Recall, F-Decay``: means over
        objects (over sequences when unsupervised); J&F-Mean = (J-Mean + F-Mean) / 2."""
        j_mean, f_mean = self._mean("j_mean"), self._mean("f_mean")
        values = (
            (j_mean + f_mean) / 2.0,
            j_mean,
            self._mean("j_recall"),
            self._mean("j_decay"),
            f_mean,
            self._mean("f_recall"),
            self._mean("f_decay"),
        )
        return dict(zip(GLOBAL_COLUMNS, values))

    @property
    def per_object_rows(self) -> list[dict[str, str | float]]:
        """One ``{Sequence, J-Mean, F-Mean}`` row per object, named ``<seq>_<k>``."""
        return [
            {"Sequence": obj.name, "J-Mean": obj.j_mean, "F-Mean": obj.f_mean}
            for obj in self.objects
        ]

    @property
    def jf_mean(self) -> float:
        return self.global_row["J&F-Mean"]

    def write_csvs(self, out_dir: str | os.PathLike) -> tuple[Path, Path]:
        """Write ``global_results-<split>.csv`` and ``per-sequence_results-<split>.csv``."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        global_path = out_dir / f"global_results-{self.split}.csv"
        per_path = out_dir / f"per-sequence_results-{self.split}.csv"
        write_global_csv(global_path, self.global_row)
        write_per_sequence_csv(per_path, self.per_object_rows)
        return global_path, per_path

    def table(self, per_object: bool = True) -> str:
        return format_scores_table(self, per_object=per_object)


def _csv_number(value: float) -> str:
    # pandas.DataFrame.to_csv(float_format="%.3f") as used by the official script; NaN -> "".
    return "" if math.isnan(value) else format(value, ".3f")


def write_global_csv(path: str | os.PathLike, row: dict[str, float]) -> None:
    """The official ``global_results-<set>.csv``: header + one row, 3 decimals."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(GLOBAL_COLUMNS)
        writer.writerow([_csv_number(row[column]) for column in GLOBAL_COLUMNS])


def write_per_sequence_csv(path: str | os.PathLike, rows: list[dict[str, str | float]]) -> None:
    """The official ``per-sequence_results-<set>.csv``: ``Sequence,J-Mean,F-Mean`` per object."""
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(PER_OBJECT_COLUMNS)
        for row in rows:
            writer.writerow(
                [
                    row["Sequence"],
                    _csv_number(float(row["J-Mean"])),
                    _csv_number(float(row["F-Mean"])),
                ]
            )


def format_scores_table(scores: DavisScores, per_object: bool = True) -> str:
    """A readable text table of the global row and, optionally, the per-object rows."""
    unit = "sequences (merged foreground)" if scores.task == "unsupervised" else "objects"
    lines = [f"DAVIS-{scores.year} {scores.split}, {scores.task}: {len(scores.objects)} {unit}"]
    widths = [max(len(c), 8) for c in GLOBAL_COLUMNS]
    lines.append("  ".join(c.rjust(w) for c, w in zip(GLOBAL_COLUMNS, widths)))
    row = scores.global_row
    lines.append("  ".join(f"{row[c]:.3f}".rjust(w) for c, w in zip(GLOBAL_COLUMNS, widths)))
    if per_object and scores.objects:
        name_width = max(len("Sequence"), *(len(obj.name) for obj in scores.objects))
        lines.append("")
        lines.append(f"{'Sequence'.ljust(name_width)}  {'J-Mean':>8}  {'F-Mean':>8}")
        for obj in scores.objects:
            lines.append(f"{obj.name.ljust(name_width)}  {obj.j_mean:8.3f}  {obj.f_mean:8.3f}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- sequences


def _check_task(task: str, year: int) -> None:
    if task not in TASKS:
        raise InputError(f"task must be one of {', '.join(TASKS)}, got '{task}'")
    if year not in (2016, 2017):
        raise InputError(f"year must be 2016 or 2017, got {year}")


def _num_objects(first_gt: np.ndarray, task: str, year: int) -> int:
    """Objects scored in a sequence: 1 for DAVIS-2016 / unsupervised, else the official rule
    ``max(first GT frame)`` with void set to background."""
    if year == 2016 or task == "unsupervised":
        return 1
    first = np.where(first_gt == VOID_ID, 0, first_gt)
    return int(first.max()) if first.size else 0


def _score_frames(
    gt: np.ndarray,
    pred: np.ndarray,
    num_objects: int,
    binary: bool,
    sequence: str,
    frame_names: list[str],
    bound_th: float,
    void_in_gt: bool = False,
) -> list[ObjectScores]:
    """Score already-selected frames (``T×H×W`` ids). ``binary``: one object, any nonzero
    pixel (DAVIS-2016 / unsupervised); else objects ``1..num_objects``, where comparing ids
    with ``k`` < 255 already treats void as background."""
    scores = []
    if binary:  # one merged foreground; void (2017 layout) is background
        gt_fg = (gt != 0) & (gt != VOID_ID) if void_in_gt else gt != 0
    for object_id in range(1, num_objects + 1):
        if binary:
            gt_obj, pred_obj = gt_fg, pred != 0
        else:
            gt_obj, pred_obj = gt == object_id, pred == object_id
        j = db_eval_iou(gt_obj, pred_obj)
        f = f_measure(gt_obj, pred_obj, bound_th)
        scores.append(ObjectScores(sequence, object_id, j, f, list(frame_names)))
    return scores


def _check_pred_ids(
    pred: np.ndarray,
    num_objects: int,
    sequence: str,
    frame_names: list[str],
    paths: list[Path] | None = None,
) -> None:
    """Official rule: a predicted id above the GT's object count is an error."""
    maxima = pred.reshape(pred.shape[0], -1).max(axis=1) if pred.size else np.zeros(0)
    bad = np.flatnonzero(maxima > num_objects)
    if bad.size:
        t = int(bad[0])
        raise InputError(
            f"predicted id {int(maxima[t])} in frame {frame_names[t]} of sequence '{sequence}' "
            f"exceeds the number of objects in the ground truth's first frame ({num_objects})",
            None if paths is None else paths[t],
        )


def _scored_slice(num_frames: int, sequence: str) -> slice:
    if num_frames < 3:
        raise InputError(
            f"sequence '{sequence}' has {num_frames} frames; at least 3 are needed "
            "(the first and the last frame are not scored)"
        )
    return slice(1, num_frames - 1)


def evaluate_sequence_masks(
    gt: np.ndarray,
    pred: np.ndarray,
    *,
    sequence: str = "sequence",
    task: str = "semi-supervised",
    year: int = 2017,
    frame_names: Sequence[str] | None = None,
    bound_th: float = BOUND_TH,
) -> list[ObjectScores]:
    """Score one sequence held in memory, as the official scorer would score it from files.

    Args:
        gt: ``T×H×W`` integer GT id maps of every frame (2017: 0 background, 255 void;
            2016: any nonzero = object).
        pred: ``T×H×W`` integer predicted id maps of the same frames (first and last frames
            are ignored).
        sequence: name used for the rows (``<sequence>_<k>``) and in errors.
        task: 'semi-supervised' or 'unsupervised' (DAVIS-2016 merged foreground).
        year: 2017 or 2016.
        frame_names: names of the T frames (default '00000', '00001', ...).
    Returns:
        One :class:`ObjectScores` per object (per sequence when unsupervised); aggregate them
        with ``DavisScores(objects)``.
    """
    _check_task(task, year)
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.ndim != 3 or gt.shape != pred.shape:
        raise ValueError(
            f"expected T×H×W gt and pred of one shape, got {gt.shape} and {pred.shape}"
        )
    if not (np.issubdtype(gt.dtype, np.integer) or gt.dtype == bool):
        raise ValueError(f"gt must hold integer ids, got {gt.dtype}")
    if not (np.issubdtype(pred.dtype, np.integer) or pred.dtype == bool):
        raise ValueError(f"pred must hold integer ids, got {pred.dtype}")
    num_frames = gt.shape[0]
    names = (
        list(frame_names) if frame_names is not None else [f"{i:05d}" for i in range(num_frames)]
    )
    if len(names) != num_frames:
        raise ValueError(f"{len(names)} frame names for {num_frames} frames")
    scored = _scored_slice(num_frames, sequence)
    num_objects = _num_objects(gt[0], task, year)
    binary = year == 2016 or task == "unsupervised"
    if not binary:
        _check_pred_ids(pred[scored], num_objects, sequence, names[scored])
    return _score_frames(
        gt[scored], pred[scored], num_objects, binary, sequence, names[scored], bound_th,
        void_in_gt=year == 2017,
    )


def _score_sequence(
    sequence: DavisSequence, results_dir: Path, task: str, bound_th: float
) -> list[ObjectScores]:
    """Read one sequence's GT and result files and score it (runs in a worker process)."""
    year = sequence.year
    gt = sequence.masks(require_all=True)  # 2016 masks come back binary already
    scored = _scored_slice(sequence.num_frames, sequence.name)
    indices = list(range(sequence.num_frames))[scored]
    names = [sequence.frame_names[i] for i in indices]
    num_objects = _num_objects(gt[0], task, year)
    pred = read_result_masks(results_dir, sequence, indices)
    binary = year == 2016 or task == "unsupervised"
    if not binary:
        files = [results_dir / sequence.name / f"{n}.png" for n in names]
        _check_pred_ids(pred, num_objects, sequence.name, names, files)
    return _score_frames(
        gt[scored], pred, num_objects, binary, sequence.name, names, bound_th, void_in_gt=year == 2017
    )


def _init_worker() -> None:
    cv2.setNumThreads(1)  # one process per core already


def evaluate_results(
    davis: str | os.PathLike | DavisDataset,
    results_dir: str | os.PathLike,
    year: int = 2017,
    split: str = "val",
    task: str = "semi-supervised",
    resolution: str = "480p",
    num_workers: int | None = None,
    *,
    sequences: Sequence[str] | None = None,
    bound_th: float = BOUND_TH,
    progress: bool | None = None,
) -> DavisScores:
    """Score a folder of result PNGs (``<results_dir>/<seq>/<frame>.png``) against DAVIS.

    Always recomputes (no cached CSVs are read). Sequences are scored in parallel by
    ``num_workers`` processes (default ``os.cpu_count()``; 0 or 1 = in this process). Workers
    are started with 'spawn' (safe next to threaded libraries such as torch), so a script that
    calls this must guard its entry point with ``if __name__ == "__main__":``.

    Args:
        davis: DAVIS root folder, or a :class:`DavisDataset` (then ``year``, ``split``,
            ``resolution`` and ``sequences`` are taken from it).
        results_dir: folder of result sequences.
        progress: show a progress bar; None = only when stderr is a terminal.
    Returns:
        :class:`DavisScores` (write the official CSVs with ``.write_csvs(folder)``).
    """
    start = time.perf_counter()
    if isinstance(davis, DavisDataset):
        dataset = davis
    else:
        _check_task(task, int(year))
        dataset = DavisDataset(
            davis, year=year, split=split, resolution=resolution, sequences=sequences
        )
    _check_task(task, dataset.year)
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise InputError("results folder not found", results_dir)

    jobs = list(dataset)
    workers = (os.cpu_count() or 1) if num_workers is None else int(num_workers)
    workers = max(1, min(workers, len(jobs)))
    per_sequence: list[list[ObjectScores] | None] = [None] * len(jobs)
    disable = None if progress is None else not progress  # None: only on a terminal
    bar = tqdm(total=len(jobs), desc="DAVIS J&F", unit="seq", disable=disable)
    try:
        if workers == 1:
            for index, sequence in enumerate(jobs):
                per_sequence[index] = _score_sequence(sequence, results_dir, task, bound_th)
                bar.update(1)
        else:
            context = multiprocessing.get_context("spawn")
            with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker) as pool:
                futures: dict[Future, int] = {
                    pool.submit(_score_sequence, sequence, results_dir, task, bound_th): index
                    for index, sequence in enumerate(jobs)
                }
                try:
                    for future in as_completed(futures):
                        per_sequence[futures[future]] = future.result()
                        bar.update(1)
                except BaseException:
                    for future in futures:
                        future.cancel()
                    raise
    finally:
        bar.close()
    objects = [obj for group in per_sequence if group for obj in group]
    return DavisScores(
        objects,
        task=task,
        year=dataset.year,
        split=dataset.split,
        elapsed_s=time.perf_counter() - start,
    )
