"""No library noise (issue 12): a full default run and a RAVDESS FedSGD run print no warning.
Expected warnings are silenced where they arise or avoided; an unexpected one would show."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest


def quiet_run(*args: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from serbench.cli import main; main()", "eval", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr
    return proc


def assert_no_warning(proc: subprocess.CompletedProcess) -> None:
    noisy = [line for line in (proc.stdout + proc.stderr).splitlines() if "Warning" in line]
    assert not noisy, noisy


@pytest.mark.slow
def test_default_run_prints_no_warning(tmp_path: Path) -> None:
    proc = quiet_run("--attack", "fedavg", "--defense", "none", "--out", str(tmp_path / "run"))
    assert_no_warning(proc)
    assert "gender n=all" in proc.stdout  # the whole default report, piped


@pytest.mark.slow
def test_ravdess_fedsgd_prints_no_warning(ravdess_root: Path, tmp_path: Path) -> None:
    assert_no_warning(quiet_run("--attack", "fedsgd", "--dataset", "ravdess", "--data-root",
                                str(ravdess_root), "--out", str(tmp_path / "run")))
