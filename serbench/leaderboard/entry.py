"""Leaderboard entries: JSON data, validated against ``entry.schema.json`` and against their own
predictions, and never executed or unpickled (SPEC §7).

An entry embeds, per attack, mode, seed, fold and measure, the labels and predictions behind its
numbers (as digit strings), so every statistic it states can be recomputed from the file alone:
``show`` marks an entry whose stored numbers differ from its predictions, and ``verify``
re-runs its configuration to check the predictions themselves.
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pandas as pd

from serbench.errors import SerbenchError
from serbench.leaderboard.tracks import TRACKS, Track
from serbench.scoring import LOW_FPRS, Role, is_trials, measure_metrics, measure_name, pooled, \
    spread, uar, worst_case

#: The ROC statistics of a leakage measure with scores.
ROC = ("auc", *(f"tpr_at_{f:g}_fpr" for f in LOW_FPRS))

#: Version 2 (issue 11, 14): a DP entry carries its accounting context, the headline states a
#: nominal ε apart from a DP ε, and its worst case has a CI widened for the number of measures it
#: was chosen from. Version 1 entries (made before) still load and keep their own rules.
SCHEMA_VERSION = 2
SCHEMA_VERSIONS = (1, 2)
#: Privacy numbers an attack may report beside its metrics, and the headline key of each:
#: ``epsilon`` is a DP guarantee (its accounting context says against whom), ``nominal_epsilon``
#: a parameter that guarantees nothing (a reference mechanism's nominal ε).
EPSILONS = ("epsilon", "nominal_epsilon")
SCHEMA_PATH = Path(__file__).with_name("entry.schema.json")
#: Larger files are refused before parsing (the biggest corpus's entry is a few MB).
MAX_BYTES = 64 * 2**20
#: Stored statistics must equal those recomputed from the entry's predictions up to rounding.
EXACT = 1e-9
MODES = ("non-adaptive", "adaptive")


@dataclass
class Entry:
    """A schema-valid entry file; ``problem`` says why its numbers are not to be trusted."""

    path: Path
    data: dict[str, Any]
    problem: str | None

    @property
    def track(self) -> Track:
        return TRACKS[self.data["surface"]]

    @property
    def track_id(self) -> str:
        return f"{self.data['corpus']}/{self.data['surface']}"


def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text())


def _name_error(name: Any, where: str) -> SerbenchError:
    return SerbenchError(f"{where}: entry name {name!r} may hold only letters, digits, '_', "
                         f"'.' and '-' (no path characters), at most 64, not starting with "
                         f"'.' or '-'")


def validate_name(name: str) -> None:
    """Check ``--name`` before any work: it becomes a file name."""
    if not re.fullmatch(schema()["$defs"]["name"]["pattern"], name):
        raise _name_error(name, "--name")


#: Per-prediction arrays of a record and the Python types their items must have.
_ITEM_TYPES = {"speakers": (str,), "scores": (int, float), "speaker_ids": (int,),
               "enrolled_ids": (int,)}


def _without_valid_item_arrays(data: Any) -> Any:
    """``data`` with every per-prediction array that is already valid emptied.

    jsonschema walks each of an entry's ~10⁵ speakers and scores in Python (12 s for the
    committed board); a type test per item does the same check in milliseconds. An array that
    fails it is kept as it is, so the schema reports the same error at the same path."""
    predictions = data.get("predictions") if isinstance(data, dict) else None
    if not isinstance(predictions, dict) or \
            not all(isinstance(modes, dict) for modes in predictions.values()):
        return data

    def light(record: Any) -> Any:
        if not isinstance(record, dict):
            return record
        return {k: [] if k in _ITEM_TYPES and isinstance(v, list) and all(
                    isinstance(x, _ITEM_TYPES[k]) and not isinstance(x, bool) for x in v) else v
                for k, v in record.items()}

    return {**data, "predictions": {
        attack: {mode: [light(r) for r in records] if isinstance(records, list) else records
                 for mode, records in modes.items()}
        for attack, modes in predictions.items()}}


def validate(data: Any, where: str) -> None:
    """Raise a one-line :class:`SerbenchError` unless ``data`` follows the entry schema."""
    validator = jsonschema.Draft202012Validator(schema())
    error = jsonschema.exceptions.best_match(
        validator.iter_errors(_without_valid_item_arrays(data)))
    if error is None:
        return
    if list(error.path) == ["name"]:
        raise _name_error(error.instance, where)
    if error.validator == "required" and "'accounting'" in error.message or \
            list(error.path) == ["accounting"] and error.validator == "minProperties":
        raise SerbenchError(f"{where}: $.accounting: missing accounting context (a DP entry, "
                            f"whose headline states epsilon or nominal_epsilon, needs its runs' "
                            f"context; schema version 2): {error.message}")
    message = error.message if len(error.message) <= 160 else error.message[:157] + "..."
    raise SerbenchError(f"{where}: {error.json_path}: {message}")


def describe_deviations(deviations: dict[str, dict[str, Any]]) -> str:
    """``attack: key=value, ...; ...``: how a trial entry departs from the standard protocol."""
    return "; ".join(f"{attack}: " + ", ".join(f"{k}={v}" for k, v in d.items())
                     for attack, d in deviations.items())


def entry_path(directory: Path, data: dict[str, Any]) -> Path:
    """Where an entry lives: ``<dir>/<corpus>/<surface>/<name>.json``."""
    return directory / data["corpus"] / data["surface"] / f"{data['name']}.json"


#: The run options that name corpora on the machine that made a run.
CORPUS_PATHS = ("data_root", "shadow_root")


def board_home(entry_file: Path) -> Path:
    """The directory a board's recorded corpus paths are relative to: the one holding the board
    directory (``<home>/<board>/<corpus>/<surface>/<name>.json``), the repository for the
    committed board, wherever the command runs from."""
    return entry_file.absolute().parents[3]


def _paths(config: dict[str, Any], key: str, change: Any) -> Any:
    value = config.get(key)
    if value is None:
        return None
    return [change(v) for v in value] if isinstance(value, list) else change(value)


def portable_config(config: dict[str, Any], absolute: dict[str, Any], home: Path
                    ) -> dict[str, Any]:
    """A run's configuration as an entry records it: each corpus path relative to ``home``
    (:func:`board_home`), taken from ``absolute`` (the run's config.toml) where it has it, else
    from ``config`` relative to this directory, so that no entry names the machine that made it
    and :func:`local_config` finds the corpus on any other."""
    rel = lambda p: os.path.relpath(Path(p).expanduser().absolute(), home)  # noqa: E731
    return config | {k: _paths(absolute if k in absolute else config, k, rel)
                     for k in CORPUS_PATHS if k in config}


def local_config(config: dict[str, Any], home: Path) -> dict[str, Any]:
    """The inverse of :func:`portable_config`: recorded corpus paths resolved against ``home``
    (an absolute path, as an older entry may record, is kept)."""
    here = lambda p: str(home / Path(p).expanduser())  # noqa: E731
    return config | {k: _paths(config, k, here) for k in CORPUS_PATHS if k in config}


def _reject_constant(name: str) -> None:
    raise ValueError(f"non-standard JSON constant {name}")


def read_entry(path: Path, directory: Path | None = None) -> Entry:
    """Parse (as plain JSON only), validate and check an entry file."""
    try:
        if path.stat().st_size > MAX_BYTES:
            raise SerbenchError(f"{path}: larger than {MAX_BYTES // 2**20} MB")
        data = json.loads(path.read_text(), parse_constant=_reject_constant)
    except OSError as exc:
        raise SerbenchError(f"{path}: cannot read ({exc.strerror})") from None
    except (UnicodeDecodeError, ValueError) as exc:
        raise SerbenchError(f"{path}: not valid JSON ({exc})") from None
    validate(data, str(path))
    upgrade(data)
    if directory is not None and entry_path(directory, data).resolve() != path.resolve():
        raise SerbenchError(f"{path}: entry {data['corpus']}/{data['surface']}/{data['name']} "
                            f"must be stored as {entry_path(directory, data)}")
    return Entry(path, data, consistency_problem(data))


def load_entries(directory: Path) -> tuple[list[Entry], list[str]]:
    """Every entry under ``directory``, and a one-line reason for each file rejected."""
    if not directory.is_dir():  # a mistyped --dir must not read as an empty board
        raise SerbenchError(f"{directory}: no such leaderboard directory")
    entries, rejected = [], []
    for path in sorted(directory.glob("*/*/*.json")):
        try:
            entries.append(read_entry(path, directory))
        except SerbenchError as exc:
            rejected.append(str(exc))
    return entries, rejected


def entry_text(data: dict[str, Any]) -> str:
    """An entry as its file holds it: indented JSON, but each prediction record on one line
    (indented, every label string, speaker and score took a line of its own: an entry of
    verification trials grew to megabytes, and a diff of one to thousands of lines)."""
    records: list[str] = []

    def slot(record: dict[str, Any]) -> str:
        records.append(json.dumps(record, separators=(",", ":"), default=str))
        return f"\0record {len(records) - 1}\0"

    slots = {attack: {mode: [slot(r) for r in rs] for mode, rs in modes.items()}
             for attack, modes in data["predictions"].items()}
    text = json.dumps(data | {"predictions": slots}, indent=2, default=str)
    return re.sub(r'"\\u0000record (\d+)\\u0000"', lambda m: records[int(m.group(1))],
                  text) + "\n"


# Predictions: compact, exact, and enough to recompute every statistic.

def encode_predictions(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Rows ``seed, fold, task, group, y_true, y_pred`` (in pooling order) as one record per
    seed, fold and measure, labels as digit strings; with each row's ``speakers`` (the CIs
    resample them) and the attacker's ``scores`` (AUC, TPR at low FPR) where the run has them."""
    records = []
    for (seed, fold, task, group), rows in frame.groupby(
            ["seed", "fold", "task", "group"], sort=False):
        labels = [rows["y_true"].to_numpy(), rows["y_pred"].to_numpy()]
        if any(a.min() < 0 or a.max() > 9 for a in labels):
            raise SerbenchError(f"{measure_name(task, group)}: labels outside 0-9 cannot be "
                                f"stored in an entry")
        record = {"seed": int(seed), "fold": int(fold), "measure": measure_name(task, group),
                  **{k: "".join(map(str, a)) for k, a in zip(("y_true", "y_pred"), labels)}}
        trials = is_trials(rows)
        if not trials and "speaker" in rows and (rows["speaker"].astype(str) != "").all():
            record["speakers"] = rows["speaker"].astype(str).tolist()
        if "score" in rows:
            scores = pd.to_numeric(rows["score"], errors="coerce")
            if scores.notna().all():
                record["scores"] = [round(float(v), 6) for v in scores]
        if trials:  # an EER: its CI rebuilds the trials from resampled speakers
            record |= _encode_trial_speakers(rows)
        records.append(record)
    return records


def _encode_trial_speakers(rows: pd.DataFrame) -> dict[str, Any]:
    """Trials' speakers as indices into the record's ``names`` (with each name's gender):
    a speaker is in a trial as often as there are enrolled models of its gender, so names
    written per trial made an entry of 31 speakers 3.2 MiB."""
    speaker, enrolled = rows["speaker"].astype(str), rows["enrolled"].astype(str)
    gender = dict(zip(speaker, rows["gender"].astype(str))) | dict(
        zip(enrolled, rows["gender"].astype(str)))
    names = sorted(gender)
    index = {name: i for i, name in enumerate(names)}
    return {"names": names, "name_genders": [gender[n] for n in names],
            "speaker_ids": speaker.map(index).tolist(),
            "enrolled_ids": enrolled.map(index).tolist()}


def _decode_trial_speakers(record: dict[str, Any]) -> dict[str, list[str]]:
    """The per-trial ``speakers``, ``enrolled`` and ``genders`` of a record that stores
    them as indices (:func:`_encode_trial_speakers`); the record as it is otherwise."""
    if "names" not in record:
        return record
    names, genders = record["names"], record.get("name_genders", [])
    ids = {k: np.asarray(record.get(k, []), dtype=np.int64) for k in ("speaker_ids",
                                                                      "enrolled_ids")}
    where = f"{record['measure']} seed {record['seed']} fold {record['fold']}"
    if len(genders) != len(names) or any(
            len(v) and (v.min() < 0 or v.max() >= len(names)) for v in ids.values()):
        raise SerbenchError(f"{where}: trial speakers index past its {len(names)} names "
                            f"(or names and name_genders differ in length)")
    names_a, genders_a = np.asarray(names, dtype=object), np.asarray(genders, dtype=object)
    return record | {"speakers": names_a[ids["speaker_ids"]].tolist(),
                     "enrolled": names_a[ids["enrolled_ids"]].tolist(),
                     "genders": genders_a[ids["speaker_ids"]].tolist()}


def decode_predictions(records: list[dict[str, Any]]) -> pd.DataFrame:
    """One row per prediction: ``seed, fold, task, group, y_true, y_pred`` and, where the
    records hold them, ``speaker`` and ``score`` (built column-wise: an entry holds ~10⁵ rows)."""
    columns: dict[str, list[Any]] = {k: [] for k in ("seed", "fold", "task", "group")}
    labels: dict[str, list[np.ndarray]] = {"y_true": [], "y_pred": []}
    optional: dict[str, list[Any]] = {"speakers": [], "scores": [], "enrolled": [],
                                      "genders": []}
    records = [_decode_trial_speakers(r) for r in records]
    for r in records:
        n = len(r["y_true"])
        task, _, group = r["measure"].partition("@")
        for key, value in (("seed", r["seed"]), ("fold", r["fold"]), ("task", task),
                           ("group", group)):
            columns[key].append(np.full(n, value))
        for key in labels:
            labels[key].append(np.frombuffer(r[key].encode(), np.uint8).astype(np.int64) - 48)
        for key, values in optional.items():
            if key in r and len(r[key]) != n:
                raise SerbenchError(f"{r['measure']} seed {r['seed']} fold {r['fold']}: "
                                    f"{len(r[key])} {key} for {n} predictions")
            values.append(r.get(key))
    frame = pd.DataFrame({**{k: np.concatenate(v) for k, v in columns.items()},
                          **{k: np.concatenate(v) for k, v in labels.items()}})
    for key, column, missing in (("speakers", "speaker", np.nan), ("scores", "score", np.nan),
                                 ("enrolled", "enrolled", ""), ("genders", "gender", "")):
        parts = optional[key]
        if any(p is not None for p in parts):
            frame[column] = [x for p, r in zip(parts, records)
                             for x in (p if p is not None else [missing] * len(r["y_true"]))]
    return frame


def measure_stats(records: list[dict[str, Any]], bootstrap_seed: int) -> dict[str, Any]:
    """Per measure, :mod:`serbench.scoring`'s statistics: pooled UAR with its 95% CI (over
    speakers where the records name them; entries made before they did keep their utterance
    bootstrap), accuracy, chance levels, AUC and TPR at low FPR where the records hold scores,
    and the UAR of every (seed, fold) with their mean ± std. Entries with speakers leave out
    the per-fold UAR of a fold holding one class (e.g. one gender's speakers)."""
    frame = decode_predictions(records)
    legacy = "speaker" not in frame
    folds = {}
    for (seed, fold), rows in frame.groupby(["seed", "fold"], sort=False):
        if legacy:
            folds[(int(seed), int(fold))] = {
                measure_name(t, g): uar(r["y_true"].to_numpy(), r["y_pred"].to_numpy())
                for (t, g), r in rows.groupby(["task", "group"], sort=False)}
        else:
            folds[(int(seed), int(fold))] = {
                k.removesuffix(".uar"): v for k, v in measure_metrics(rows).items()
                if k.endswith(".uar")}
    stats = spread(folds.values())
    out = {}
    for row in pooled(frame, bootstrap_seed).to_dict(orient="records"):
        name = measure_name(row["task"], row["group"])
        extra = {} if legacy else {k: row[k] for k in ("ci_method", "speakers", *ROC)
                                   if k in row and not pd.isna(row[k])}
        out[name] = {
            "uar": row["uar"], "ci": [row["ci_low"], row["ci_high"]],
            "mean": stats[name]["mean"], "std": stats[name]["std"], "acc": row["acc"],
            "majority": row["majority"], "chance": row["chance_uar"], "n": int(row["n"]),
            **extra,
            "folds": [{"seed": s, "fold": f, "uar": v[name]} for (s, f), v in folds.items()
                      if name in v]}
    return out


def compute_results(data: dict[str, Any]) -> dict[str, Any]:
    """``results`` and ``headline`` of an entry, from its predictions, extras and measure
    roles only."""
    seed = min(data["protocol"]["seeds"])
    results = {attack: {mode: measure_stats(records, seed) for mode, records in modes.items()}
               for attack, modes in data["predictions"].items()}
    return {"results": results,
            "headline": headline(results, data["extras"], TRACKS[data["surface"]],
                                 measure_roles(data), predictions=data["predictions"],
                                 seed=seed, version=data["schema_version"])}


Roles = dict[str, dict[str, Role]]


def measure_roles(data: dict[str, Any]) -> Roles:
    """attack -> measure -> its role, as the entry recorded them from its runs (``roles``);
    :func:`upgrade` fills them in, on read, for an entry made before entries recorded them."""
    return {attack: {m: Role(r) for m, r in measures.items()}
            for attack, measures in data["roles"].items()}


@functools.cache
def _declared_role(attack: str, measure: str) -> Role:
    """The role an installed attack declares for ``measure`` (never a file's: entries are data)."""
    from serbench.registry import entry_point_names, load_plugin

    if attack not in entry_point_names("attack"):
        raise SerbenchError(f"attack {attack!r} is not installed: an entry that records no "
                            f"measure roles needs its attacks' declarations")
    task, _, group = measure.partition("@")
    return load_plugin("attack", attack)().role(task, group)


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """An entry in the shape every reader expects, whatever version wrote it (done once, on
    read): entries made before entries recorded their measures' roles get the roles their
    attacks declare (every such entry's attacks are built-ins); version 1 entries state no
    nominal ε and no accounting context."""
    if "roles" not in data:
        data["roles"] = {attack: {r["measure"]: str(_declared_role(attack, r["measure"]))
                                  for records in modes.values() for r in records}
                         for attack, modes in data["predictions"].items()}
    if data["schema_version"] < 2:
        data["headline"].setdefault("nominal_epsilon", None)
    return data


def restricted_to_seeds(data: dict[str, Any], seeds: list[int]) -> dict[str, Any]:
    """The entry as if it had been run at ``seeds`` only (a subset of its own): its predictions
    of those seeds, scored again (a family swept at one seed is compared with the undefended
    entry at that seed, not at two)."""
    keep = set(seeds)
    if not keep < set(data["protocol"]["seeds"]):
        raise SerbenchError(f"{data['name']}: seeds {sorted(keep)} are not a proper subset of "
                            f"its seeds {data['protocol']['seeds']}")
    out = dict(data, name=f"{data['name']} (seed{'s' * (len(keep) > 1)} "
                          f"{', '.join(map(str, sorted(keep)))})",
               protocol=dict(data["protocol"], seeds=sorted(keep)),
               predictions={attack: {mode: [r for r in records if r["seed"] in keep]
                                     for mode, records in modes.items()}
                            for attack, modes in data["predictions"].items()})
    return out | compute_results(out)


def cells(results: dict[str, Any]) -> Iterator[tuple[str, str, str, dict[str, Any]]]:
    """(attack, mode, measure, stats) over an entry's results, in a fixed order."""
    for attack, modes in results.items():
        for mode, measures in modes.items():
            for measure, stats in measures.items():
                yield attack, mode, measure, stats


def _cell(attack: str, mode: str, measure: str, stats: dict[str, Any]) -> dict[str, Any]:
    return {"attack": attack, "mode": mode, "measure": measure,
            **{k: stats[k] for k in ("uar", "ci", "mean", "std")}}


def _worst_of_many(results: dict[str, Any], predictions: dict[str, Any], track: Track,
                   roles: Roles, seed: int) -> dict[str, Any] | None:
    """The worst case over the track's scored measures, by :func:`serbench.scoring.worst_case`:
    its CI widened (Bonferroni) for the number of measures it was chosen from."""
    frames, where = {}, {}
    for attack, modes in predictions.items():
        for mode, records in modes.items():
            frame = decode_predictions(records)
            for (task, group), rows in frame.groupby(["task", "group"], sort=False):
                measure = measure_name(task, group)
                if roles[attack][measure] is track.role:
                    key = (f"{attack} {mode}", measure)
                    frames[key], where[key[0]] = rows, (attack, mode)
    worst = worst_case(frames, track.role, seed)
    if worst is None:
        return None
    attack, mode = where[worst.mode]
    stats = results[attack][mode][worst.measure]
    return {**_cell(attack, mode, worst.measure, stats), "uar": worst.uar,
            "ci": [worst.ci_low, worst.ci_high], "level": worst.level,
            "candidates": worst.candidates}


def headline(results: dict[str, Any], extras: dict[str, Any], track: Track, roles: Roles, *,
             predictions: dict[str, Any] | None = None, seed: int = 0,
             version: int = SCHEMA_VERSION) -> dict[str, Any]:
    """SPEC §7's headline: utility (the lowest emotion UAR among the suite's targets: no
    credit for the best FL algorithm), the worst case of the track's measure over its attacks,
    modes and measures (pooled UAR), and ε where the defense states one (its largest).

    Version 2: the worst case's CI is widened for the number of measures it was chosen from
    (SPEC §6: the maximum of k noisy measures is biased upwards), which needs the
    ``predictions``; a nominal ε is kept apart from a DP ε. Version 1 entries keep
    the plain 95% CI of the measure that attains the worst case."""
    utility = worst = None
    for attack, mode, measure, stats in cells(results):
        role = roles[attack][measure]
        if role is Role.UTILITY and (utility is None or stats["uar"] < utility["uar"]):
            utility = _cell(attack, mode, measure, stats)
        if role is track.role and (worst is None or track.worse(stats["uar"], worst["uar"])):
            worst = _cell(attack, mode, measure, stats)
    if utility is None or worst is None:
        missing = Role.UTILITY if utility is None else track.role
        raise SerbenchError(f"the runs report no {missing} measure, which the {track.surface} "
                            f"track is scored by")
    if version >= 2:
        if predictions is None:
            raise SerbenchError("a version 2 headline needs the entry's predictions")
        worst = _worst_of_many(results, predictions, track, roles, seed)

    def largest(key: str) -> float | None:
        values = [v[key] for modes in extras.values() for v in modes.values() if key in v]
        return max(values) if values else None

    out = {"utility": utility, "worst": worst, "epsilon": largest("epsilon")}
    return out | ({"nominal_epsilon": largest("nominal_epsilon")} if version >= 2 else {})


def accounting_problem(data: dict[str, Any]) -> str | None:
    """Version 2: every attack and mode whose extras report an ε must carry the accounting
    context of each of its runs' folds (the schema only checks that some context is there)."""
    if data["schema_version"] < 2:
        return None
    stored = data.get("accounting", {})
    for attack, modes in data["extras"].items():
        for mode, values in modes.items():
            key = next((k for k in EPSILONS if k in values), None)
            if key is None:
                continue
            have = {(c["seed"], c["fold"]) for c in stored.get(attack, {}).get(mode, [])}
            for f in stats_folds(data, attack, mode):
                if (f["seed"], f["fold"]) not in have:
                    return (f"its {attack} {mode} runs report {key} but the accounting context "
                            f"of seed {f['seed']} fold {f['fold']} is missing")
    return None


def stats_folds(data: dict[str, Any], attack: str, mode: str) -> list[dict[str, int]]:
    """The (seed, fold) pairs of one attack and mode's predictions."""
    return [{"seed": s, "fold": f} for s, f in dict.fromkeys(
        (r["seed"], r["fold"]) for r in data["predictions"][attack][mode])]


def differences(a: Any, b: Any, tolerance: float, path: str = "") -> Iterator[tuple[str, Any, Any]]:
    """(path, a, b) wherever two JSON values differ: numbers by more than ``tolerance``."""
    if isinstance(a, dict) and isinstance(b, dict):
        for key in dict.fromkeys([*a, *b]):
            yield from differences(a.get(key), b.get(key), tolerance, f"{path}/{key}".lstrip("/"))
    elif isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        for i, (x, y) in enumerate(zip(a, b)):
            yield from differences(x, y, tolerance, f"{path}[{i}]")
    elif _number(a) and _number(b):
        if not abs(a - b) <= tolerance:
            yield path, a, b
    elif a != b:
        yield path, a, b


def _number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def consistency_problem(data: dict[str, Any]) -> str | None:
    """Why the entry's stored numbers differ from those its own predictions give, if they do."""
    stored = {"results": data["results"], "headline": data["headline"]}
    try:
        recomputed = compute_results(data)
    except SerbenchError as exc:
        return str(exc)
    problem = accounting_problem(data)
    if problem:
        return problem
    for path, a, b in differences(stored, recomputed, EXACT):
        return f"stored {path} = {a} but its predictions give {b} (edited by hand?)"
    return None
