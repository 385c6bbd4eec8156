"""What a user reads after `serbench eval`: the summary's statistics, a report that survives a
pipe, `serbench report`, and numbers that do not depend on the machine's thread count."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

SMALL = ["--folds", "1", "--attack-param", "rounds=6", "--attack-param", "epochs=2",
         "--attack-param", "averaging=1,all"]


def serbench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", "from serbench.cli import main; main()", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=None if env is None else os.environ | env)


@pytest.fixture(scope="module")
def fedsgd_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("run") / "fedsgd"
    proc = serbench("eval", "--attack", "fedsgd", "--defense", "none", *SMALL, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def test_summary_holds_every_gender_statistic(fedsgd_run: tuple[Path, str]) -> None:
    out, _ = fedsgd_run
    summary = json.loads((out / "summary.json").read_text())
    gender = [r for r in summary["modes"]["non-adaptive"]["pooled"] if r["task"] == "gender"]
    assert gender
    for row in gender:
        assert row["ci_method"] == "speaker bootstrap" and row["speakers"] >= 4
        assert row["ci_low"] <= row["uar"] <= row["ci_high"]
        for key in ("auc", "tpr_at_0.01_fpr", "tpr_at_0.1_fpr"):
            assert 0.0 <= row[key] <= 1.0
    assert summary["measures"]["gender@n=1"] == "leakage"
    assert summary["worst"]["candidates"] == len(gender)
    environment = json.loads((out / "environment.json").read_text())
    assert environment["threads"] == 1 and "commit" in environment
    from serbench import KERNELS  # the kernels' instruction set, pinned unless the user chose
    assert environment["kernels"] == {k: os.environ.get(k, v) for k, v in KERNELS.items()}


def test_piped_report_shows_every_number_in_full(fedsgd_run: tuple[Path, str]) -> None:
    _, stdout = fedsgd_run
    assert "speaker bootstrap" in stdout and "spk" in stdout
    for line in stdout.splitlines():
        assert len(line) <= 80, line
        assert not re.search(r"[0-9.]…|…[0-9.]", line), line  # no cut number
    assert re.search(r"gender n=1\s+\d\.\d{3}\s+\d\.\d\d–\d\.\d\d\s+\d+\s+\d\.\d\d±\d\.\d\d", stdout)


def test_report_command_reprints_the_run(fedsgd_run: tuple[Path, str]) -> None:
    out, stdout = fedsgd_run
    proc = serbench("report", str(out))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == stdout
    assert "| gender n=1 |" in (out / "report.md").read_text()


def test_report_of_a_missing_run_is_one_line(tmp_path: Path) -> None:
    proc = serbench("report", str(tmp_path / "nothing"))
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "Traceback" not in proc.stderr


def test_numbers_do_not_depend_on_the_thread_count(tmp_path: Path) -> None:
    metrics = []
    for threads in ("1", "2"):
        out = tmp_path / threads
        proc = serbench("eval", "--attack", "fedavg", "--defense", "none", *SMALL, "--out",
                        str(out), env={"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads})
        assert proc.returncode == 0, proc.stderr
        metrics.append((out / "metrics.csv").read_bytes())
    assert metrics[0] == metrics[1]
    assert not pd.read_csv(tmp_path / "1" / "metrics.csv").empty


def test_a_measure_wholly_below_chance_is_reported_as_mis_signed(
        fedsgd_run: tuple[Path, str]) -> None:
    """Issue 28: the report says so where a leakage measure's CI lies wholly below chance (an
    attacker that is always wrong), instead of letting it pass as chance."""
    from serbench.report import _notes
    from serbench.runner import load_result
    from serbench.scoring import MIS_SIGNED, pooled

    out, stdout = fedsgd_run
    assert MIS_SIGNED not in stdout
    result = load_result(out)
    mode = result.modes[0]
    frame = mode.predictions()
    gender = frame["task"] == "gender"
    frame.loc[gender, "y_pred"] = 1 - frame.loc[gender, "y_true"]
    mode.pooled = pooled(frame, result.config["seed"])
    flagged = [n for n in _notes(result) if n.startswith(MIS_SIGNED)]
    below = mode.pooled[mode.pooled["task"].eq("gender") & mode.pooled["ci_high"].lt(0.5)]
    assert len(below) and len(flagged) == len(below)
    assert all("wholly below chance 0.50" in n for n in flagged)
