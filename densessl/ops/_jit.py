"""Just-in-time build of the compiled ops: cached on disk and per process, never fatal.

Sources ship as package data and are compiled on first use with
:func:`torch.utils.cpp_extension.load` (which picks the C++ standard PyTorch itself needs).
Builds land in ``$TORCH_EXTENSIONS_DIR/<name>_<tag>`` or ``~/.cache/densessl/ops/<name>_<tag>``;
the tag hashes the sources, the PyTorch/CUDA versions and the target architectures, so a changed
source or a different GPU gets a fresh build while an unchanged one is loaded in a second.

When a build fails, :func:`load_extension` warns once and returns None; callers then use their
pure-PyTorch reference. A built op is also checked against that reference on a tiny problem the
first time it runs on each device (:func:`checked_on`): a kernel built for another architecture,
or one that computes wrong results on that GPU, is caught there, before it touches real data.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import threading
import warnings
from pathlib import Path
from types import ModuleType
from typing import Callable, Iterator, Sequence

import torch
from torch import Tensor

_LOCK = threading.Lock()
_LOADED: dict[str, ModuleType | None] = {}
_CHECK_LOCK = threading.Lock()
_CHECKED: dict[tuple[str, str], bool] = {}

SelfCheck = Callable[[ModuleType, torch.device], None]
"""``check(module, device)``: compares the op with its reference on ``device``; raises if they differ."""


class ExtensionBuildWarning(RuntimeWarning):
    """A compiled op could not be built; the PyTorch reference is used instead."""


class ExtensionSelfCheckWarning(RuntimeWarning):
    """A compiled op failed its first-use check on a device; the PyTorch reference is used there."""


def cache_root() -> Path:
    """Folder holding the builds: ``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/densessl/ops``."""
    env = os.environ.get("TORCH_EXTENSIONS_DIR")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "densessl" / "ops"


def _is_toolkit(folder: Path) -> bool:
    """True for a CUDA toolkit folder: ``bin/nvcc`` plus ``libcudart.so`` in a lib folder."""
    if not (folder / "bin" / "nvcc").is_file():
        return False
    lib_dirs = [folder / "lib64", folder / "lib", *folder.glob("targets/*/lib")]
    return any(any(d.glob("libcudart.so*")) for d in lib_dirs if d.is_dir())


def _wrapped_nvcc_targets(nvcc: Path) -> Iterator[Path]:
    """Toolkit folders named by an ``nvcc`` wrapper script (``exec /x/bin/nvcc "$@"``)."""
    try:
        if nvcc.stat().st_size > 64 * 1024:
            return
        text = nvcc.read_text(errors="ignore")
    except OSError:
        return
    for match in re.finditer(r"(/[^\s\"';]+)/bin/nvcc\b", text):
        yield Path(match.group(1))


def find_cuda_home() -> str | None:
    """The CUDA toolkit folder to compile with, or None.

    Tried in order: ``$CUDA_HOME``/``$CUDA_PATH``, the folder of the ``nvcc`` on ``PATH``
    (following symlinks and wrapper scripts), ``/usr/local/cuda`` and ``/usr/local/cuda-*``
    (newest first). A candidate counts only if ``libcudart.so`` sits next to ``bin/nvcc``;
    PyTorch's own guess takes the parent of whatever ``nvcc`` is first on ``PATH``, which is
    wrong for wrapper scripts and then fails to link with "cannot find -lcudart".
    """
    candidates: list[Path] = []
    for var in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(var):
            candidates.append(Path(os.environ[var]))
    nvcc = shutil.which("nvcc")
    if nvcc:
        path = Path(nvcc)
        candidates.append(path.parent.parent)
        candidates.append(path.resolve().parent.parent)
        candidates.extend(_wrapped_nvcc_targets(path.resolve()))
    candidates.append(Path("/usr/local/cuda"))
    candidates.extend(sorted(Path("/usr/local").glob("cuda-*"), reverse=True))
    for folder in candidates:
        if _is_toolkit(folder):
            return str(folder)
    return None


def _arch_tag() -> str:
    arch = os.environ.get("TORCH_CUDA_ARCH_LIST", "")
    if arch and arch != "native":
        return arch
    if torch.cuda.is_available():
        caps = sorted({torch.cuda.get_device_capability(i) for i in range(torch.cuda.device_count())})
        return ";".join(f"{major}.{minor}" for major, minor in caps)
    return ""


def build_tag(files: Sequence[Path], extra: Sequence[str] = ()) -> str:
    """Short hash of the files' contents, the toolchain and ``extra`` strings."""
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    for item in (torch.__version__, str(torch.version.cuda), sys.version, _arch_tag(), *extra):
        digest.update(item.encode())
    return digest.hexdigest()[:12]


def build_extension(
    name: str,
    sources: Sequence[Path],
    *,
    headers: Sequence[Path] = (),
    extra_cuda_cflags: Sequence[str] = (),
    verbose: bool = False,
) -> ModuleType:
    """Compile (or load from the cache) and import an extension; raises on any failure."""
    sources = [Path(s) for s in sources]
    headers = [Path(h) for h in headers]
    missing = [str(p) for p in [*sources, *headers] if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"missing extension sources: {', '.join(missing)}")
    has_cuda = any(p.suffix == ".cu" for p in sources)
    if has_cuda:
        if torch.version.cuda is None:
            raise RuntimeError("this PyTorch build has no CUDA support")
        if not _arch_tag():
            raise RuntimeError("no GPU is visible: set TORCH_CUDA_ARCH_LIST (e.g. 9.0) to build")
    cuda_flags = ["-O3", "--expt-relaxed-constexpr", *extra_cuda_cflags]
    full_name = f"{name}_{build_tag([*sources, *headers], cuda_flags)}"
    build_dir = cache_root() / full_name
    build_dir.mkdir(parents=True, exist_ok=True)

    from torch.utils import cpp_extension

    saved_home, saved_env = cpp_extension.CUDA_HOME, os.environ.get("CUDA_HOME")
    if has_cuda:
        home = find_cuda_home()
        if home is None:
            raise RuntimeError("no CUDA toolkit found (nvcc with libcudart.so); set CUDA_HOME")
        cpp_extension.CUDA_HOME = home
        os.environ["CUDA_HOME"] = home
    try:
        return cpp_extension.load(
            name=full_name,
            sources=[str(p) for p in sources],
            extra_cflags=["-O3"],
            extra_cuda_cflags=cuda_flags if has_cuda else None,
            extra_include_paths=sorted({str(p.parent) for p in [*sources, *headers]}),
            build_directory=str(build_dir),
            with_cuda=has_cuda,
            verbose=verbose,
        )
    finally:
        cpp_extension.CUDA_HOME = saved_home
        if saved_env is None:
            os.environ.pop("CUDA_HOME", None)
        else:
            os.environ["CUDA_HOME"] = saved_env


def short_reason(error: BaseException) -> str:
    """The first compiler error line of a build log, else the message's last line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    compiler_errors = [
        line for line in lines
        if re.search(r"\berror\b", line, re.IGNORECASE) and not line.startswith("Error building")
    ]
    if compiler_errors:
        reason = compiler_errors[0]
    else:
        reason = lines[-1] if lines else type(error).__name__
    return reason if len(reason) <= 300 else reason[:297] + "..."


def load_extension(
    name: str,
    sources: Sequence[Path],
    *,
    headers: Sequence[Path] = (),
    extra_cuda_cflags: Sequence[str] = (),
) -> ModuleType | None:
    """The built extension, or None after one :class:`ExtensionBuildWarning` if it cannot build.

    The outcome is remembered for the rest of the process under ``name``: the build is tried
    once, and a failure warns once.
    """
    with _LOCK:
        if name in _LOADED:
            return _LOADED[name]
        try:
            module: ModuleType | None = build_extension(
                name, sources, headers=headers, extra_cuda_cflags=extra_cuda_cflags
            )
        except Exception as error:  # noqa: BLE001 - any build problem means "use the reference"
            module = None
            warnings.warn(
                f"could not build the compiled op '{name}' ({type(error).__name__}: "
                f"{short_reason(error)}); using the slower PyTorch reference instead. "
                "Run `python tools/build_ops.py --verbose` to see the full build log.",
                ExtensionBuildWarning,
                stacklevel=3,
            )
        _LOADED[name] = module
        return module


def checked_on(name: str, module: ModuleType, device: torch.device, check: SelfCheck) -> ModuleType | None:
    """``module`` if ``check(module, device)`` passes, else None after one
    :class:`ExtensionSelfCheckWarning`.

    The check runs once per process, op and device, and its outcome is remembered. Anything it
    raises counts as a failure: a mismatch (``AssertionError`` saying what differs) or the
    kernel's own error, such as "no kernel image is available" for a build of the wrong
    architecture.
    """
    key = (name, str(device))
    with _CHECK_LOCK:
        if key not in _CHECKED:
            try:
                with torch.no_grad(), torch.autocast(device.type, enabled=False):
                    check(module, device)
                _CHECKED[key] = True
            except Exception as error:  # noqa: BLE001 - any failure means "use the reference"
                _CHECKED[key] = False
                warnings.warn(
                    f"the compiled op '{name}' failed its check against the PyTorch reference on "
                    f"{device} ({type(error).__name__}: {short_reason(error)}); using the "
                    "reference there instead. Please report this with `python tools/build_ops.py "
                    "--verbose` output.",
                    ExtensionSelfCheckWarning,
                    stacklevel=3,
                )
        return module if _CHECKED[key] else None


def assert_close(got: Tensor, want: Tensor, rtol: float, what: str) -> None:
    """Raise ``AssertionError`` naming ``what`` unless ``|got − want| ≤ rtol · max(1, max|want|)``
    everywhere (non-finite entries must match exactly)."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    if got.shape != want.shape:
        raise AssertionError(f"{what}: shape {tuple(got.shape)}, expected {tuple(want.shape)}")
    finite = torch.isfinite(want)
    if not torch.equal(torch.isfinite(got), finite) or not torch.equal(got[~finite], want[~finite]):
        raise AssertionError(f"{what}: non-finite entries differ")
    if finite.any():
        error = (got[finite] - want[finite]).abs().max().item()
        scale = max(1.0, want[finite].abs().max().item())
        if error > rtol * scale:
            raise AssertionError(f"{what}: max abs error {error:.3g} (allowed {rtol * scale:.3g})")


def forget(name: str | None = None) -> None:
    """Drop the remembered build and check outcomes of ``name`` (all when None), so the next
    load builds and checks again."""
    with _LOCK, _CHECK_LOCK:
        if name is None:
            _LOADED.clear()
            _CHECKED.clear()
        else:
            _LOADED.pop(name, None)
            for key in [key for key in _CHECKED if key[0] == name]:
                del _CHECKED[key]


def build_op(name: str, csrc: Path, sources: Sequence[str], headers: Sequence[str] = (), *,
             verbose: bool = False) -> ModuleType:
    """:func:`build_extension` of an op whose sources and headers are file names in ``csrc``."""
    return build_extension(name, [csrc / s for s in sources], headers=[csrc / h for h in headers],
                           verbose=verbose)


def load_op(name: str, csrc: Path, sources: Sequence[str], headers: Sequence[str] = ()) -> ModuleType | None:
    """:func:`load_extension` of an op in ``csrc``; None at once when ``DENSESSL_NO_CUDA_EXT`` is
    set (to anything but 0)."""
    if os.environ.get("DENSESSL_NO_CUDA_EXT", "") not in ("", "0"):
        return None
    return load_extension(name, [csrc / s for s in sources], headers=[csrc / h for h in headers])
