"""CREMA-D loader, serbench's standard protocol (corpora.md §3, §6).

Default: the intended emotion from the file name, 4 classes, and five folds by actor-id range
(fed-ser-leakage's KFold over ordered ids). ``labels="perceived"`` uses the audio-visual
majority vote (``MultiModalVote``); ties such as ``D:N`` have no single label and are dropped.
"""

from __future__ import annotations

import re
from bisect import bisect_left
from pathlib import Path

import pandas as pd

from serbench.corpora._util import find_audio, read_csv
from serbench.corpora.base import Corpus
from serbench.errors import SerbenchError, unknown_name

LABELS = ("intended", "perceived")
CLASSES = (4, 6)
_CODES_4 = {"NEU": "neutral", "HAP": "happy", "SAD": "sad", "ANG": "angry"}
_CODES_6 = {**_CODES_4, "DIS": "disgust", "FEA": "fearful"}
FIRST_ACTOR = 1001
#: Last actor id of folds 1..5.
FOLD_ENDS = (1019, 1037, 1055, 1073, 1091)
#: The release's README: this clip's file holds no audio.
EMPTY_CLIPS = frozenset({"1076_MTI_SAD_XX"})
_CLIP = re.compile(r"(\d{4})_[A-Z]{3}_([A-Z]{3})_[A-Z]{2}")
_SEX = {"male": "M", "female": "F"}


class CremaD(Corpus):
    """CREMA-D, one row per clip in the chosen classes (audio found anywhere under root)."""

    name = "crema-d"
    summary = "CREMA-D: 91 actors, 4 intended classes, 5 folds by actor id"
    clients_per_speaker = 1
    all_labels = {"classes": 6}

    def __init__(
        self, root: str | Path | None = None, *, labels: str = "intended", classes: int = 4
    ) -> None:
        super().__init__(root)
        if labels not in LABELS:
            raise unknown_name("CREMA-D label source", labels, LABELS)
        if classes not in CLASSES:
            raise SerbenchError(f"CREMA-D classes must be 4 or 6, not {classes!r}")
        self.labels = labels
        self.codes = _CODES_4 if classes == 4 else _CODES_6

    def _table(self) -> pd.DataFrame:
        audio = {
            stem: path
            for stem, path in find_audio(self.root, "**/*").items()
            if _CLIP.fullmatch(stem) and stem not in EMPTY_CLIPS
        }
        if not audio:
            raise SerbenchError(f"{self.root}: no CREMA-D clips (AudioWAV/AAAA_SSS_EEE_LL.wav)")
        sex = self._sex_by_actor()
        perceived = self._perceived() if self.labels == "perceived" else None
        rows = []
        for utt_id, path in audio.items():
            actor, code = _CLIP.fullmatch(utt_id).groups()
            if perceived is not None:
                code = perceived.get(utt_id)
            if code not in self.codes:
                continue
            if actor not in sex:
                raise SerbenchError(f"{path}: actor {actor} is not in VideoDemographics.csv")
            rows.append(
                {
                    "utt_id": utt_id,
                    "path": str(path),
                    "speaker": actor,
                    "gender": sex[actor],
                    "emotion": self.codes[code],
                    "fold": _fold(actor, path),
                    "corpus": self.name,
                }
            )
        return pd.DataFrame(rows)

    def _sex_by_actor(self) -> dict[str, str]:
        path = self._metadata("VideoDemographics.csv")
        table = read_csv(path, required=("actorid", "sex"))
        bad = sorted(set(table["sex"].str.lower()) - set(_SEX))
        if bad:
            raise SerbenchError(f"{path}: unknown Sex value(s) {bad}; expected Male or Female")
        return dict(zip(table["actorid"], table["sex"].str.lower().map(_SEX)))

    def _perceived(self) -> dict[str, str]:
        """Clip -> class code of its single-letter ``MultiModalVote`` (ties map to nothing)."""
        path = self._metadata("summaryTable.csv")
        table = read_csv(path, required=("filename", "multimodalvote"))
        # Each code's first letter (A/D/F/H/N/S) is the vote letter.
        by_letter = {code[0]: code for code in self.codes}
        return {
            clip: by_letter[vote]
            for clip, vote in zip(table["filename"], table["multimodalvote"])
            if vote in by_letter
        }

    def _metadata(self, name: str) -> Path:
        """The shallowest ``name`` under root: copies keep the CSVs at root or in subfolders."""
        found = sorted(self.root.rglob(name), key=lambda p: (len(p.parts), str(p)))
        if not found:
            raise SerbenchError(f"{self.root}: no {name} (CREMA-D metadata) under this folder")
        return found[0]


def _fold(actor: str, path: Path) -> int:
    """Fold 1..5 by actor-id range (:data:`FOLD_ENDS`)."""
    number = int(actor)
    if not FIRST_ACTOR <= number <= FOLD_ENDS[-1]:
        raise SerbenchError(f"{path}: actor id {actor} is outside CREMA-D's 1001-1091")
    return bisect_left(FOLD_ENDS, number) + 1
