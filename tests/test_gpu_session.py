"""benchmarks/gpu_session.sh: the budget logic and the packing, without a GPU (no stage runs)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_session.sh"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None or shutil.which("tar") is None,
                                reason="needs bash and tar")


def run_session(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    davis = tmp_path / "davis"
    (davis / "JPEGImages").mkdir(parents=True, exist_ok=True)
    full_env = {**os.environ, "RESULTS": str(tmp_path / "results"), "OUT": str(tmp_path / "out"),
                "WHEELS": "", "SCS_SDIST": "", "DAVIS": str(davis), "PYTHON": sys.executable, **env}
    return subprocess.run(["bash", str(SCRIPT)], env=full_env, capture_output=True, text=True, timeout=60)


def packed_names(tmp_path: Path) -> set[str]:
    with tarfile.open(tmp_path / "out" / "gpu_results.tar.gz") as archive:
        return {os.path.normpath(name) for name in archive.getnames()}


def test_stages_that_do_not_fit_the_budget_are_skipped_and_the_results_packed(tmp_path: Path) -> None:
    # a 6-minute training needs 510 s; a 100 s budget leaves 80 after packing
    result = run_session(tmp_path, STAGES="crw-real vos-real vos-real-t1 vos-real-hard", BUDGET_S="100")
    assert result.returncode == 0, result.stderr
    assert "crw_real.log: skipped" in result.stdout and "vos_real.log: skipped" in result.stdout
    assert "vos_real_t1.log: skipped" in result.stdout and "vos_real_hard.log: skipped" in result.stdout
    assert "510 s needed" in result.stdout and "540 s needed" in result.stdout
    assert {"crw_real.log", "vos_real.log"} <= packed_names(tmp_path)
    assert "skipped" in (tmp_path / "results" / "crw_real.log").read_text()


def test_real_minutes_sets_the_real_data_stage_limits(tmp_path: Path) -> None:
    result = run_session(tmp_path, STAGES="crw-real", BUDGET_S="100", REAL_MINUTES="0.5")
    # 30 s of training + 150 s: still more than the 80 s left
    assert "180 s needed" in result.stdout
    bad = run_session(tmp_path, STAGES="crw-real", REAL_MINUTES="six")
    assert bad.returncode == 2 and "REAL_MINUTES must be a number" in bad.stderr


def test_unknown_stage_and_missing_davis_stop_with_a_message(tmp_path: Path) -> None:
    bogus = run_session(tmp_path, STAGES="bogus")
    assert bogus.returncode == 2 and "unknown stage 'bogus'" in bogus.stderr
    no_davis = run_session(tmp_path, STAGES="vos-real", DAVIS=str(tmp_path / "nowhere"))
    assert no_davis.returncode == 2 and "vos-real needs DAVIS" in no_davis.stderr
    assert (tmp_path / "out" / "gpu_results.tar.gz").exists()  # packed even on a stop
