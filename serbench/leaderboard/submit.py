"""``serbench leaderboard submit``: run directories → one entry, after checking that they follow
the standard protocol (SPEC §7): all the corpus's standard folds, disjoint shadow speakers,
every attack of the track in every mode the defense calls for, one defense configuration and
corpus throughout, and files unchanged since serbench wrote them. Attacks at their defaults on
the corpus's default options, or, with ``--allow-reduced``, a trial entry marked as such."""

from __future__ import annotations

import hashlib
import json
import tomllib
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from serbench.errors import SerbenchError
from serbench.leaderboard.entry import CORPUS_PATHS, EPSILONS, SCHEMA_VERSION, \
    compute_results, describe_deviations, encode_predictions, entry_path, entry_text, \
    portable_config, validate, validate_name
from serbench.leaderboard.tracks import Track, track_of
from serbench.plugins import Defense
from serbench.scoring import spread
from serbench.io import atomic_write_text
from serbench.results import CHECKSUMS, checksums

#: Configuration every run of one entry must share.
SHARED = ("dataset", "dataset_options", "shadow", "defense", "defense_params")


@dataclass
class Run:
    """A finished run directory, its files checked against its SHA256SUMS."""

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    environment: dict[str, Any]
    predictions: pd.DataFrame
    content_hash: str

    @property
    def attack(self) -> str:
        return self.config["attack"]

    @property
    def seed(self) -> int:
        return self.config["seed"]

    def records(self) -> dict[str, list[dict[str, Any]]]:
        """Per mode, the entry's compact predictions."""
        return {mode: encode_predictions(rows.assign(seed=self.seed))
                for mode, rows in self.predictions.groupby("mode", sort=False)}


def load_run(path: Path) -> Run:
    if not (path / "config.json").is_file():
        raise SerbenchError(f"{path} is not a serbench run directory (no config.json)")
    if not (path / CHECKSUMS).is_file():
        raise SerbenchError(f"{path}: run not finished ({CHECKSUMS} missing); rerun "
                            f"`serbench eval` with the same options and --out {path} to finish it")
    stated = (path / CHECKSUMS).read_text()
    try:
        actual = checksums(path)
    except OSError as exc:
        raise SerbenchError(f"{path}: cannot read a result file ({exc})") from None
    if actual != stated:
        changed = sorted(set(actual.splitlines()) ^ set(stated.splitlines()))[0].split()[-1]
        raise SerbenchError(f"{path}: {changed} changed since the run wrote it "
                            f"(its hash differs from {CHECKSUMS})")
    read = lambda name: json.loads((path / name).read_text())  # noqa: E731
    return Run(path, read("config.json"), read("summary.json"), read("environment.json"),
               pd.read_csv(path / "predictions.csv", keep_default_na=False,
                           dtype={"speaker": str, "group": str, "enrolled": str}),
               hashlib.sha256(stated.encode()).hexdigest())


def _check_shared(runs: list[Run]) -> None:
    """One defense configuration on one corpus; each attack configured alike for every seed."""
    for run in runs[1:]:
        for first, keys in ((runs[0], SHARED), (next(r for r in runs if r.attack == run.attack),
                                                 ("attack_params", "features"))):
            for key in keys:
                if run.config[key] != first.config[key]:
                    raise SerbenchError(f"{run.path}: {key} {run.config[key]!r} differs from "
                                        f"{first.path}'s {first.config[key]!r}; an entry is one "
                                        f"configuration of the defense and of each attack")


def _check_suite(runs: list[Run]) -> Track:
    track = track_of({r.attack for r in runs})
    missing = [a for a in track.attacks if a not in {r.attack for r in runs}]
    if missing:
        raise SerbenchError(f"the {track.surface} track's attack suite is "
                            f"{', '.join(track.attacks)}; no run of {', '.join(missing)} given")
    seen: dict[str, set[int]] = {}
    for run in runs:
        if run.seed in seen.setdefault(run.attack, set()):
            raise SerbenchError(f"{run.path}: a second {run.attack} run with seed {run.seed}")
        seen[run.attack].add(run.seed)
    seeds = seen[track.attacks[0]]
    for attack, mine in seen.items():
        if mine != seeds:
            raise SerbenchError(f"every attack needs the same seeds: {track.attacks[0]} has "
                                f"{sorted(seeds)}, {attack} has {sorted(mine)}")
    return track


def _check_protocol(run: Run, defense: Defense) -> None:
    """The parts of the standard protocol one run can break on its own."""
    from serbench.protocol import DISJOINT, load_corpus, split_disjoint
    from serbench.registry import load_plugin
    from serbench.runner import attack_modes

    cfg = run.config
    if cfg["shadow"] != DISJOINT:
        raise SerbenchError(f"{run.path}: the standard protocol's shadow data is 'disjoint' "
                            f"speakers of the corpus; this run used {cfg['shadow']!r}")
    expected = attack_modes(load_plugin("attack", run.attack).from_params(cfg["attack_params"]),
                            defense)
    if sorted(run.summary["modes"]) != sorted(expected):
        raise SerbenchError(f"{run.path}: attack modes {', '.join(run.summary['modes'])}; "
                            f"{run.attack} against {defense.name!r} needs "
                            f"{', '.join(expected)} (SPEC §5)")
    corpus = load_corpus(cfg["dataset"], cfg["data_root"], cfg["dataset_options"])
    target, shadow = split_disjoint(corpus, cfg["seed"])
    folds = sorted(int(f) for f in target.table["fold"].unique())
    if cfg["folds"] != folds:
        raise SerbenchError(f"{run.path}: ran fold(s) {cfg['folds']}; the standard protocol "
                            f"runs all of {cfg['dataset']}'s folds {folds}")
    if cfg["target_speakers"] != sorted(target.table["speaker"].unique()) or \
            cfg["shadow_speakers"] != sorted(shadow.table["speaker"].unique()):
        raise SerbenchError(f"{run.path}: its target and shadow speakers are not the standard "
                            f"disjoint split of {cfg['dataset']} for seed {cfg['seed']}")


def _deviations(run: Run, track: Track) -> dict[str, Any]:
    """What differs from the standard protocol in ways that only make a run smaller or its
    attack weaker: attack parameters and features other than the attack's defaults, and corpus
    options (``dataset_options.KEY``)."""
    from serbench.registry import load_plugin

    cls = load_plugin("attack", run.attack)
    defaults = cls().params() | {"features": cls.default_features}
    used = run.config["attack_params"] | {"features": run.config["features"]}
    return {k: v for k, v in used.items() if k not in track.neutral and v != defaults.get(k)} | {
        f"dataset_options.{k}": v for k, v in run.config["dataset_options"].items()}


def merge_runs(runs: list[Run]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per attack and mode: the runs' predictions (seeds in the runs' order), and the numbers
    attacks report beside their metrics (fold means), averaged over seeds."""
    predictions: dict[str, dict[str, list]] = {}
    extras: dict[str, dict[str, list[dict[str, float]]]] = {}
    for run in runs:
        for mode, records in run.records().items():
            predictions.setdefault(run.attack, {}).setdefault(mode, []).extend(records)
        for mode, values in run.summary["modes"].items():
            extras.setdefault(run.attack, {}).setdefault(mode, []).append(
                {k: v for k, v in values["extras"].items()
                 if isinstance(v, (int, float)) and not isinstance(v, bool)})
    return predictions, {a: {m: {k: s["mean"] for k, s in spread(v).items()}
                             for m, v in modes.items()} for a, modes in extras.items()}


def merge_accounting(runs: list[Run]) -> dict[str, Any]:
    """Per attack and mode: each fold's privacy accounting context (``Defense.accounting``:
    accountant, δ, rounds, sampling, neighbouring relation, clip, the ε's and against whom),
    as the run recorded it. A run that reports an ε without its context cannot make an entry:
    nobody could tell what the ε means."""
    out: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for run in runs:
        for mode, values in run.summary["modes"].items():
            contexts = values.get("accounting") or {}
            reported = [k for k in EPSILONS if k in values["extras"]]
            if reported and not contexts:
                raise SerbenchError(
                    f"{run.path}: its {mode} results report {reported[0]} but the run recorded "
                    f"no accounting context (the defense's accounting() in the attack's fold "
                    f"result); a DP entry needs it (schema version 2)")
            for fold, context in contexts.items():
                out.setdefault(run.attack, {}).setdefault(mode, []).append(
                    {"seed": run.seed, "fold": int(fold), "context": context})
    return out


def build_entry(runs: list[Run], name: str, allow_reduced: bool, home: Path | None = None
                ) -> dict[str, Any]:
    """The entry of ``runs``, once they pass every check of the standard protocol; with
    ``home`` (:func:`~serbench.leaderboard.entry.board_home`), its corpus paths relative to it."""
    from serbench.registry import load_plugin

    _check_shared(runs)
    track = _check_suite(runs)
    first = runs[0].config
    defense = load_plugin("defense", first["defense"]).from_params(first["defense_params"])
    surfaces = frozenset(str(s) for s in defense.surfaces)
    for run in runs:
        _check_protocol(run, defense)
    deviations = {r.attack: d for r in runs if (d := _deviations(r, track))}
    if deviations and not allow_reduced:
        raise SerbenchError(f"reduced protocol ({describe_deviations(deviations)}): the "
                            f"standard protocol runs each attack at its defaults on the "
                            f"corpus's default options; pass --allow-reduced for a trial "
                            f"entry, marked as such and kept off the Pareto front")
    runs = sorted(runs, key=lambda r: (track.attacks.index(r.attack), r.seed))
    predictions, extras = merge_runs(runs)
    data: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "name": name, "corpus": first["dataset"],
        "surface": track.surface,
        "submitted": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "defense": {"ref": first["defense"], "name": defense.name, "summary": defense.summary,
                    "surfaces": sorted(surfaces), "params": first["defense_params"]},
        "standard": not deviations, "deviations": deviations,
        "protocol": {"folds": first["folds"], "seeds": sorted({r.seed for r in runs}),
                     "shadow": first["shadow"], "dataset_options": first["dataset_options"],
                     "features": {r.attack: r.config["features"] for r in runs}},
        "runs": [{"attack": r.attack, "seed": r.seed, "content_hash": r.content_hash,
                  "config": r.config if home is None else portable_config(
                      r.config, _absolute_config(r.path), home),
                  "environment": r.environment} for r in runs],
        "predictions": predictions, "extras": extras, "accounting": merge_accounting(runs),
        "roles": {r.attack: r.summary["measures"] for r in runs},
    }
    return data | compute_results(data)


def _absolute_config(run_dir: Path) -> dict[str, Any]:
    """The run's corpus paths from its config.toml, which holds them absolute (a run made
    before it had one: none, and its config.json's are taken from this directory)."""
    toml = run_dir / "config.toml"
    data = tomllib.loads(toml.read_text()) if toml.is_file() else {}
    return {k: data[k] for k in CORPUS_PATHS if k in data}


def submit(run_dirs: list[Path], name: str, directory: Path, allow_reduced: bool = False,
           replace: bool = False) -> Path:
    """Check the runs, build their entry, and write it to ``directory``."""
    validate_name(name)
    # The board's home: corpus paths are recorded relative to it (entry.board_home).
    home = directory.absolute().parent
    entry = build_entry([load_run(p) for p in run_dirs], name, allow_reduced, home)
    path = entry_path(directory, entry)
    if path.exists() and not replace:
        raise SerbenchError(f"{path} exists; choose another --name or pass --replace")
    validate(entry, str(path))
    atomic_write_text(path, entry_text(entry))
    return path
