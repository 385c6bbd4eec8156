"""The built-in ``synth`` corpus: table contract, determinism, caching, and that its acoustics
carry gender (except with ``null=True``) and emotion, measured from the audio itself."""

from __future__ import annotations

import os
from hashlib import sha1
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from serbench.corpora import synth
from serbench.corpora.audio import SAMPLE_RATE, load_audio
from serbench.corpora.base import COLUMNS, EMOTIONS_4
from serbench.corpora.synth import Synth
from serbench.errors import SerbenchError

SMALL = {"speakers": 10, "utterances_per_emotion": 2}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Every test gets its own empty cache, so nothing touches ~/.cache."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("SERBENCH_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    """40 speakers (the default), 2 utterances per emotion to keep the suite fast."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SERBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        return Synth(utterances_per_emotion=2).load()


@pytest.fixture(scope="module")
def null_corpus(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SERBENCH_CACHE", str(tmp_path_factory.mktemp("cache")))
        return Synth(utterances_per_emotion=2, null=True).load()


def estimate_f0(audio: np.ndarray, fmin: float = 60.0, fmax: float = 500.0) -> float:
    """Median F0 (Hz) of an utterance from frame autocorrelation: independent of the generator.

    Frames of 40 ms within 20 dB of the loudest frame and periodic enough (normalised
    autocorrelation peak > 0.5) vote; the shortest lag within 85% of the peak avoids
    picking a multiple of the period.
    """
    size, hop = 640, 160
    count = 1 + (len(audio) - size) // hop
    frames = audio[np.arange(size)[None, :] + hop * np.arange(count)[:, None]].astype(np.float64)
    frames -= frames.mean(axis=1, keepdims=True)
    rms = np.sqrt((frames**2).mean(axis=1))
    frames = frames[rms > 0.1 * rms.max()]
    power = np.abs(np.fft.rfft(frames, 2 * size, axis=1)) ** 2
    ac = np.fft.irfft(power, axis=1)[:, :size]
    ac /= ac[:, :1]
    lo, hi = int(SAMPLE_RATE / fmax), int(SAMPLE_RATE / fmin)
    window = ac[:, lo:hi]
    peak = window.max(axis=1)
    lag = lo + np.argmax(window >= 0.85 * peak[:, None], axis=1)
    return float(np.median(SAMPLE_RATE / lag[peak > 0.5]))


def acoustics(table: pd.DataFrame) -> pd.DataFrame:
    """Measured F0 and RMS level (dBFS) per utterance."""
    rows = []
    for path in table["path"]:
        audio = load_audio(path)
        rows.append((estimate_f0(audio), 10 * np.log10(np.mean(audio.astype(np.float64) ** 2))))
    return table.assign(**dict(zip(("f0", "rms_db"), np.array(rows).T, strict=True)))


def gender_separation(table: pd.DataFrame) -> tuple[float, float]:
    """Per-speaker mean measured log-F0: (|F - M| difference of means / pooled within-gender
    sd, speaker-independent accuracy of a midpoint threshold fitted on the other folds)."""
    speakers = acoustics(table).assign(log_f0=lambda d: np.log(d["f0"]))
    speakers = speakers.groupby(["speaker", "gender", "fold"], as_index=False)["log_f0"].mean()
    by_gender = speakers.groupby("gender")["log_f0"]
    effect = abs(by_gender.mean()["F"] - by_gender.mean()["M"]) / np.sqrt(by_gender.var().mean())
    correct = 0
    for fold in sorted(speakers["fold"].unique()):
        train, test = speakers[speakers["fold"] != fold], speakers[speakers["fold"] == fold]
        means = train.groupby("gender")["log_f0"].mean()
        high = "F" if means["F"] > means["M"] else "M"
        low = "M" if high == "F" else "F"
        predicted = np.where(test["log_f0"] > means.mean(), high, low)
        correct += int((predicted == test["gender"]).sum())
    return float(effect), correct / len(speakers)


def test_table_contract(corpus: pd.DataFrame) -> None:
    assert list(corpus.columns) == [*COLUMNS, "f0_mean"]
    assert len(corpus) == 40 * 4 * 2
    assert (corpus["corpus"] == "synth").all()
    assert corpus["utt_id"].is_unique and corpus["utt_id"].is_monotonic_increasing
    assert all(Path(p).is_file() and p.endswith(".flac") for p in corpus["path"])
    speakers = corpus.drop_duplicates("speaker")
    assert speakers["speaker"].tolist() == [f"synth{i:02d}" for i in range(40)]
    assert speakers["gender"].value_counts().to_dict() == {"F": 20, "M": 20}
    assert (corpus.groupby(["speaker", "emotion"]).size() == 2).all()
    assert sorted(corpus["emotion"].unique()) == sorted(EMOTIONS_4)
    assert corpus.groupby("speaker")["fold"].nunique().max() == 1
    per_fold = speakers.groupby(["fold", "gender"]).size().unstack()
    assert per_fold.index.tolist() == [1, 2, 3, 4, 5]
    assert (per_fold == 4).all().all()


def test_audio_format(corpus: pd.DataFrame) -> None:
    info = sf.info(corpus["path"].iloc[0])
    assert (info.samplerate, info.channels) == (SAMPLE_RATE, 1)
    assert (info.format, info.subtype) == ("FLAC", "PCM_16")
    durations = [sf.info(p).duration for p in corpus["path"]]
    assert 1.0 <= min(durations) and max(durations) <= 2.0


def test_default_options_and_cache_location(_cache: Path) -> None:
    default = Synth()
    options = (default.speakers, default.utterances_per_emotion, default.null, default.seed)
    assert options == (40, 8, False, 0)
    assert default.root == _cache / "synth" / default.key
    variants = [{"seed": 1}, {"null": True}, {"speakers": 42}, {"utterances_per_emotion": 3}]
    others = {Synth(**v).key for v in variants}  # type: ignore[arg-type]
    assert default.key not in others and len(others) == 4
    assert not default.root.exists()  # constructing writes nothing


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = Synth(tmp_path / "a", **SMALL, seed=3).load()
    b = Synth(tmp_path / "b", **SMALL, seed=3).load()
    c = Synth(tmp_path / "c", **SMALL, seed=4).load()
    assert a["utt_id"].tolist() == b["utt_id"].tolist() == c["utt_id"].tolist()
    for pa, pb, pc in zip(a["path"], b["path"], c["path"], strict=True):
        assert Path(pa).read_bytes() == Path(pb).read_bytes() != Path(pc).read_bytes()
    assert (tmp_path / "a" / "meta.csv").read_bytes() == (tmp_path / "b" / "meta.csv").read_bytes()


def test_utterance_independent_of_generation_order() -> None:
    voice = synth.speaker_voices(10, seed=5)[3][1]
    first = synth.generate_utterance(voice, "happy", synth.utterance_rng(5, 3, "happy", 1))
    synth.generate_utterance(voice, "sad", synth.utterance_rng(5, 3, "sad", 0))
    again = synth.generate_utterance(voice, "happy", synth.utterance_rng(5, 3, "happy", 1))
    assert first.dtype == np.float32 and np.array_equal(first, again)


def test_second_load_reuses_files(monkeypatch: pytest.MonkeyPatch) -> None:
    table = Synth(**SMALL).load()
    stamps = {p: os.stat(p).st_mtime_ns for p in table["path"]}

    def no_generation(*args: object) -> np.ndarray:
        raise AssertionError("regenerated an existing corpus")

    monkeypatch.setattr(synth, "generate_utterance", no_generation)
    again = Synth(**SMALL).load()
    pd.testing.assert_frame_equal(table, again)
    assert {p: os.stat(p).st_mtime_ns for p in again["path"]} == stamps


def test_interrupted_generation_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def crash_after_one_speaker(fn, jobs, **kwargs):  # workers fail after a partial write
        fn(jobs[0])
        yield None
        raise RuntimeError("interrupted")

    monkeypatch.setattr(synth, "process_map", crash_after_one_speaker)
    with pytest.raises(RuntimeError):
        Synth(tmp_path / "out", **SMALL).load()
    assert [p.name for p in tmp_path.iterdir()] == ["cache"]  # the cache holds only its lock


def test_stale_corpus_replaced_foreign_directory_refused(tmp_path: Path) -> None:
    root = tmp_path / "corpus"
    Synth(root, **SMALL, seed=1).load()
    table = Synth(root, **SMALL, seed=2).load()
    Synth(tmp_path / "fresh", **SMALL, seed=2).load()
    assert (root / "meta.csv").read_text() == (tmp_path / "fresh" / "meta.csv").read_text()
    assert all(Path(p).is_file() for p in table["path"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "corpus", "fresh"]
    Path(table["path"].iloc[0]).unlink()  # a damaged corpus is regenerated, not trusted
    assert Path(Synth(root, **SMALL, seed=2).load()["path"].iloc[0]).is_file()

    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(SerbenchError, match="not a synth corpus"):
        Synth(foreign, **SMALL).load()
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_gender_visible_in_f0(corpus: pd.DataFrame) -> None:
    effect, accuracy = gender_separation(corpus)
    assert effect > 2.5
    assert accuracy >= 0.95


def test_null_corpus_has_no_gender_cue(null_corpus: pd.DataFrame) -> None:
    speakers = null_corpus.drop_duplicates("speaker")
    assert speakers["gender"].value_counts().to_dict() == {"F": 20, "M": 20}
    effect, accuracy = gender_separation(null_corpus)
    assert effect < 0.8
    assert 0.25 <= accuracy <= 0.75
    # The voices still span both kinds: only the link to the label is gone.
    assert speakers["f0_mean"].min() < 140 and speakers["f0_mean"].max() > 190
    # Twins (same pair, one F and one M) hold the same recordings.
    for _, twins in null_corpus.groupby("pair"):
        assert sorted(twins["gender"].unique()) == ["F", "M"]
        audio = [sorted(sha1(Path(p).read_bytes()).hexdigest() for p in rows["path"])
                 for _, rows in twins.groupby("speaker")]
        assert audio[0] == audio[1]


def test_emotion_visible_in_level_and_f0(corpus: pd.DataFrame) -> None:
    measured = acoustics(corpus[corpus["emotion"].isin(["angry", "sad"])])
    per_speaker = measured.groupby(["speaker", "emotion"])[["f0", "rms_db"]].mean().unstack()
    level_gap = per_speaker[("rms_db", "angry")] - per_speaker[("rms_db", "sad")]
    f0_ratio = per_speaker[("f0", "angry")] / per_speaker[("f0", "sad")]
    assert level_gap.mean() > 6.0 and (level_gap > 0).mean() >= 0.9
    assert f0_ratio.mean() > 1.15 and (f0_ratio > 1).mean() >= 0.9


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"speakers": 8}, "speakers must be an even number >= 10"),
        ({"speakers": 41}, "speakers must be an even number >= 10"),
        ({"speakers": 40.0}, "speakers must be an integer"),
        ({"utterances_per_emotion": 1}, "utterances_per_emotion must be >= 2"),
        ({"seed": -1}, "seed must be >= 0"),
        ({"null": "yes"}, "null must be true or false"),
    ],
)
def test_bad_options(options: dict[str, object], message: str) -> None:
    with pytest.raises(SerbenchError, match=message):
        Synth(**options)  # type: ignore[arg-type]
