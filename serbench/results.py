"""A run's directory: written atomically, self-describing, and resumable fold by fold.

Layout::

    config.json         resolved configuration (every plugin parameter, folds, seed)
    environment.json    versions, hardware, start and end times
    folds/<mode>/fold-<k>.json, fold-<k>.predictions.csv   one finished fold each
    metrics.csv         per-fold metrics, all modes
    predictions.csv     pooled predictions (for bootstrap CIs)
    summary.json        mean ± std over folds, pooled UAR with 95% CI, chance levels
    SHA256SUMS          the result files' SHA-256 (``sha256sum -c`` format); its own SHA-256
                        is the run's content hash
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
from dataclasses import dataclass, field
from functools import cached_property
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pandas as pd

from serbench.errors import SerbenchError
from serbench.faults import run_dir_opened
from serbench.io import atomic_write_text
from serbench.scoring import Role, Worst, bound_violations, measure_metrics, measure_name, \
    worst_case

PACKAGES = ("serbench", "torch", "numpy", "scipy", "pandas", "scikit-learn", "opensmile",
            "soundfile", "opacus", "flwr", "typer", "rich")


def write_json(path: Path, data: Any, sort_keys: bool = True) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys, default=str) + "\n")


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


@dataclass
class FoldResult:
    """One fold's predictions, and numbers the attack reports beside them (e.g. ε).

    ``predictions`` has columns ``task`` (e.g. "emotion", "gender"), ``group`` (e.g. "n=1"),
    ``speaker`` (whose utterance or update it is: CIs resample speakers), ``y_true``,
    ``y_pred`` and, for leakage, ``score`` (the attacker's probability of class 1, for AUC and
    TPR at low FPR). Attacks compute no statistic: :mod:`serbench.scoring` does.
    """

    predictions: pd.DataFrame
    extras: dict[str, float] = field(default_factory=dict)
    #: How the deployed defense's guarantee was accounted on this fold (accountant, δ, rounds,
    #: sampling scheme, neighbouring relation, ...: :meth:`Guarantee.accounting`), if any.
    accounting: dict[str, Any] = field(default_factory=dict)
    #: Rows of the analyses the attack offers (:meth:`Attack.analysis_views`), written by the
    #: results stage as tables and plots; not part of the fold's result.
    analyses: pd.DataFrame | None = field(default=None, compare=False)

    @property
    def metrics(self) -> dict[str, float]:
        """This fold's UAR and accuracy per measure (:func:`serbench.scoring.measure_metrics`)."""
        return measure_metrics(self.predictions)


#: Lists the result files' hashes; written last, so a run with it is complete.
CHECKSUMS = "SHA256SUMS"


def checksums(path: Path) -> str:
    """``sha256sum`` lines for the files a run's numbers live in, in a canonical order (sorted
    relative paths). environment.json, with its clock times, and the analyses' plots are left
    out, so the same configuration and seed give the same hash."""
    files = [path / n for n in ("config.json", "metrics.csv", "predictions.csv", "summary.json")]
    files += sorted((path / "folds").glob("*/fold-*"))
    names = sorted(f.relative_to(path).as_posix() for f in files)
    return "".join(f"{hashlib.sha256((path / n).read_bytes()).hexdigest()}  {n}\n" for n in names)


def write_content_hash(path: Path) -> str:
    """Write the run's CHECKSUMS file and return its SHA-256: the run's content hash."""
    text = checksums(path)
    atomic_write_text(path / CHECKSUMS, text)
    return hashlib.sha256(text.encode()).hexdigest()


def environment() -> dict[str, Any]:
    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            pass
    import torch

    from serbench import KERNELS
    from serbench.threads import THREADS

    return {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "machine": platform.machine(), "processor": _cpu_model(), "cpu_count": os.cpu_count(),
        "threads": THREADS, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "kernels": {k: os.environ.get(k) for k in KERNELS},
        "packages": versions, **code_version(),
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def code_version() -> dict[str, Any]:
    """The serbench commit a run used and whether the checkout had uncommitted changes
    (``None`` outside a git checkout, e.g. an installed wheel: the version then says it)."""
    here = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True,
                                text=True, timeout=10)
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=here, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return {"commit": None, "dirty": None}
    if commit.returncode or status.returncode:
        return {"commit": None, "dirty": None}
    return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


class RunDir:
    """One evaluation's results; reopening it with the same configuration resumes it."""

    def __init__(self, path: Path, config: dict[str, Any]) -> None:
        self.path, self.config = path, config
        existing = path / "config.json"
        if existing.exists():
            if self.read_config(path) != json.loads(json.dumps(config, default=str)):
                raise SerbenchError(f"{path} holds a run with a different configuration; "
                                    f"choose another --out")
        elif path.exists() and any(path.iterdir()):
            raise SerbenchError(f"{path} exists and is not a serbench run directory; "
                                f"choose another --out")
        run_dir_opened(path)  # what the rerun after Ctrl-C or a full disk resumes
        write_json(existing, config)

    @staticmethod
    def read_config(path: Path) -> dict[str, Any]:
        existing = path / "config.json"
        try:
            return json.loads(existing.read_text())
        except (OSError, json.JSONDecodeError):
            raise SerbenchError(f"{existing}: missing or unreadable run configuration "
                                f"(not a serbench run directory?)") from None

    @classmethod
    def open(cls, path: Path) -> RunDir:
        """An existing run directory, read only."""
        run_dir = cls.__new__(cls)
        run_dir.path, run_dir.config = path, cls.read_config(path)
        return run_dir

    def _fold_path(self, mode: str, fold: int) -> Path:
        return self.path / "folds" / mode / f"fold-{fold}.json"

    def load_fold(self, mode: str, fold: int) -> FoldResult | None:
        path = self._fold_path(mode, fold)
        if not path.exists():
            return None
        try:
            data = json.loads(path.read_text())
            preds = pd.read_csv(path.with_suffix(".predictions.csv"), keep_default_na=False,
                                dtype={"speaker": str, "group": str, "client": str,
                                       "enrolled": str})
            if "score" in preds:  # empty for rows without a score (emotion)
                preds["score"] = pd.to_numeric(preds["score"], errors="coerce")
        except (OSError, ValueError) as exc:
            raise SerbenchError(f"{path}: unreadable fold result ({exc}); delete it to re-run "
                                f"the fold") from None
        return FoldResult(preds, data.get("extras", {}), data.get("accounting", {}))

    def save_fold(self, mode: str, fold: int, result: FoldResult) -> None:
        path = self._fold_path(mode, fold)
        # Predictions first: a fold counts as done only once its JSON exists.
        write_csv(path.with_suffix(".predictions.csv"), result.predictions)
        # Keep the attack's metric order: the report lists metrics in it, resumed or not.
        write_json(path, {"metrics": result.metrics, "extras": result.extras,
                          "accounting": result.accounting}, sort_keys=False)


@dataclass
class ModeResult:
    mode: str
    folds: dict[int, FoldResult]
    #: ``{metric: {"mean", "std", "folds"}}`` over the folds that define each metric.
    summary: dict[str, dict[str, float]]
    #: :func:`serbench.scoring.pooled`'s table: pooled UAR, speaker-level CI, AUC, ...
    pooled: pd.DataFrame
    extras: dict[str, float]

    def predictions(self) -> pd.DataFrame:
        return pd.concat([r.predictions.assign(fold=f) for f, r in self.folds.items()],
                         ignore_index=True)


@dataclass
class RunResult:
    path: Path
    config: dict[str, Any]
    modes: list[ModeResult]
    #: The role the attack declared for each measure (``task@group`` -> utility, leakage, ...).
    roles: dict[str, Role]

    def stronger_mode(self) -> dict[str, float]:
        """SPEC §5: utility, and per scored measure the pooled UAR of the attack mode that is
        worse for the defense (the direction its role declares); a sweep's row."""
        out: dict[str, float] = {}
        for mode in self.modes:
            for row in mode.pooled.itertuples():
                name = measure_name(row.task, row.group)
                key, role = f"{name}.uar", self.roles[name]
                if role is Role.UTILITY:
                    out[key] = row.uar  # the target's training does not depend on the mode
                elif role is not Role.UNSCORED:
                    pick = max if role.higher_is_worse else min
                    out[key] = pick(out.get(key, row.uar), row.uar)
            for name, value in mode.extras.items():
                out.setdefault(name, value)
        return out

    def worst(self) -> Worst | None:
        """The worst case for the defense over modes and measures (leakage, or robust UAR
        where the attack reports no leakage), its CI widened for the choice."""
        for role in (Role.LEAKAGE, Role.LINKABILITY, Role.ROBUST):
            cells = {(m.mode, name): frame for m in self.modes
                     for (task, group), frame in m.predictions().groupby(["task", "group"],
                                                                       sort=False)
                     if self.roles[name := measure_name(task, group)] is role}
            if cells:
                return worst_case(cells, role, self.config["seed"])
        return None

    @cached_property
    def violations(self) -> list[dict[str, Any]]:
        """Per mode, the folds where a measure beats the one meant to bound it beyond a paired
        CI (:func:`serbench.scoring.bound_violations`; the intercept's ``worst``)."""
        return [{"mode": m.mode, **v} for m in self.modes
                for v in bound_violations(m.predictions(), self.config["seed"])]
