"""The utterance table every corpus loader returns, and the loader contract.

A corpus is a :class:`pandas.DataFrame` with one row per utterance and the columns of
:data:`COLUMNS` (plus corpus extras such as IEMOCAP's ``improvised``). Everything downstream
(features, FL clients, attacks) reads only this table, so a new corpus is one loader class.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from serbench.errors import SerbenchError

#: Required columns: a unique id, the audio file, the speaker, "F"/"M", the class name, the
#: speaker-independent fold (1..K) and the corpus name.
COLUMNS = ("utt_id", "path", "speaker", "gender", "emotion", "fold", "corpus")
GENDERS = ("F", "M")
#: The standard 4-class map's class names (corpora.md §5); loaders map their codes onto these.
EMOTIONS_4 = ("neutral", "happy", "sad", "angry")


class Corpus(ABC):
    """A loader: parameters in the constructor, :meth:`load` returns the validated table."""

    name: ClassVar[str]
    summary: ClassVar[str]
    #: FL clients per speaker (SPEC §3.2: CREMA-D one per speaker, IEMOCAP/MSP-IMPROV ten).
    clients_per_speaker: ClassVar[int] = 1
    #: Whether ``root`` must be given (``synth`` generates its own audio).
    needs_root: ClassVar[bool] = True
    #: Options that make the loader keep every labelled class rather than its default map
    #: (RAVDESS ``classes=8``): loaded when ``--dataset-option classes=``/``map=`` name a
    #: class the default leaves out.
    all_labels: ClassVar[dict[str, Any]] = {}

    def __init__(self, root: str | Path | None = None) -> None:
        if root is None and self.needs_root:
            raise SerbenchError(f"dataset {self.name!r} needs --data-root")
        self.root = Path(root).expanduser() if root is not None else None
        if self.root is not None and not self.root.is_dir():
            raise SerbenchError(f"data root {self.root} does not exist or is not a directory")

    @abstractmethod
    def _table(self) -> pd.DataFrame:
        """Build the raw table (all :data:`COLUMNS`, any extras)."""

    def load(self) -> pd.DataFrame:
        """The corpus table, validated, sorted by ``utt_id``."""
        table = self._table()
        if table.empty:
            raise SerbenchError(f"{self.root}: no labelled audio found for dataset {self.name!r}")
        return validate_table(table, source=str(self.root or self.name))


def validate_table(table: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check the table contract; a violation is a one-line error naming ``source``."""
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing:
        raise SerbenchError(f"{source}: missing column(s) {', '.join(missing)}")
    bad_gender = sorted(set(table["gender"]) - set(GENDERS))
    if bad_gender:
        raise SerbenchError(f"{source}: unknown gender value(s) {bad_gender}; use F or M")
    if table["utt_id"].duplicated().any():
        dup = table.loc[table["utt_id"].duplicated(), "utt_id"].iloc[0]
        raise SerbenchError(f"{source}: duplicate utterance id {dup!r}")
    by_speaker = table.groupby("speaker")["gender"].nunique()
    if (by_speaker > 1).any():
        raise SerbenchError(f"{source}: speaker {by_speaker[by_speaker > 1].index[0]!r} has two genders")
    out = table.copy()
    out["fold"] = out["fold"].astype(int)
    out["speaker"] = out["speaker"].astype(str)
    return out.sort_values("utt_id").reset_index(drop=True)
