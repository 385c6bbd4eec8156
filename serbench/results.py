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
import sys
import tempfile
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import pandas as pd

from serbench.context import FoldResult
from serbench.errors import SerbenchError

PACKAGES = ("serbench", "torch", "numpy", "scipy", "pandas", "scikit-learn", "opensmile",
            "soundfile", "opacus", "flwr", "typer", "rich")


def atomic_write_text(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results are meant to be shared
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_json(path: Path, data: Any, sort_keys: bool = True) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=sort_keys, default=str) + "\n")


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    atomic_write_text(path, frame.to_csv(index=False))


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

    return {
        "python": sys.version.split()[0], "platform": platform.platform(),
        "machine": platform.machine(), "processor": _cpu_model(), "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(), "packages": versions,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


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
        self.path = path
        existing = path / "config.json"
        if existing.exists():
            try:
                previous = json.loads(existing.read_text())
            except (OSError, json.JSONDecodeError):
                raise SerbenchError(f"{existing}: unreadable run configuration") from None
            if previous != json.loads(json.dumps(config, default=str)):
                raise SerbenchError(f"{path} holds a run with a different configuration; "
                                    f"choose another --out")
        elif path.exists() and any(path.iterdir()):
            raise SerbenchError(f"{path} exists and is not a serbench run directory; "
                                f"choose another --out")
        write_json(existing, config)

    def _fold_path(self, mode: str, fold: int) -> Path:
        return self.path / "folds" / mode / f"fold-{fold}.json"

    def load_fold(self, mode: str, fold: int) -> FoldResult | None:
        path = self._fold_path(mode, fold)
        if not path.exists():
            return None
        data = json.loads(path.read_text())
        preds = pd.read_csv(path.with_suffix(".predictions.csv"), keep_default_na=False)
        return FoldResult(data["metrics"], preds, data.get("extras", {}))

    def save_fold(self, mode: str, fold: int, result: FoldResult) -> None:
        path = self._fold_path(mode, fold)
        # Predictions first: a fold counts as done only once its JSON exists.
        write_csv(path.with_suffix(".predictions.csv"), result.predictions)
        # Keep the attack's metric order: the report lists metrics in it, resumed or not.
        write_json(path, {"metrics": result.metrics, "extras": result.extras}, sort_keys=False)
