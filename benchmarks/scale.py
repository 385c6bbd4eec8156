"""Wall time and peak memory of one FL attack run as the corpus grows (issue 13, Build 6).

Runs ``serbench eval --attack ATTACK --defense none --dataset-option speakers=N --folds 1``
for each N, one after another, each in its own process, and prints its wall time, peak
resident memory (the child's own ``ru_maxrss``), its gender UAR from single updates (fold 1,
which attack strength the memory bought) and exit status; a run that would not fit fails with
serbench's one-line memory error, which is printed. The synth corpora are generated and
their features extracted first (untimed), so the table compares the runs themselves.

    python benchmarks/scale.py                       # speakers 40, 90, 180
    python benchmarks/scale.py --speakers 40 90 180 400 --attack fedsgd
    python benchmarks/scale.py --speakers 90 --attack-param weight_space_gib=4
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def run(args: list[str], log: Path) -> tuple[float, float, int, str]:
    """One child process: its wall seconds, its own peak RSS in GiB (``wait4``'s rusage),
    its exit status and the last line of its stderr."""
    start = time.perf_counter()
    with open(log, "w") as err:
        child = subprocess.Popen([sys.executable, "-m", "serbench", *args],
                                 stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)  # reaped here, not by Popen
    lines = log.read_text().strip().splitlines()
    return wall, usage.ru_maxrss / 2**20, child.returncode, lines[-1] if lines else ""


def single_update_uar(out: Path) -> str:
    """The run's gender UAR from single updates (its one fold), as printed."""
    with open(out / "metrics.csv", newline="") as f:
        return f"{float(next(csv.DictReader(f))['gender@n=1.uar']):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--speakers", type=int, nargs="+", default=[40, 90, 180])
    parser.add_argument("--attack", default="fedavg", choices=["fedavg", "fedsgd"])
    parser.add_argument("--attack-param", action="append", default=[], metavar="KEY=VALUE",
                        help="passed on to every timed run (repeatable)")
    args = parser.parse_args()
    extra = [a for p in args.attack_param for a in ("--attack-param", p)]
    print("| speakers | wall | peak RSS | gender UAR n=1 | result |\n|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sorted(args.speakers):
            common = ["--dataset-option", f"speakers={n}", "--folds", "1"]
            # Corpus and features first: `list` cannot build them, a 1-round run does.
            subprocess.run([sys.executable, "-m", "serbench", "eval", "--attack", args.attack,
                            *common, "--attack-param", "rounds=1", "--attack-param",
                            "shadow_runs=1", "--out", str(Path(tmp) / f"warm{n}")],
                           capture_output=True, check=False)
            out = Path(tmp) / f"run{n}"
            wall, peak, code, last = run(["eval", "--attack", args.attack, "--defense", "none",
                                          *common, *extra, "--out", str(out)],
                                         Path(tmp) / f"run{n}.log")
            result, leakage = ("ok", single_update_uar(out)) if code == 0 else (last, "")
            print(f"| {n} | {wall:.0f} s | {peak:.1f} GiB | {leakage} | {result} |", flush=True)


if __name__ == "__main__":
    main()
