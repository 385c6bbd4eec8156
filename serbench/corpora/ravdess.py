"""RAVDESS speech (audio-only) loader, serbench's standard protocol (corpora.md §4, §6).

Everything comes from the file name ``03-01-EE-II-SS-RR-AA`` (no audio is opened), so the whole
corpus loads in milliseconds. Folds are EmoBox's six actor-disjoint test sets.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from serbench.corpora._util import find_audio
from serbench.corpora.base import Corpus
from serbench.errors import SerbenchError

CLASSES = (4, 8)
_CODES_4 = {"01": "neutral", "03": "happy", "04": "sad", "05": "angry"}
_CODES_8 = {**_CODES_4, "02": "calm", "06": "fearful", "07": "disgust", "08": "surprised"}
#: EmoBox's test actors of folds 1..6.
FOLD_ACTORS = (
    ("01", "11", "20", "21"),
    ("04", "10", "12", "14"),
    ("08", "09", "19", "23"),
    ("03", "05", "07", "24"),
    ("02", "15", "16", "18"),
    ("06", "13", "17", "22"),
)
_FOLD = {actor: fold for fold, actors in enumerate(FOLD_ACTORS, 1) for actor in actors}
#: Audio-only (03) speech (01): emotion, intensity, statement, repetition, actor.
_NAME = re.compile(r"03-01-(\d\d)-(0[12])-(0[12])-(0[12])-(\d\d)")


class Ravdess(Corpus):
    """RAVDESS speech, one row per clip in the chosen classes (``.wav`` or ``.flac``).

    Extras: ``intensity`` (1 normal, 2 strong) and ``statement`` (1 "Kids are talking by the
    door", 2 "Dogs are sitting by the door").
    """

    name = "ravdess"
    summary = "RAVDESS speech: 24 actors, 4 classes, EmoBox's 6 actor folds"
    clients_per_speaker = 1
    all_labels = {"classes": 8}

    def __init__(self, root: str | Path | None = None, *, classes: int = 4) -> None:
        super().__init__(root)
        if classes not in CLASSES:
            raise SerbenchError(f"RAVDESS classes must be 4 or 8, not {classes!r}")
        self.codes = _CODES_4 if classes == 4 else _CODES_8

    def _table(self) -> pd.DataFrame:
        rows = []
        # "**/" also accepts the release's Audio_Speech_Actors_01-24/ level above Actor_XX/.
        for utt_id, path in find_audio(self.root, "**/Actor_*/03-01-*").items():
            match = _NAME.fullmatch(utt_id)
            if match is None or match[1] not in self.codes or match[5] not in _FOLD:
                continue
            code, intensity, statement, _, actor = match.groups()
            rows.append(
                {
                    "utt_id": utt_id,
                    "path": str(path),
                    "speaker": actor,
                    "gender": "M" if int(actor) % 2 else "F",
                    "emotion": self.codes[code],
                    "fold": _FOLD[actor],
                    "corpus": self.name,
                    "intensity": int(intensity),
                    "statement": int(statement),
                }
            )
        return pd.DataFrame(rows)
