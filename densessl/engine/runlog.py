"""Run folders: ``runs/<name>/{config.yaml, log.jsonl, events (TensorBoard), checkpoints/}``,
plus the git commit and the environment saved next to the run."""

from __future__ import annotations

import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

_REPO_ROOT = Path(__file__).resolve().parents[2]


def git_info(root: Path = _REPO_ROOT) -> dict[str, Any]:
    """Commit hash and whether the working tree has changes (read-only git calls)."""
    info: dict[str, Any] = {"commit": None, "dirty": None}
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
        info["commit"] = commit.stdout.strip()
        status = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=root, capture_output=True, text=True, timeout=10, check=True,
        )
        info["dirty"] = bool(status.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def environment_info() -> dict[str, Any]:
    """Python, platform, library versions, devices."""
    info: dict[str, Any] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "argv": sys.argv,
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "cuda_available": torch.cuda.is_available(),
        "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
    }
    for name in ("torchvision", "kornia", "timm", "numpy", "cv2", "decord"):
        try:
            module = __import__(name)
            info[name] = getattr(module, "__version__", "unknown")
        except Exception:
            info[name] = None
    return info


def write_run_info(run_dir: Path, world_size: int = 1) -> None:
    """``git.json`` and ``environment.json`` in the run folder."""
    (run_dir / "git.json").write_text(json.dumps(git_info(), indent=2) + "\n")
    env = environment_info()
    env["world_size"] = world_size
    (run_dir / "environment.json").write_text(json.dumps(env, indent=2) + "\n")


def read_run_log(path: str | os.PathLike) -> list[dict]:
    """The records of a run's ``log.jsonl`` that carry a step; a line cut short by an
    interrupted run is skipped."""
    records = []
    for line in Path(path).read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and "step" in record:
            records.append(record)
    return records


def truncate_log(path: Path, last_step: int) -> None:
    """Drop log lines of steps after ``last_step`` (logged by a run that was then interrupted)."""
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line).get("step", 0) > last_step:
                continue
        except ValueError:
            continue
        kept.append(line)
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(k + "\n" for k in kept))
    os.replace(tmp, path)


class RunLogger:
    """Writes metric records to ``log.jsonl`` and TensorBoard (when importable), main rank only."""

    def __init__(self, run_dir: Path, enabled: bool = True, tensorboard: bool = True) -> None:
        self.run_dir = run_dir
        self.enabled = enabled
        self.writer = None
        self._file = None
        if not enabled:
            return
        self._file = open(run_dir / "log.jsonl", "a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(log_dir=str(run_dir / "tensorboard"))
            except Exception:  # tensorboard not installed
                self.writer = None

    def log(self, step: int, values: dict[str, Any], kind: str = "train") -> None:
        """One record ``{"step", "kind", "time", **values}``."""
        if not self.enabled:
            return
        record = {"step": int(step), "kind": kind, "time": time.time()}
        record.update({k: _plain(v) for k, v in values.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self.writer is not None:
            for key, value in values.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
                    self.writer.add_scalar(f"{kind}/{key}", value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value
