"""``serbench leaderboard verify``: re-run an entry's configuration and compare its numbers with
the entry's within a stated tolerance (docs/leaderboard.md)."""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from serbench.errors import SerbenchError
from serbench.leaderboard.entry import Entry, board_home, cells, headline, local_config, \
    measure_roles, measure_stats
from serbench.leaderboard.submit import Run, load_run, merge_runs
from serbench.leaderboard.tracks import TRACKS
from serbench.progress import Reporter
from serbench.registry import load_plugin

#: Smallest tolerance of any UAR compared. Runs compute on one thread (serbench/threads.py), so
#: the same code, seed and library versions reproduce an entry exactly; another CPU's kernels
#: or another library version can still flip a few predictions. How many a statistic can
#: absorb depends on its own sampling error, so each number's tolerance is derived from it
#: (:func:`noise_tolerance`), never below this floor.
TOLERANCE = 0.01


@dataclass
class Comparison:
    """One number as the entry states it and as the re-run gives it."""

    what: str
    entry: float | None
    rerun: float | None
    tolerance: float

    @property
    def delta(self) -> float | None:
        """|entry − re-run|, or None where one side lacks the number."""
        return None if self.entry is None or self.rerun is None else abs(self.entry - self.rerun)

    @property
    def ok(self) -> bool:
        return self.delta is not None and self.delta <= self.tolerance

    @property
    def exact(self) -> bool:
        return self.delta == 0


@dataclass
class Verification:
    comparisons: list[Comparison]
    #: Whether every re-run's content hash equals the entry's (only when all folds re-ran).
    identical: bool | None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.comparisons)


def defense_ref(entry: Entry, override: str | None) -> str:
    """The defense to re-run: an installed plugin by the entry's name, or a file the user names.
    A file path stored in an entry is never imported on the entry's word."""
    from serbench.registry import load_plugin

    stored = entry.data["defense"]
    ref = override or stored["ref"]
    path, sep, _ = ref.rpartition(":")
    if override is None and sep and path.endswith(".py"):
        raise SerbenchError(f"{entry.path}: its defense was loaded from {ref}; pass "
                            f"--defense path/to/file.py:ClassName (after reading the file) or "
                            f"the name it is installed under")
    cls = load_plugin("defense", ref)
    if cls.name != stored["name"]:
        raise SerbenchError(f"--defense {ref} is defense {cls.name!r}; the entry's is "
                            f"{stored['name']!r}")
    return ref


def verify(entry: Entry, *, folds: list[int] | None, tolerance: float, out: Path | None,
           data_root: str | None, defense: str | None, reporter: Reporter) -> Verification:
    """Re-run every run of ``entry`` (only ``folds`` if given) and compare."""
    from serbench.runner import EvalConfig, run_eval

    if entry.problem:
        raise SerbenchError(f"{entry.path}: {entry.problem}")
    data = entry.data
    unknown = sorted(set(folds or ()) - set(data["protocol"]["folds"]))
    if unknown:
        raise SerbenchError(f"--folds {unknown}: not among the entry's folds "
                            f"{data['protocol']['folds']}")
    ref = defense_ref(entry, defense)
    fields = {f.name for f in dataclasses.fields(EvalConfig)}
    with tempfile.TemporaryDirectory(prefix="serbench-verify-") as tmp:
        root = out or Path(tmp)
        runs = []
        for run in data["runs"]:
            config = local_config(run["config"], board_home(entry.path))
            cfg = EvalConfig(**{k: v for k, v in config.items() if k in fields})
            attack = load_plugin("attack", run["attack"])
            cfg = dataclasses.replace(cfg, defense=ref, folds=folds or cfg.folds,
                                      data_root=data_root or cfg.data_root,
                                      attack_params=attack.as_recorded(cfg.attack_params))
            reporter.log(f"re-running {run['attack']} (seed {run['seed']})")
            path = root / f"{run['attack']}-seed{run['seed']}"
            run_eval(cfg, path, reporter)
            runs.append((run, load_run(path)))
        return _compare(data, runs, folds, tolerance)


def _compare(data: dict[str, Any], runs: list[tuple[dict[str, Any], Run]],
             folds: list[int] | None, tolerance: float) -> Verification:
    """Per-fold UARs always; pooled UARs, the headline and extras when every fold re-ran."""
    predictions, extras = merge_runs([run for _, run in runs])
    seed = min(data["protocol"]["seeds"])
    results = {a: {m: measure_stats(r, seed) for m, r in modes.items()}
               for a, modes in predictions.items()}
    stated, got = _values(data["results"], folds), _values(results, folds)
    if folds is None:
        stated |= _flat(data["extras"]) | _headline(data["headline"])
        got |= _flat(extras) | _headline(headline(
            results, extras, TRACKS[data["surface"]], measure_roles(data),
            predictions=predictions, seed=seed, version=data["schema_version"]))
    allowed = noise_tolerance(data["results"])
    comparisons = [Comparison(k, stated.get(k), got.get(k), max(tolerance, allowed.get(k, 0.0)))
                   for k in dict.fromkeys([*stated, *got])]
    identical = None if folds else all(r.content_hash == s["content_hash"] for s, r in runs)
    return Verification(comparisons, identical)


def noise_tolerance(results: dict[str, Any]) -> dict[str, float]:
    """Per compared number, the difference its measure's sampling error makes unremarkable: the
    half-width of the measure's CI, for its pooled and its per-fold UARs alike (a per-fold
    UAR is noisier still, but a re-run does not resample speakers: only a few flipped
    predictions may differ, and a looser bound would let a forged fold through)."""
    out = {}
    for attack, mode, measure, stats in cells(results):
        key = f"{attack} {mode} {measure}"
        half = (stats["ci"][1] - stats["ci"][0]) / 2
        out[f"{key} UAR"] = half
        for f in stats["folds"]:
            out[f"{key} seed {f['seed']} fold {f['fold']} UAR"] = half
    return out


def _values(results: dict[str, Any], folds: list[int] | None) -> dict[str, float]:
    out = {}
    for attack, mode, measure, stats in cells(results):
        key = f"{attack} {mode} {measure}"
        if folds is None:
            out[f"{key} UAR"] = stats["uar"]
        for f in stats["folds"]:
            if folds is None or f["fold"] in folds:
                out[f"{key} seed {f['seed']} fold {f['fold']} UAR"] = f["uar"]
    return out


def _flat(extras: dict[str, Any]) -> dict[str, float]:
    return {f"{a} {m} {k}": v for a, modes in extras.items() for m, values in modes.items()
            for k, v in values.items()}


def _headline(h: dict[str, Any]) -> dict[str, float]:
    out = {"headline utility": h["utility"]["uar"], "headline worst case": h["worst"]["uar"]}
    return out | {f"headline {k}": h[k] for k in ("epsilon", "nominal_epsilon")
                  if h.get(k) is not None}
