"""Helpers shared by the corpus loaders: finding audio files and reading metadata CSVs.

Both turn the usual ways a user's copy of a corpus goes wrong (a clip stored twice, a CSV that
is not a CSV or lacks a column) into one-line :class:`SerbenchError`\\ s naming the file.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from serbench.corpora.audio import AUDIO_SUFFIXES, first_line
from serbench.errors import SerbenchError


def absolute(path: str | Path) -> Path:
    """``path`` made absolute with ``..`` collapsed but symlinks kept (unlike ``resolve``)."""
    return Path(os.path.abspath(Path(path).expanduser()))


def find_audio(root: Path, pattern: str) -> dict[str, Path]:
    """Audio files (wav/flac) under ``root`` matching the glob ``pattern``, keyed by file stem.

    Loaders join labels to audio by stem, so a stem found twice (say a wav and a resampled
    flac copy) would be ambiguous and is an error. Paths are absolute. macOS ``._`` resource
    files, common in copies of these corpora, are ignored.
    """
    found: dict[str, Path] = {}
    for path in absolute(root).glob(pattern):
        if path.suffix.lower() not in AUDIO_SUFFIXES or path.name.startswith("."):
            continue
        if path.stem in found:
            raise SerbenchError(f"clip {path.stem!r} found twice: {found[path.stem]} and {path}")
        found[path.stem] = path
    return found


def read_csv(path: Path, required: Iterable[str] = ()) -> pd.DataFrame:
    """Read ``path`` as stripped string cells under stripped, lower-case column names.

    Lower-casing makes headers such as CREMA-D's ``FileName`` (``fileName`` in its README)
    and a user's ``Path`` match; missing ``required`` columns are named in the error.
    """
    try:
        table = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise SerbenchError(f"{path}: unreadable CSV ({first_line(exc)})") from None
    table.columns = [str(c).strip().lower() for c in table.columns]
    table = table.apply(lambda column: column.str.strip())
    missing = [c for c in required if c not in table.columns]
    if missing:
        raise SerbenchError(f"{path}: missing column(s) {', '.join(missing)}")
    return table
