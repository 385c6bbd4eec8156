"""Baseline leaderboard entries: each built-in defense at its defaults and, with ``--families``,
at the standard sweep of strengths (a family: SPEC §7), evaluated by serbench with the standard
protocol on one corpus (docs/leaderboard.md).

For every track and defense configuration it runs ``serbench eval`` once per attack of the
track's suite and seed, keeping the runs under ``runs/baselines/<dataset>/`` (rerunning the
script resumes them), then ``serbench leaderboard submit`` writes
``leaderboards/<dataset>/<surface>/<name>.json``: ``<defense>`` at the defaults, e.g.
``udp-eps100`` in a family. Independent runs go two at a time (``--jobs``), each a
``serbench eval`` process on one thread (OMP_NUM_THREADS=1), its output in a ``.log`` file
beside its run directory.

    python leaderboards/baselines.py                               # synth, every track and defense
    python leaderboards/baselines.py --track update --defense none --defense udp
    python leaderboards/baselines.py --families                    # defaults and every sweep
    python leaderboards/baselines.py --families --defense udp --dry-run
    python leaderboards/baselines.py --dataset ravdess --data-root ../shared/data/ravdess
    python leaderboards/baselines.py --seed 0 --seed 1             # statistics over seeds too
    python leaderboards/baselines.py --families --sweeps-only      # the sweeps, not the defaults
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path

from serbench.leaderboard.tracks import TRACKS
from serbench.registry import entry_point_names

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Sweep:
    """A family's standard strengths: ``param`` at each of ``values`` on ``tracks``. The value
    equal to the defense's default is its default entry (named after the defense), not run
    twice."""

    param: str
    short: str  #: in entry names: udp-eps100, noise-sigma0.1
    values: tuple[float, ...]
    tracks: tuple[str, ...]  #: the surfaces the defense acts on
    #: other values on some surfaces (where a standard value cannot be run there)
    instead: tuple[tuple[str, tuple[float, ...]], ...] = ()

    def values_on(self, surface: str) -> tuple[float, ...]:
        return dict(self.instead).get(surface, self.values)


#: The standard sweeps (issue 11): ε for the DP defenses, σ for noise from no effect (1e-3)
#: to utility at chance (10: the noise dwarfs both an update and T's activations), and the
#: training attack's L∞ budget for adversarial training (the input attacks use 0.05). On the
#: update track noise stops at σ = 2: at 10 FedSGD's global model diverges to inf (synth: after
#: round 131 of the adaptive shadow run; RAVDESS too), and at 3 so did the adaptive attacker's
#: selection run on synth (13 shadow clients, one a round, where the target's runs aggregate
#: two: FedSGD, round 31; before a diverging shadow run kept its updates until then), while
#: utility is low already (σ = 1: FedAvg emotion UAR 0.31 on synth, 0.32 on RAVDESS; chance
#: 0.25).
SWEEPS: dict[str, Sweep] = {
    "udp": Sweep("epsilon", "eps", (1, 10, 100, 1000), ("update",)),
    "udp-ref": Sweep("epsilon", "eps", (10, 25, 50), ("update",)),
    "dpsgd": Sweep("epsilon", "eps", (1, 10, 100), ("update", "representation")),
    "noise": Sweep("sigma", "sigma", (0.001, 0.01, 0.1, 1, 10), ("update", "representation"),
                   instead=(("update", (0.001, 0.01, 0.1, 1, 2)),)),
    "adv": Sweep("eps", "eps", (0.02, 0.05, 0.1, 0.2), ("input",)),
}


@dataclass(frozen=True)
class Config:
    """One entry to produce: a defense with parameters on one track."""

    name: str
    defense: str
    surface: str
    params: tuple[tuple[str, float], ...] = ()


def built_in_defenses() -> list[str]:
    """Defenses that ship with serbench (installed from its own defenses/ package)."""
    return sorted(ep.name for ep in entry_points(group="serbench.defenses")
                  if ep.value.startswith("serbench.defenses."))


def defaults(defense: str) -> dict[str, object]:
    from serbench.registry import load_plugin

    return load_plugin("defense", defense)().params()


def configs(surfaces: list[str], defenses: list[str], families: bool,
            defaults_too: bool = True) -> list[Config]:
    """Every defense at its defaults on every track (unless not ``defaults_too``); with
    ``families``, each sweep's other strengths on the tracks its defense acts on."""
    out = [Config(d, d, s) for s in surfaces for d in defenses] if defaults_too else []
    if families:
        for defense in defenses:
            sweep = SWEEPS.get(defense)
            if sweep is None:
                continue
            default = defaults(defense).get(sweep.param)
            for surface in sweep.tracks:
                if surface not in surfaces:
                    continue
                for value in sweep.values_on(surface):
                    if default is not None and float(default) == float(value):
                        continue  # the default entry is this family's point
                    out.append(Config(f"{defense}-{sweep.short}{value:g}", defense, surface,
                                      ((sweep.param, value),)))
    return out


def eval_command(cfg: Config, attack: str, seed: int, dataset: str, root: list[str],
                 out: Path) -> list[str]:
    params = [a for k, v in cfg.params for a in ("--param", f"{k}={v:g}")]
    return ["eval", "--attack", attack, "--defense", cfg.defense, *params, "--dataset", dataset,
            *root, "--seed", str(seed), "--out", str(out)]


def serbench(args: list[str], log: Path | None = None) -> None:
    """``serbench ARGS`` on one thread; its output to ``log`` (if given) or to ours."""
    print("+ serbench " + " ".join(args), flush=True)
    env = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "serbench", *args]
    if log is None:
        subprocess.run(command, cwd=REPO, check=True, env=env)
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as stream:
        proc = subprocess.run(command, cwd=REPO, env=env, stdout=stream, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(f"serbench {' '.join(args)} failed (exit {proc.returncode}); see {log}")
    print(f"  done: {args[args.index('--out') + 1]}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="synth")
    parser.add_argument("--data-root", help="the corpus directory (not needed for synth)")
    parser.add_argument("--track", action="append", choices=sorted(TRACKS),
                        help="surface(s) to run (default: every track whose attacks are installed)")
    parser.add_argument("--defense", action="append",
                        help=f"defense(s) (default: every built-in one: {built_in_defenses()})")
    parser.add_argument("--families", action="store_true",
                        help="also each defense's standard sweep of strengths (SWEEPS), on the "
                             "tracks it acts on")
    parser.add_argument("--sweeps-only", action="store_true",
                        help="with --families, only the sweeps' other strengths (e.g. sweeps at "
                             "one seed beside defaults at two)")
    parser.add_argument("--seed", action="append", type=int, help="seed(s) (default: 0)")
    parser.add_argument("--jobs", type=int, default=2,
                        help="runs at once, one thread each (default: 2)")
    parser.add_argument("--dir", default="leaderboards", help="leaderboard directory")
    parser.add_argument("--dry-run", action="store_true", help="list the entries and runs only")
    args = parser.parse_args()

    installed = set(entry_point_names("attack"))
    surfaces = args.track or [s for s, t in TRACKS.items() if set(t.attacks) <= installed]
    root = ["--data-root", args.data_root] if args.data_root else []
    if args.sweeps_only and not args.families:
        parser.error("--sweeps-only needs --families")
    todo = configs(surfaces, args.defense or built_in_defenses(), args.families,
                   defaults_too=not args.sweeps_only)
    plan = []
    for cfg in todo:
        runs = []
        for attack in TRACKS[cfg.surface].attacks:
            for seed in args.seed or [0]:
                out = Path("runs", "baselines", args.dataset, f"{attack}-{cfg.name}-seed{seed}")
                runs.append((eval_command(cfg, attack, seed, args.dataset, root, out), out))
        plan.append((cfg, runs))
    if args.dry_run:
        for cfg, runs in plan:
            print(f"{args.dataset}/{cfg.surface}/{cfg.name}: " + "; ".join(
                " ".join(c) for c, _ in runs))
        print(f"{len(plan)} entries, {sum(len(r) for _, r in plan)} runs "
              f"(a run shared by several entries runs once)")
        return

    failed: list[str] = []
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        started: dict[Path, Future] = {}
        for _, runs in plan:  # queued in entry order, so entries complete roughly in order
            for command, out in runs:
                if out not in started:
                    started[out] = pool.submit(serbench, command, out.with_suffix(".log"))
        for cfg, runs in plan:
            errors = [str(exc) for _, out in runs if (exc := started[out].exception())]
            if errors:
                failed.append(f"{cfg.surface}/{cfg.name}: {errors[0]}")
                print(f"! {cfg.surface}/{cfg.name} not submitted: {errors[0]}", flush=True)
                continue
            try:
                serbench(["leaderboard", "submit", *(str(out) for _, out in runs), "--name",
                          cfg.name, "--dir", args.dir, "--replace"])
            except subprocess.CalledProcessError as exc:
                failed.append(f"{cfg.surface}/{cfg.name}: submit failed (exit {exc.returncode})")
    if failed:
        print(f"{len(failed)} of {len(plan)} entries failed:\n  " + "\n  ".join(failed),
              file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
