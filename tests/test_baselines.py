"""leaderboards/baselines.py on its two backends (serbench.dispatch): the local process pool
and Ray make the same runs and the same entry; rerunning skips finished runs; a Ray address
with no cluster is one line."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from test_cli import assert_one_line_error

REPO = Path(__file__).resolve().parents[1]
#: One small defense on one track, two seeds: two tiny intercept runs (a trial entry).
TINY = ["--track", "representation", "--defense", "noise", "--seed", "0", "--seed", "1",
        "--dataset-option", "speakers=10", "--dataset-option", "utterances_per_emotion=2",
        "--attack-param", "frames=16", "--attack-param", "target_epochs=1",
        "--attack-param", "epochs=1", "--attack-param", "scenarios=worst",
        "--attack-param", "attackers=generic", "--workers", "1"]
ENTRY = Path("synth/representation/noise-trial.json")
RUNS = [f"intercept-noise-trial-seed{seed}" for seed in (0, 1)]


def baselines(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPO / "leaderboards" / "baselines.py"), *args],
                          capture_output=True, text=True, timeout=600)


def into(root: Path) -> list[str]:
    return ["--runs-dir", str(root / "runs"), "--dir", str(root / "board")]


@pytest.fixture(scope="module")
def boards(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The trial entry made by the process pool, then by a local Ray instance, each into its
    own runs and leaderboard directories."""
    pytest.importorskip("ray")
    root = tmp_path_factory.mktemp("baselines")
    procs = {}
    for backend, extra in (("pool", []), ("ray", ["--ray", "--jobs", "2"])):
        procs[backend] = baselines(*TINY, *into(root / backend), *extra)
        assert procs[backend].returncode == 0, procs[backend].stderr[-3000:]
    return SimpleNamespace(root=root, procs=procs)


@pytest.mark.slow  # two boards and a Ray start: minutes of CI's 15 (README, Test)
def test_ray_makes_the_process_pools_entry(boards: SimpleNamespace) -> None:
    """The acceptance check: the same predictions, byte for byte, and the same entry but for
    when it was submitted and each run's clock times."""
    assert "2 at a time on this machine" in boards.procs["pool"].stdout
    assert "2 at a time on a local Ray instance" in boards.procs["ray"].stdout
    for run in RUNS:
        pool, ray = (boards.root / b / "runs" / run for b in ("pool", "ray"))
        assert (pool / "predictions.csv").read_bytes() == (ray / "predictions.csv").read_bytes()
        assert all(Path(f"{out}.log").exists() for out in (pool, ray))
    entries = []
    for backend in ("pool", "ray"):
        entry = json.loads((boards.root / backend / "board" / ENTRY).read_text())
        del entry["submitted"]
        for run in entry["runs"]:
            del run["environment"]
        entries.append(entry)
    assert entries[0] == entries[1]
    assert entries[0]["standard"] is False  # a trial: its name says so too


@pytest.mark.slow
def test_rerun_skips_finished_runs_and_submits_again(boards: SimpleNamespace) -> None:
    path = boards.root / "pool" / "board" / ENTRY
    path.unlink()
    proc = baselines(*TINY, *into(boards.root / "pool"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("finished before:") == 2 and "done:" not in proc.stdout
    assert path.exists()


def test_ray_address_without_a_cluster_is_one_line(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    proc = baselines(*TINY, *into(tmp_path), "--ray", "127.0.0.1:1")
    assert_one_line_error(proc, "no Ray cluster at 127.0.0.1:1", "ray start --head")
    assert not (tmp_path / "runs").exists()


def test_each_run_of_a_family_logs_to_its_own_file() -> None:
    """Runs named with a strength (``noise-sigma0.1``) keep their own log beside their
    directory, not one shared by the family."""
    from serbench.dispatch import Run

    outs = [Path("runs", f"fedsgd-noise-sigma{s}-seed0") for s in ("0.01", "0.1", "1")]
    assert [Run(("eval",), out).log for out in outs] == [
        Path("runs", f"fedsgd-noise-sigma{s}-seed0.log") for s in ("0.01", "0.1", "1")]
