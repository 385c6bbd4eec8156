"""A user's own corpus, described by a CSV manifest (the ``root`` is the CSV file itself).

Columns ``path, speaker, gender, emotion`` and optionally ``fold``; headers are matched
case-insensitively and relative paths resolve against the CSV's folder, so a manifest can
travel with its audio. Without ``fold``, speakers are dealt into gender-balanced,
speaker-independent folds, the property every serbench protocol relies on.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd

from serbench.corpora._util import absolute, read_csv
from serbench.corpora.base import COLUMNS, Corpus
from serbench.errors import SerbenchError

REQUIRED = ("path", "speaker", "gender", "emotion")
MAX_FOLDS = 5
_GENDERS = {"f": "F", "female": "F", "m": "M", "male": "M"}


class Manifest(Corpus):
    """Rows of a CSV manifest, checked: every audio file must exist."""

    name = "manifest"
    summary = "your own corpus: a CSV of path, speaker, gender, emotion[, fold]"

    def __init__(self, root: str | Path | None = None) -> None:
        # Not super().__init__: the base class insists on a directory, a manifest is a file.
        if root is None:
            raise SerbenchError(f"dataset {self.name!r} needs --data-root (the manifest CSV)")
        self.root = Path(root).expanduser()
        if not self.root.is_file():
            raise SerbenchError(f"manifest {self.root} does not exist or is not a file")

    def _table(self) -> pd.DataFrame:
        csv = self.root
        table = read_csv(csv, required=REQUIRED)
        # Line numbers as a text editor shows them: the header is line 1.
        lines = range(2, len(table) + 2)
        for column in (*REQUIRED, "fold"):
            if column in table.columns and (table[column] == "").any():
                line = lines[int((table[column] == "").to_numpy().argmax())]
                raise SerbenchError(f"{csv}: line {line}: empty {column!r}")
        folder = absolute(csv).parent
        paths = [absolute(folder / Path(p).expanduser()) for p in table["path"]]
        for line, path in zip(lines, paths):
            if not path.is_file():
                raise SerbenchError(f"{csv}: line {line}: audio file {path} does not exist")
        genders = [_gender(csv, line, value) for line, value in zip(lines, table["gender"])]
        out = pd.DataFrame(
            {
                "utt_id": _unique([p.stem for p in paths]),
                "path": [str(p) for p in paths],
                "speaker": table["speaker"],
                "gender": genders,
                "emotion": table["emotion"],
                "corpus": self.name,
            }
        )
        if "fold" in table.columns:
            out["fold"] = [_fold(csv, line, value) for line, value in zip(lines, table["fold"])]
            split = out.groupby("speaker")["fold"].nunique()
            if (split > 1).any():
                raise SerbenchError(
                    f"{csv}: speaker {split[split > 1].index[0]!r} is in several folds; "
                    "folds must be speaker-independent"
                )
        else:
            out["fold"] = out["speaker"].map(_deal_folds(out))
        return out[list(COLUMNS)]


def _gender(csv: Path, line: int, value: str) -> str:
    gender = _GENDERS.get(value.lower())
    if gender is None:
        raise SerbenchError(f"{csv}: line {line}: unknown gender {value!r}; use F/M/female/male")
    return gender


def _fold(csv: Path, line: int, value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise SerbenchError(f"{csv}: line {line}: fold {value!r} is not a whole number >= 1")
    return int(value)


def _unique(stems: list[str]) -> list[str]:
    """The stems, with each repeated one numbered (``a-1``, ``a-2``) avoiding existing names."""
    counts = Counter(stems)
    taken = set(stems)
    ids = []
    for stem in stems:
        if counts[stem] == 1:
            ids.append(stem)
            continue
        n = 1
        while f"{stem}-{n}" in taken:
            n += 1
        taken.add(f"{stem}-{n}")
        ids.append(f"{stem}-{n}")
    return ids


def _deal_folds(table: pd.DataFrame) -> dict[str, int]:
    """Speaker -> fold: sorted women then sorted men dealt round-robin over up to 5 folds.

    One continuous deal keeps each gender's count per fold within one of the others and leaves
    no fold empty. A speaker listed with two genders gets the first; the table check rejects it.
    """
    gender = table.drop_duplicates("speaker").set_index("speaker")["gender"]
    order = sorted(gender.index, key=lambda speaker: (gender[speaker], speaker))
    k = min(MAX_FOLDS, len(order))
    return {speaker: i % k + 1 for i, speaker in enumerate(order)}
