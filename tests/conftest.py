"""Shared test fixtures: a tiny DAVIS-layout set written on the fly, and the real mini set.

``tiny_davis`` is a DAVIS-2017-layout folder (palette masks, 255 = void, 1–3 objects as moving
ellipses on a textured background, 64×96 px, 8 frames); ``tiny_davis_factory(**options)`` makes
others (year=2016 writes 0/255 grayscale masks and the frame-pair ImageSets list).
``MINI_DAVIS`` is eight real DAVIS-2016 val sequences kept outside the repository; tests that
use it are marked ``@requires_mini_davis`` and skip when it is absent.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytest
from PIL import Image

from densessl.datasets.palette import write_indexed_png

if TYPE_CHECKING:
    import torch

MINI_DAVIS = Path(__file__).resolve().parents[2] / "shared/data/davis2016_mini"
requires_mini_davis = pytest.mark.skipif(
    not (MINI_DAVIS / "JPEGImages").is_dir(),
    reason=f"real DAVIS mini set not found at {MINI_DAVIS}",
)


@contextlib.contextmanager
def compiled_counting_graphs(model: torch.nn.Module) -> Iterator[tuple[torch.nn.Module, list]]:
    """``torch.compile(model)`` with a backend that records every graph it is given (and runs it
    eagerly), and dynamo's recompile limit raised above what a test runs, so that compiling again
    at every step shows as more graphs instead of a silent fall back to eager."""
    import torch
    import torch._dynamo

    graphs: list = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    limit = "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"
    torch._dynamo.reset()
    try:
        with torch._dynamo.config.patch(**{limit: 64}):
            yield torch.compile(model, backend=counting_backend), graphs
    finally:
        torch._dynamo.reset()


# (sequence name, number of objects)
TINY_SEQUENCES: tuple[tuple[str, int], ...] = (("bear-run", 1), ("cat-jump", 2), ("dog-walk", 3))
_OBJECT_COLORS = np.array(
    [[220, 40, 40], [40, 200, 60], [50, 80, 230], [230, 200, 40], [200, 60, 210]], dtype=np.float64
)


def _ellipse(height: int, width: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.mgrid[:height, :width]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _sequence_masks(
    rng: np.random.Generator, num_objects: int, num_frames: int, height: int, width: int
) -> np.ndarray:
    """``T×H×W`` uint8 ids: moving ellipses (later ids in front), a void ring around object 1
    when there are several objects, and object 3 hidden for two middle frames."""
    ids = np.zeros((num_frames, height, width), dtype=np.uint8)
    for object_id in range(1, num_objects + 1):
        ry = rng.uniform(0.12, 0.25) * height
        rx = rng.uniform(0.10, 0.22) * width
        cy = rng.uniform(0.3, 0.7) * height
        cx = rng.uniform(0.25, 0.75) * width
        vy, vx = rng.uniform(-1.5, 1.5), rng.uniform(-3.0, 3.0)
        for t in range(num_frames):
            if object_id == 3 and t in (num_frames // 2, num_frames // 2 + 1):
                continue  # fully occluded / out of view: ids absent in some frames
            inside = _ellipse(height, width, cy + vy * t, cx + vx * t, ry, rx)
            ids[t][inside] = object_id
    if num_objects >= 2:
        for t in range(num_frames):
            obj = ids[t] == 1
            grown = obj.copy()
            grown[1:] |= obj[:-1]
            grown[:-1] |= obj[1:]
            grown[:, 1:] |= obj[:, :-1]
            grown[:, :-1] |= obj[:, 1:]
            ids[t][grown & (ids[t] == 0)] = 255
    return ids


def _frame(rng: np.random.Generator, ids: np.ndarray) -> np.ndarray:
    """``H×W×3`` uint8 RGB: smooth background + noise, each object a fixed colour + texture."""
    height, width = ids.shape
    yy, xx = np.mgrid[:height, :width]
    base = np.stack([90 + 60 * yy / height, 110 + 50 * xx / width, 100 + 0 * xx], axis=-1)
    image = base + rng.normal(0, 8, size=(height, width, 3))
    for object_id in range(1, len(_OBJECT_COLORS) + 1):
        inside = ids == object_id
        if inside.any():
            image[inside] = _OBJECT_COLORS[object_id - 1] + rng.normal(
                0, 12, size=(inside.sum(), 3)
            )
    return np.clip(image, 0, 255).astype(np.uint8)


def write_tiny_davis(
    root: Path,
    *,
    year: int = 2017,
    sequences: Sequence[tuple[str, int]] = TINY_SEQUENCES,
    num_frames: int = 8,
    size: tuple[int, int] = (64, 96),
    seed: int = 0,
    split: str = "val",
    resolution: str = "480p",
) -> Path:
    """Write a DAVIS-layout set under ``root`` and return ``root``.

    2017: palette PNG ids (255 = void) and ``ImageSets/2017/<split>.txt`` with sequence names.
    2016: 0/255 grayscale masks (all objects merged) and ``ImageSets/<resolution>/<split>.txt``
    listing ``/JPEGImages/<res>/<seq>/<frame>.jpg /Annotations/<res>/<seq>/<frame>.png`` pairs.
    """
    rng = np.random.default_rng(seed)
    height, width = size
    lines: list[str] = []
    for name, num_objects in sequences:
        ids = _sequence_masks(rng, num_objects, num_frames, height, width)
        image_dir = root / "JPEGImages" / resolution / name
        mask_dir = root / "Annotations" / resolution / name
        image_dir.mkdir(parents=True, exist_ok=True)
        mask_dir.mkdir(parents=True, exist_ok=True)
        for t in range(num_frames):
            stem = f"{t:05d}"
            Image.fromarray(_frame(rng, ids[t])).save(image_dir / f"{stem}.jpg", quality=92)
            if year == 2017:
                write_indexed_png(mask_dir / f"{stem}.png", ids[t])
            else:
                fg = ((ids[t] != 0) & (ids[t] != 255)).astype(np.uint8) * 255
                Image.fromarray(fg, mode="L").save(mask_dir / f"{stem}.png")
                frame_file = f"/JPEGImages/{resolution}/{name}/{stem}.jpg"
                lines.append(f"{frame_file} /Annotations/{resolution}/{name}/{stem}.png")
        if year == 2017:
            lines.append(name)
    list_dir = root / "ImageSets" / ("2017" if year == 2017 else resolution)
    list_dir.mkdir(parents=True, exist_ok=True)
    (list_dir / f"{split}.txt").write_text("\n".join(lines) + "\n")
    return root


def tree_hash(root: Path) -> str:
    """Digest of every path and file content under ``root`` (to prove nothing was modified)."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        digest.update(str(path.relative_to(root)).encode())
        if path.is_file():
            digest.update(path.read_bytes())
    return digest.hexdigest()


@pytest.fixture
def tiny_davis(tmp_path: Path) -> Path:
    """A tiny DAVIS-2017-layout set (3 sequences with 1, 2, 3 objects; 8 frames of 64×96)."""
    return write_tiny_davis(tmp_path / "davis2017")


@pytest.fixture
def tiny_davis_factory(tmp_path: Path) -> Callable[..., Path]:
    """``make(name="davis", **options) -> root``: more tiny sets (see :func:`write_tiny_davis`)."""

    def make(name: str = "davis", **options) -> Path:
        return write_tiny_davis(tmp_path / name, **options)

    return make


def build_kernel_emulator(source_name: str, include_dir: Path, out_dir: Path) -> Path:
    """Compiles a CUDA-kernel emulation harness (``tests/<source_name>``, see
    ``tests/cuda_emulation.h``) for the CPU, with AddressSanitizer when available; skips the
    calling test when no C++20 compiler is found."""
    import shutil
    import subprocess

    from torch.utils.cpp_extension import include_paths

    compiler = shutil.which("g++") or shutil.which("c++")
    if compiler is None:
        pytest.skip("no C++ compiler")
    exe = out_dir / Path(source_name).stem
    source = Path(__file__).with_name(source_name)
    cmd = [compiler, "-std=c++20", "-O1", "-pthread", "-Wno-unknown-pragmas",
           "-I", str(include_dir), *(f"-I{p}" for p in include_paths()), str(source), "-o", str(exe)]
    sanitized = subprocess.run([*cmd[:2], "-fsanitize=address", *cmd[2:]], capture_output=True,
                               text=True)
    if sanitized.returncode != 0:  # no ASan runtime: plain build
        plain = subprocess.run(cmd, capture_output=True, text=True)
        if plain.returncode != 0:
            pytest.skip(f"emulation harness does not compile: {plain.stderr[-2000:]}")
    return exe


def built_extension(op):
    """``op.load_extension()`` (an ops module of ``densessl.ops``), skipping the calling test when
    the CUDA extension cannot be built."""
    module = op.load_extension()
    if module is None:
        pytest.skip(f"the CUDA extension {op.EXTENSION_NAME} could not be built")
    return module


def make_motion_set(root: Path, flows: Path, num_sequences: int = 4, num_frames: int = 5, height: int = 48,
                    width: int = 64, num_val: int | None = None, **scene) -> list[str]:
    """Synthetic DAVIS-2017-layout set plus the exact forward flow of every frame as a ``+1`` flow
    tree. ``num_val`` defaults to half the sequences; ``scene`` passes other :class:`SyntheticConfig`
    settings (objects, camera)."""
    from densessl.datasets.synthetic import SyntheticConfig, write_synthetic_davis

    config = SyntheticConfig(num_sequences=num_sequences, num_frames=num_frames, height=height, width=width,
                             num_val=num_sequences // 2 if num_val is None else num_val, write_video=False,
                             write_flow=False, workers=1, **scene)
    return write_synthetic_davis(root, config, progress=False, flow_root=flows)


def check_first_use_check(name: str, good, broken, check, message: str) -> None:
    """``_jit.checked_on`` with ``check`` on the CPU: ``good`` (the reference with a kernel's
    calling convention) passes without a warning, ``broken`` fails with one matching ``message``,
    and the failure is remembered for the device (no second check, no second warning)."""
    import warnings

    import torch

    from densessl.ops import _jit

    cpu = torch.device("cpu")
    _jit.forget(name)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert _jit.checked_on(name, good, cpu, check) is good
        _jit.forget(name)
        with pytest.warns(_jit.ExtensionSelfCheckWarning, match=message):
            assert _jit.checked_on(name, broken, cpu, check) is None
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert _jit.checked_on(name, good, cpu, check) is None
    finally:
        _jit.forget(name)
