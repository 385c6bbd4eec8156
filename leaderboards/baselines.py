"""Baseline leaderboard entries: each built-in defense at its defaults and, with ``--families``,
at the standard sweep of strengths (a family: SPEC §7), evaluated by serbench with the standard
protocol on one corpus (docs/leaderboard.md).

For every track and defense configuration it runs ``serbench eval`` once per attack of the
track's suite and seed, keeping the runs under ``runs/baselines/<dataset>/`` (``--runs-dir``;
rerunning the script skips the finished runs and resumes the others), then
``serbench leaderboard submit`` writes ``leaderboards/<dataset>/<surface>/<name>.json``:
``<defense>`` at the defaults, e.g. ``udp-eps100`` in a family. Independent runs go two at a
time (``--jobs``), each a ``serbench eval`` process on one thread (OMP_NUM_THREADS=1), its
output in a ``.log`` file beside its run directory. With ``--ray`` the same command lines run
as Ray tasks, one CPU each, on a local Ray instance or, with an address, on a Ray cluster when
one machine is not enough (docs/cluster.md: its machines share the repository, data and runs
paths); the runs and entries are the same either way (:mod:`serbench.dispatch`). Relative
paths are relative to the repository. ``--dataset-option`` and ``--attack-param`` make quick
trials: their entries are named ``<name>-trial`` and submitted with ``--allow-reduced``.

    python leaderboards/baselines.py                               # synth, every track and defense
    python leaderboards/baselines.py --track update --defense none --defense udp
    python leaderboards/baselines.py --families                    # defaults and every sweep
    python leaderboards/baselines.py --families --defense udp --dry-run
    python leaderboards/baselines.py --dataset ravdess --data-root ../shared/data/ravdess
    python leaderboards/baselines.py --seed 0 --seed 1             # statistics over seeds too
    python leaderboards/baselines.py --families --sweeps-only      # the sweeps, not the defaults
    python leaderboards/baselines.py --ray                         # on a local Ray instance
    python leaderboards/baselines.py --ray HEAD:6379               # on a Ray cluster
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cache
from importlib.metadata import entry_points
from pathlib import Path

from serbench.dispatch import LOCAL_RAY, ONE_THREAD, Backend, Outcome, Run, backend, dispatch, \
    failure, say
from serbench.errors import SerbenchError
from serbench.leaderboard.tracks import TRACKS
from serbench.registry import entry_point_names, load_plugin

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
    # Issue 24: the share of each update kept (DLG's default regime, 0.7, down to 1%), the
    # gradient-reversal weight around Ganin's 1, and RecUP-FL's relative L2 budget (the zoo at
    # chance from 0.1 at the initial model on synth, to a perturbation as large as the update).
    "prune": Sweep("keep", "k", (0.01, 0.1, 0.3, 0.7), ("update",)),
    "grl": Sweep("lam", "lam", (0.1, 0.3, 1, 3), ("representation",)),
    "recup": Sweep("budget", "b", (0.03, 0.1, 0.3, 1), ("update",)),
    # A fixed McAdams coefficient (the default draws it per utterance in [0.5, 0.9]). Its
    # audio reaches every track.
    "mcadams": Sweep("alpha", "alpha", (0.5, 0.7, 0.9),
                     ("update", "representation", "input", "release")),
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


@dataclass(frozen=True)
class Options:
    """What every run of a board shares."""

    dataset: str = "synth"
    data_root: str | None = None
    seeds: tuple[int, ...] = (0,)
    runs_dir: Path | None = None  #: default runs/baselines/<dataset>
    #: KEY=VALUE: the corpus's options, and parameters each attack that has KEY gets (trials)
    dataset_options: tuple[str, ...] = ()
    attack_params: tuple[str, ...] = ()
    workers: int = 0  #: each run's ``serbench eval --workers`` (0: its default)


@dataclass(frozen=True)
class Entry:
    """One entry to submit and the runs it is made of."""

    config: Config
    runs: tuple[Run, ...]
    reduced: bool  #: a trial (reduced protocol): submitted with --allow-reduced


@cache
def param_names(attack: str) -> frozenset[str]:
    return frozenset(load_plugin("attack", attack)().params())


def attack_params(attack: str, given: tuple[str, ...]) -> list[str]:
    """The ``KEY=VALUE`` of ``given`` whose KEY is one of ``attack``'s parameters."""
    return [p for p in given if p.partition("=")[0] in param_names(attack)]


def eval_command(cfg: Config, attack: str, seed: int, opts: Options, out: Path) -> list[str]:
    params = [a for k, v in cfg.params for a in ("--param", f"{k}={v:g}")]
    root = ["--data-root", opts.data_root] if opts.data_root else []
    trial = [a for p in opts.dataset_options for a in ("--dataset-option", p)] + [
        a for p in attack_params(attack, opts.attack_params) for a in ("--attack-param", p)]
    workers = ["--workers", str(opts.workers)] if opts.workers else []
    return ["eval", "--attack", attack, "--defense", cfg.defense, *params, "--dataset",
            opts.dataset, *root, *trial, "--seed", str(seed), *workers, "--out", str(out)]


def plan(todo: list[Config], opts: Options) -> list[Entry]:
    """Each configuration's entry and its runs: one per attack of its track and seed. An entry
    whose runs take corpus options or attack parameters that change numbers is a trial named
    ``<name>-trial``, so it never overwrites a standard entry or reuses a standard run."""
    for defense in {cfg.defense for cfg in todo}:
        load_plugin("defense", defense)  # an unknown name: one line now, not a failed run each
    runs_dir = opts.runs_dir or Path("runs", "baselines", opts.dataset)
    attacks = {a for cfg in todo for a in TRACKS[cfg.surface].attacks}
    used = {p for a in attacks for p in attack_params(a, opts.attack_params)}
    if unused := [p for p in opts.attack_params if p not in used]:
        raise SerbenchError(f"--attack-param {unused[0]}: no attack of the tracks run "
                            f"({', '.join(sorted(attacks))}) has that parameter")
    entries = []
    for cfg in todo:
        track = TRACKS[cfg.surface]
        reduced = bool(opts.dataset_options) or any(
            p.partition("=")[0] not in track.neutral
            for a in track.attacks for p in attack_params(a, opts.attack_params))
        if reduced:
            cfg = replace(cfg, name=f"{cfg.name}-trial")
        runs = []
        for attack in track.attacks:
            for seed in opts.seeds:
                out = runs_dir / f"{attack}-{cfg.name}-seed{seed}"
                runs.append(Run(tuple(eval_command(cfg, attack, seed, opts, out)), out))
        entries.append(Entry(cfg, tuple(runs), reduced))
    return entries


def serbench(args: list[str]) -> None:
    """``serbench ARGS`` here, on one thread, its output to ours."""
    say("+ serbench " + " ".join(args))
    subprocess.run([sys.executable, "-m", "serbench", *args], cwd=REPO, check=True,
                   env=os.environ | ONE_THREAD)


def produce(entries: list[Entry], where: Backend, board: Path
            ) -> tuple[list[str], dict[Path, Future[Outcome]]]:
    """Run every entry's runs on ``where`` and submit each entry to ``board`` once its runs
    are done (entries are queued in order, so they complete roughly in order). Returns the
    entries that failed, one line each, and every run's outcome."""
    started = dispatch((run for entry in entries for run in entry.runs), where, REPO)
    failed: list[str] = []
    for entry in entries:
        cfg = entry.config
        errors = [why for run in entry.runs if (why := failure(run, started[run.out]))]
        if errors:
            failed.append(f"{cfg.surface}/{cfg.name}: {errors[0]}")
            say(f"! {cfg.surface}/{cfg.name} not submitted: {errors[0]}")
            continue
        try:
            serbench(["leaderboard", "submit", *(str(run.out) for run in entry.runs), "--name",
                      cfg.name, "--dir", str(board), "--replace",
                      *(["--allow-reduced"] if entry.reduced else [])])
        except subprocess.CalledProcessError as exc:
            failed.append(f"{cfg.surface}/{cfg.name}: submit failed (exit {exc.returncode})")
    return failed, started


@contextmanager
def one_line_errors() -> Iterator[None]:
    """A mistake in the options (SerbenchError) as serbench's CLI reports one: one line on
    stderr, exit status 2, no traceback; an interrupt (Ctrl-C) in one line too."""
    try:
        yield
    except SerbenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)


def exit_if_failed(failed: list[str], entries: int) -> None:
    """Name the entries that failed, and exit non-zero, if any did."""
    if failed:
        print(f"{len(failed)} of {entries} entries failed:\n  " + "\n  ".join(failed),
              file=sys.stderr)
        sys.exit(1)


def add_run_options(parser: argparse.ArgumentParser) -> None:
    """The options that choose a board's runs and where they execute (shared with
    benchmarks/submission.py)."""
    parser.add_argument("--dataset", default="synth")
    parser.add_argument("--data-root", help="the corpus directory (not needed for synth)")
    parser.add_argument("--track", action="append", choices=sorted(TRACKS),
                        help="surface(s) to run (default: every track whose attacks are installed)")
    parser.add_argument("--jobs", type=int,
                        help="runs at once, one thread each (default: 2; with --ray on a local "
                             "instance: this machine's cores; a cluster runs one per CPU)")
    parser.add_argument("--ray", nargs="?", const=LOCAL_RAY, metavar="ADDRESS",
                        help="run on Ray: a new local instance, or the cluster at ADDRESS "
                             "(HOST:PORT of its head, or 'auto': the one started on this "
                             "machine); docs/cluster.md")
    parser.add_argument("--workers", type=int, default=0,
                        help="worker processes inside each run (serbench eval --workers; "
                             "default: one per CPU); no number depends on it")
    parser.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                        help="corpus option for every run (a trial entry; repeatable)")
    parser.add_argument("--attack-param", action="append", default=[], metavar="KEY=VALUE",
                        help="parameter for every attack that has KEY (a trial entry unless "
                             "the track ignores KEY for its numbers, e.g. workers; repeatable)")


def surfaces_of(args: argparse.Namespace) -> list[str]:
    """``--track``, or every track whose attacks are installed."""
    installed = set(entry_point_names("attack"))
    return args.track or [s for s, t in TRACKS.items() if set(t.attacks) <= installed]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_run_options(parser)
    parser.add_argument("--defense", action="append",
                        help=f"defense(s) (default: every built-in one: {built_in_defenses()})")
    parser.add_argument("--families", action="store_true",
                        help="also each defense's standard sweep of strengths (SWEEPS), on the "
                             "tracks it acts on")
    parser.add_argument("--sweeps-only", action="store_true",
                        help="with --families, only the sweeps' other strengths (e.g. sweeps at "
                             "one seed beside defaults at two)")
    parser.add_argument("--seed", action="append", type=int, help="seed(s) (default: 0)")
    parser.add_argument("--runs-dir", type=Path,
                        help="where the runs are kept (default: runs/baselines/<dataset>)")
    parser.add_argument("--dir", default="leaderboards", help="leaderboard directory")
    parser.add_argument("--dry-run", action="store_true", help="list the entries and runs only")
    args = parser.parse_args()

    if args.sweeps_only and not args.families:
        parser.error("--sweeps-only needs --families")
    opts = Options(args.dataset, args.data_root, tuple(args.seed or [0]), args.runs_dir,
                   tuple(args.dataset_option), tuple(args.attack_param), args.workers)
    with one_line_errors():
        todo = configs(surfaces_of(args), args.defense or built_in_defenses(), args.families,
                       defaults_too=not args.sweeps_only)
        entries = plan(todo, opts)
        if args.dry_run:
            for entry in entries:
                print(f"{args.dataset}/{entry.config.surface}/{entry.config.name}: " + "; ".join(
                    " ".join(run.args) for run in entry.runs))
            print(f"{len(entries)} entries, {sum(len(e.runs) for e in entries)} runs "
                  f"(a run shared by several entries runs once)")
            return
        with backend(REPO, args.ray, args.jobs) as where:
            print(f"runs: {where.description}; logs beside the run directories", flush=True)
            failed, _ = produce(entries, where, Path(args.dir))
    exit_if_failed(failed, len(entries))


if __name__ == "__main__":
    main()
