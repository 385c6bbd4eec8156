"""Baseline leaderboard entries: each built-in defense at its defaults, evaluated by serbench
with the standard protocol on one corpus (docs/leaderboard.md).

For every track and defense it runs ``serbench eval`` once per attack of the track's suite and
seed, keeping the runs under ``runs/baselines/<dataset>/`` (rerunning the script resumes them),
then ``serbench leaderboard submit`` writes ``leaderboards/<dataset>/<surface>/<defense>.json``.

    python leaderboards/baselines.py                               # synth, every track and defense
    python leaderboards/baselines.py --track update --defense none --defense udp
    python leaderboards/baselines.py --dataset ravdess --data-root ../shared/data/ravdess
    python leaderboards/baselines.py --seed 0 --seed 1             # statistics over seeds too
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

from serbench.leaderboard.tracks import TRACKS
from serbench.registry import entry_point_names

REPO = Path(__file__).resolve().parents[1]


def built_in_defenses() -> list[str]:
    """Defenses that ship with serbench (installed from its own defenses/ package)."""
    return sorted(ep.name for ep in entry_points(group="serbench.defenses")
                  if ep.value.startswith("serbench.defenses."))


def serbench(*args: str) -> None:
    print("+ serbench " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "serbench", *args], cwd=REPO, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="synth")
    parser.add_argument("--data-root", help="the corpus directory (not needed for synth)")
    parser.add_argument("--track", action="append", choices=sorted(TRACKS),
                        help="surface(s) to run (default: every track whose attacks are installed)")
    parser.add_argument("--defense", action="append",
                        help=f"defense(s) (default: every built-in one: {built_in_defenses()})")
    parser.add_argument("--seed", action="append", type=int, help="seed(s) (default: 0)")
    parser.add_argument("--dir", default="leaderboards", help="leaderboard directory")
    args = parser.parse_args()

    installed = set(entry_point_names("attack"))
    surfaces = args.track or [s for s, t in TRACKS.items() if set(t.attacks) <= installed]
    root = ["--data-root", args.data_root] if args.data_root else []
    for surface in surfaces:
        for defense in args.defense or built_in_defenses():
            runs = []
            for attack in TRACKS[surface].attacks:
                for seed in args.seed or [0]:
                    out = Path("runs", "baselines", args.dataset, f"{attack}-{defense}-seed{seed}")
                    serbench("eval", "--attack", attack, "--defense", defense, "--dataset",
                             args.dataset, *root, "--seed", str(seed), "--out", str(out))
                    runs.append(str(out))
            serbench("leaderboard", "submit", *runs, "--name", defense, "--dir", args.dir,
                     "--replace")


if __name__ == "__main__":
    main()
