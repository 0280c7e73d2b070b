"""Compute DIS optical flow for DAVIS-style videos and cache it as ``<out>/<gap>/<seq>/<frame>.flo``.

Example::

    python tools/compute_flow.py --davis-root data/DAVIS2016 --year 2016 --out data/DAVIS2016_flows

The layout is that of :mod:`densessl.datasets.flow_cache`: the file of frame ``t`` in folder ``+2``
holds the flow from frame ``t`` to frame ``t + 2``; frames without a partner have no file.
Existing complete files are skipped, so an interrupted run resumes where it stopped; every file
is written to a hidden temporary name in its folder and renamed, so a killed run never leaves a
truncated file behind.
"""

from __future__ import annotations

import argparse
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from densessl.datasets.davis import DavisDataset, DavisSequence
from densessl.datasets.flow_cache import DEFAULT_GAPS, flow_path, gap_folder, parse_gaps
from densessl.datasets.flow_io import FLO_MAGIC
from densessl.errors import InputError
from densessl.tools._common import run_main
from densessl.tools._davis_args import add_davis_args, dataset_from_args, lies_inside
from densessl.video.optical_flow import DEFAULT_PRESET, PRESETS, create_dis, dis_flow, to_gray

MAX_CHUNK_FRAMES = 16
_FLO_MAGIC_BYTES = np.array([FLO_MAGIC], dtype="<f4").tobytes()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="compute_flow",
        description="Compute OpenCV DIS optical flow between frames t and t+gap of DAVIS-style "
        "videos and cache it as <out>/<gap>/<seq>/<frame>.flo (resumable).",
    )
    add_davis_args(parser)
    parser.add_argument("--out", required=True, help="flow folder (<out>/<gap>/<seq>/<frame>.flo)")
    parser.add_argument("--inside-dataset", action="store_true",
                        help="allow --out to lie inside the dataset folder")
    parser.add_argument("--gaps", nargs="+", default=[gap_folder(g) for g in DEFAULT_GAPS],
                        metavar="GAP", help="signed frame offsets, e.g. +1 -1 +2 -2 (the default)")
    parser.add_argument("--preset", default=DEFAULT_PRESET,
                        help=f"DIS preset: {', '.join(PRESETS)} (default {DEFAULT_PRESET})")
    parser.add_argument("--format", choices=("flo", "npy"), default="flo",
                        help="file format (default flo, Middlebury)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes (default: all cores; 1 = no subprocesses)")
    parser.add_argument("--visualize", action="store_true",
                        help="also write colour-wheel PNGs to <out>/vis/<gap>/<seq>/<frame>.png")
    parser.add_argument("--overwrite", action="store_true",
                        help="recompute files that already exist (default: skip them)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def check_output(out: Path, davis_root: Path, inside_dataset: bool) -> None:
    """Refuse an output folder inside the dataset (unless allowed) or an output that is a file."""
    if lies_inside(out, davis_root) and not inside_dataset:
        raise InputError(
            "output folder lies inside the dataset folder; choose another or pass --inside-dataset", out
        )
    if out.exists() and not out.is_dir():
        raise InputError("output path exists and is not a folder", out)


def vis_path(out: Path, gap: int, sequence: str, frame_name: str) -> Path:
    return out / "vis" / gap_folder(gap) / sequence / f"{frame_name}.png"


def is_complete_flow(path: Path, height: int, width: int) -> bool:
    """True when ``path`` is a whole ``height×width`` flow file (.flo or .npy); False if absent,
    truncated or of another size. Reads the header only."""
    try:
        size = path.stat().st_size
        payload = 4 * 2 * height * width
        with open(path, "rb") as handle:
            if path.suffix == ".flo":
                header = handle.read(12)
                if len(header) != 12 or header[:4] != _FLO_MAGIC_BYTES:
                    return False
                file_width, file_height = np.frombuffer(header, dtype="<i4", count=2, offset=4)
                return (file_height, file_width) == (height, width) and size == 12 + payload
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(handle)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(handle)
            return shape == (height, width, 2) and dtype == np.float32 and handle.tell() + payload == size
    except (OSError, ValueError):
        return False


def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` to a hidden temporary file next to ``path``, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_flow_atomic(path: Path, flow: np.ndarray) -> None:
    """Write a flow file (.flo or .npy by ``path``'s suffix) so that it appears complete or not at all."""
    from densessl.datasets.flow_io import write_flo

    if path.suffix == ".flo":
        _write_atomic(path, lambda tmp: write_flo(tmp, flow))
    else:
        def save_npy(tmp: Path) -> None:
            with open(tmp, "wb") as handle:  # a handle, so np.save does not append ".npy"
                np.save(handle, np.ascontiguousarray(flow, dtype=np.float32))

        _write_atomic(path, save_npy)


def write_png_atomic(path: Path, rgb: np.ndarray) -> None:
    from PIL import Image

    _write_atomic(path, lambda tmp: Image.fromarray(rgb).save(tmp, format="PNG"))


@dataclass
class Chunk:
    """Work for one process: consecutive source frames of one sequence.

    ``tasks`` holds ``(t, gap, compute)``; ``compute=False`` means the flow file exists and only
    its PNG is missing (it is read back, not recomputed).
    """

    sequence: DavisSequence
    tasks: list[tuple[int, int, bool]]
    out: str
    suffix: str
    preset: str
    visualize: bool


def run_chunk(chunk: Chunk) -> tuple[int, int]:
    """Compute and write a chunk's flows (and PNGs). Returns ``(flows computed, tasks done)``."""
    from densessl.datasets.flow_io import flow_to_color, read_flow

    seq, out = chunk.sequence, Path(chunk.out)
    names = seq.frame_names
    needed = sorted({i for t, gap, compute in chunk.tasks if compute for i in (t, t + gap)})
    gray = {i: to_gray(seq.frame(i)) for i in needed}  # each frame decoded once per chunk
    dis = create_dis(chunk.preset)
    computed = 0
    for t, gap, compute in chunk.tasks:
        path = flow_path(out, gap, seq.name, names[t], chunk.suffix)
        if compute:
            flow = dis_flow(gray[t], gray[t + gap], dis=dis)
            write_flow_atomic(path, flow)
            computed += 1
        else:
            flow = read_flow(path)
        if chunk.visualize:
            write_png_atomic(vis_path(out, gap, seq.name, names[t]), flow_to_color(flow))
    return computed, len(chunk.tasks)


def _init_worker() -> None:
    import cv2

    cv2.setNumThreads(1)


def plan_chunks(
    dataset: DavisDataset,
    out: Path,
    gaps: Sequence[int],
    *,
    suffix: str,
    preset: str,
    visualize: bool,
    overwrite: bool,
    workers: int,
) -> tuple[list[Chunk], int]:
    """Split the missing flows into chunks of consecutive source frames; also count the skipped."""
    per_sequence: list[tuple[DavisSequence, dict[int, list[tuple[int, int, bool]]]]] = []
    skipped = 0
    for seq in dataset:
        height, width = seq.size
        names = seq.frame_names
        by_source: dict[int, list[tuple[int, int, bool]]] = {}
        for t in range(seq.num_frames):
            for gap in gaps:
                if not 0 <= t + gap < seq.num_frames:
                    continue
                path = flow_path(out, gap, seq.name, names[t], suffix)
                compute = overwrite or not is_complete_flow(path, height, width)
                if compute or (visualize and not vis_path(out, gap, seq.name, names[t]).is_file()):
                    by_source.setdefault(t, []).append((t, gap, compute))
                if not compute:
                    skipped += 1
        per_sequence.append((seq, by_source))
    total_sources = sum(len(by_source) for _, by_source in per_sequence)
    # About four chunks per worker, so that a few long sequences still keep every core busy.
    chunk_frames = max(2, min(MAX_CHUNK_FRAMES, math.ceil(total_sources / (4 * max(1, workers)))))
    chunks = []
    for seq, by_source in per_sequence:
        sources = sorted(by_source)
        for start in range(0, len(sources), chunk_frames):
            tasks = [task for t in sources[start:start + chunk_frames] for task in by_source[t]]
            chunks.append(Chunk(seq, tasks, str(out), suffix, preset, visualize))
    return chunks, skipped


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def compute_flows(
    dataset: DavisDataset,
    out: Path,
    gaps: Sequence[int] = DEFAULT_GAPS,
    *,
    preset: str = DEFAULT_PRESET,
    suffix: str = ".flo",
    workers: int | None = None,
    visualize: bool = False,
    overwrite: bool = False,
    progress: bool = True,
) -> dict[str, float]:
    """Compute the dataset's missing flows into ``out``; returns counts and timing.

    With more than one worker the chunks run in spawned processes (one OpenCV thread each), so a
    script calling this must guard its entry point with ``if __name__ == "__main__":``.
    """
    import cv2
    from tqdm import tqdm

    create_dis(preset)  # refuses an unknown preset before any work
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise InputError(f"--workers must be at least 1, got {workers}", "--workers")
    start = time.perf_counter()
    chunks, skipped = plan_chunks(dataset, out, gaps, suffix=suffix, preset=preset,
                                  visualize=visualize, overwrite=overwrite, workers=workers)
    num_tasks = sum(len(chunk.tasks) for chunk in chunks)
    computed = 0
    bar = tqdm(total=num_tasks, desc=f"DIS {preset}", unit="pair", disable=not progress)
    workers = min(workers, len(chunks))
    if workers <= 1:
        threads = cv2.getNumThreads()
        cv2.setNumThreads(1)
        try:
            for chunk in chunks:
                done, tasks = run_chunk(chunk)
                computed += done
                bar.update(tasks)
        finally:
            cv2.setNumThreads(threads)
    else:
        import multiprocessing

        # spawn: safe whatever threads the parent runs (OpenCV, torch).
        with multiprocessing.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
            for done, tasks in pool.imap_unordered(run_chunk, chunks):
                computed += done
                bar.update(tasks)
            pool.close()
            pool.join()
    bar.close()
    seconds = time.perf_counter() - start
    return {
        "computed": computed,
        "skipped": skipped,
        "seconds": seconds,
        "pairs_per_second": computed / seconds if seconds > 0 else 0.0,
        "workers": max(workers, 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)

    def body() -> int:
        gaps = parse_gaps(args.gaps)
        create_dis(args.preset)
        dataset = dataset_from_args(args)
        out = Path(args.out)
        check_output(out, Path(args.davis_root), args.inside_dataset)
        stats = compute_flows(dataset, out, gaps, preset=args.preset, suffix=f".{args.format}",
                              workers=args.workers, visualize=args.visualize,
                              overwrite=args.overwrite, progress=not args.quiet)
        print(f"computed {stats['computed']} flows, skipped {stats['skipped']} existing, "
              f"{stats['seconds']:.1f} s, {stats['pairs_per_second']:.1f} pairs/s "
              f"({stats['workers']} worker{'s' if stats['workers'] != 1 else ''}, DIS {args.preset}) "
              f"-> {out}")
        return 0

    return run_main(body)
