"""IEMOCAP loader (``IEMOCAP_full_release``), serbench's standard protocol (corpora.md §1, §6).

4 classes with ``exc`` merged into happy (5531 clips), leave-one-session-out folds, and the
speaker taken from the utterance's last ``_`` token: the letter in ``Ses01F`` marks the actor
wearing MoCap markers, not the speaker, and using it mislabels half the utterances.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from serbench.corpora._util import find_audio
from serbench.corpora.base import Corpus
from serbench.errors import SerbenchError, unknown_name

SESSIONS = range(1, 6)
SUBSETS = ("all", "improvised", "scripted")
_CODES_4 = {"neu": "neutral", "hap": "happy", "sad": "sad", "ang": "angry"}


class Iemocap(Corpus):
    """IEMOCAP, one row per labelled utterance whose wav exists."""

    name = "iemocap"
    summary = "IEMOCAP: 10 actors in 5 sessions, 4 classes (hap+exc merged), leave-one-session-out"
    clients_per_speaker = 10

    def __init__(
        self, root: str | Path | None = None, *, subset: str = "all", merge_excited: bool = True
    ) -> None:
        super().__init__(root)
        if subset not in SUBSETS:
            raise unknown_name("IEMOCAP subset", subset, SUBSETS)
        self.subset = subset
        self.codes = dict(_CODES_4, **({"exc": "happy"} if merge_excited else {}))

    def _table(self) -> pd.DataFrame:
        sessions = [n for n in SESSIONS if (self.root / f"Session{n}").is_dir()]
        if not sessions:
            raise SerbenchError(
                f"{self.root}: no Session1..Session5 folders; point at IEMOCAP_full_release"
            )
        rows = []
        n_label_files = 0
        for n in sessions:
            session = self.root / f"Session{n}"
            audio = find_audio(session / "sentences" / "wav", "*/*")
            # Only the top-level files: the subfolders (Categorical/, Attribute/, ...) hold
            # per-rater files in other formats.
            label_files = sorted(
                p
                for p in (session / "dialog" / "EmoEvaluation").glob("*.txt")
                if not p.name.startswith(".")
            )
            n_label_files += len(label_files)
            for utt_id, code in (u for f in label_files for u in _read_labels(f)):
                improvised = "impro" in utt_id
                if self.subset != "all" and improvised != (self.subset == "improvised"):
                    continue
                if code not in self.codes or utt_id not in audio:
                    continue
                letter = utt_id.rsplit("_", 1)[-1][0]
                rows.append(
                    {
                        "utt_id": utt_id,
                        "path": str(audio[utt_id]),
                        "speaker": f"Ses{n:02d}{letter}",
                        "gender": letter,
                        "emotion": self.codes[code],
                        "fold": n,
                        "corpus": self.name,
                        "improvised": improvised,
                    }
                )
        if not n_label_files:
            raise SerbenchError(
                f"{self.root}: no label files in Session*/dialog/EmoEvaluation/*.txt"
            )
        return pd.DataFrame(rows)


def _read_labels(path: Path) -> list[tuple[str, str]]:
    """(utterance id, code) from the summary lines: ``[start - end]\\tid\\tcode\\t[v, a, d]``."""
    labels = []
    with open(path, encoding="utf-8", errors="replace") as lines:
        for number, line in enumerate(lines, 1):
            if not line.startswith("["):
                continue
            fields = line.rstrip("\r\n").split("\t")
            if len(fields) < 3:
                raise SerbenchError(f"{path}:{number}: expected '[time]<TAB>id<TAB>code...'")
            labels.append((fields[1].strip(), fields[2].strip()))
    return labels
