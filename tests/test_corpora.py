"""Corpus loaders against trees with the real corpora's names and label formats, and real RAVDESS.

The expected numbers are worked out by hand from the fixture tables in ``corpus_fixtures`` or
counted from the real metadata with the csv module, never with the loaders' own code.
"""

from __future__ import annotations

import time
from pathlib import Path

import corpus_fixtures as cf
import pandas as pd
import pytest

from serbench.corpora.audio import load_audio
from serbench.corpora.base import COLUMNS
from serbench.corpora.cremad import CremaD
from serbench.corpora.iemocap import Iemocap
from serbench.corpora.manifest import Manifest
from serbench.corpora.msp_improv import MspImprov
from serbench.corpora.ravdess import Ravdess
from serbench.errors import SerbenchError

LOADERS = (Iemocap, MspImprov, CremaD, Ravdess)


def counts(column: pd.Series) -> dict:
    return column.value_counts().to_dict()


def check_contract(table: pd.DataFrame, corpus: str) -> None:
    """Columns, absolute existing paths, the corpus name, and the clips decode."""
    assert list(table.columns[: len(COLUMNS)]) == list(COLUMNS)
    assert (table["corpus"] == corpus).all()
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in table["path"])
    assert load_audio(table["path"].iloc[0]).shape == (800,)  # 0.05 s at 16 kHz


# --- IEMOCAP -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def iemocap_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cf.build_iemocap(tmp_path_factory.mktemp("iemocap"))


def test_iemocap_standard_protocol(iemocap_root: Path) -> None:
    table = Iemocap(iemocap_root).load()
    check_contract(table, "iemocap")
    # fru, xxx, sur and dis are dropped; exc joins hap; the missing wav is skipped.
    assert len(table) == 15
    assert cf.IEMOCAP_NO_WAV not in set(table["utt_id"])
    assert counts(table["emotion"]) == {"happy": 5, "neutral": 4, "sad": 3, "angry": 3}
    assert counts(table["gender"]) == {"F": 8, "M": 7}
    assert set(table["speaker"]) == {f"Ses0{n}{g}" for n in range(1, 6) for g in "FM"}
    assert counts(table["fold"]) == {1: 7, 2: 2, 3: 2, 4: 2, 5: 2}
    assert counts(table["improvised"]) == {False: 8, True: 7}
    assert Iemocap.clients_per_speaker == 10


def test_iemocap_speaker_is_the_last_tokens_letter_not_the_prefix(iemocap_root: Path) -> None:
    table = Iemocap(iemocap_root).load().set_index("utt_id")
    assert table.loc["Ses01M_script02_2_F000", ["speaker", "gender"]].tolist() == ["Ses01F", "F"]
    assert table.loc["Ses03M_impro05b_F000", ["speaker", "gender"]].tolist() == ["Ses03F", "F"]
    # Seven fixture utterances would get the wrong speaker from the Ses0NX prefix.
    prefix_letter = table.index.str[5]
    assert (prefix_letter != table["gender"]).sum() == 7
    assert (table["speaker"] == "Ses0" + table["fold"].astype(str) + table["gender"]).all()


@pytest.mark.parametrize(
    ("options", "n", "happy", "improvised"),
    [
        ({"merge_excited": False}, 12, 2, {True, False}),
        ({"subset": "improvised"}, 7, 2, {True}),
        ({"subset": "scripted"}, 8, 3, {False}),
        ({"subset": "improvised", "merge_excited": False}, 6, 1, {True}),
    ],
)
def test_iemocap_options(
    iemocap_root: Path, options: dict, n: int, happy: int, improvised: set
) -> None:
    table = Iemocap(iemocap_root, **options).load()
    assert len(table) == n
    assert (table["emotion"] == "happy").sum() == happy
    assert set(table["improvised"]) == improvised


def test_iemocap_errors(iemocap_root: Path, tmp_path: Path) -> None:
    with pytest.raises(SerbenchError, match="subset 'impro'"):
        Iemocap(iemocap_root, subset="impro")
    with pytest.raises(SerbenchError, match="Session1..Session5"):
        Iemocap(tmp_path).load()
    (tmp_path / "Session1" / "dialog" / "EmoEvaluation").mkdir(parents=True)
    with pytest.raises(SerbenchError, match="no label files"):
        Iemocap(tmp_path).load()


# --- MSP-IMPROV ----------------------------------------------------------------------------
@pytest.fixture(scope="module", params=["release", "flat"])
def msp_root(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both layouts: Audio/ + Evalution.txt, and sessions at the root + Evaluation.txt."""
    base = tmp_path_factory.mktemp("msp")
    if request.param == "release":
        return cf.build_msp_improv(base)
    return cf.build_msp_improv(base, audio_level=False, label_name="Evaluation.txt")


def test_msp_improv_standard_protocol(msp_root: Path) -> None:
    table = MspImprov(msp_root).load()
    check_contract(table, "msp-improv")
    # O and X dropped, one labelled clip has no audio, one clip has no label.
    assert len(table) == 8
    assert set(table["utt_id"]) >= {"MSP-IMPROV-S01A-F01-S-FM01", "MSP-IMPROV-S05A-M06-P-MF01"}
    assert counts(table["emotion"]) == {"neutral": 3, "angry": 2, "sad": 2, "happy": 1}
    assert set(table["speaker"]) == {"F01", "M01", "F02", "M02", "F06", "M06"}
    assert counts(table["gender"]) == {"F": 4, "M": 4}
    assert counts(table["fold"]) == {1: 4, 2: 2, 6: 2}
    assert counts(table["rec_type"]) == {"S": 3, "T": 2, "P": 2, "R": 1}
    assert MspImprov.clients_per_speaker == 10


def test_msp_improv_improvised_only(msp_root: Path) -> None:
    table = MspImprov(msp_root, improvised_only=True).load()
    assert len(table) == 5
    assert set(table["rec_type"]) == {"S", "T"}


def test_msp_improv_label_file_errors(tmp_path: Path) -> None:
    with pytest.raises(SerbenchError, match="Evalution.txt or Evaluation.txt"):
        MspImprov(tmp_path).load()
    (tmp_path / "Evaluation.txt").write_text("rater01; Angry; ; A:3.0; V:2.0; D:3.0; N:3.0;\n")
    with pytest.raises(SerbenchError, match="Evaluation.txt: no 'UTD-IMPROV"):
        MspImprov(tmp_path).load()


# --- CREMA-D (real metadata, placeholder audio) ----------------------------------------------
@pytest.fixture(scope="module")
def cremad_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not cf.CREMAD_META.is_dir():
        pytest.skip(f"real CREMA-D metadata not found at {cf.CREMAD_META} (no ../shared/data)")
    return cf.build_cremad(tmp_path_factory.mktemp("cremad"))


def fold_of(actor: str) -> int:
    """corpora.md §6, written out independently of the loader."""
    a = int(actor)
    return 1 if a <= 1019 else 2 if a <= 1037 else 3 if a <= 1055 else 4 if a <= 1073 else 5


def test_cremad_intended_4_class(cremad_root: Path) -> None:
    table = CremaD(cremad_root).load()
    check_contract(table, "crema-d")
    sex = cf.read_cremad_csv(cf.CREMAD_META / "VideoDemographics.csv", "ActorID", "Sex")
    expected = [
        n for n in cf.cremad_names() if n.split("_")[2] in {"ANG", "HAP", "NEU", "SAD"}
    ]
    expected.remove("1076_MTI_SAD_XX")  # the release's empty file
    assert sorted(table["utt_id"]) == sorted(expected)
    # corpora.md's 4900 (F 2312) counts the empty 1076_MTI_SAD_XX; serbench skips it.
    assert len(table) == 4899
    assert counts(table["gender"]) == {"M": 2588, "F": 2311}
    assert counts(table["gender"]) == counts(pd.Series([sex[n[:4]][0] for n in expected]))
    assert counts(table["emotion"]) == {"angry": 1271, "happy": 1271, "sad": 1270, "neutral": 1087}
    assert counts(table["fold"]) == counts(pd.Series([fold_of(n[:4]) for n in expected]))
    speakers = table.drop_duplicates("speaker")
    assert len(speakers) == 91
    assert counts(speakers["gender"]) == {"M": 48, "F": 43}
    assert counts(speakers["fold"]) == {1: 19, 2: 18, 3: 18, 4: 18, 5: 18}
    assert (speakers["fold"] == speakers["speaker"].map(fold_of)).all()
    assert CremaD.clients_per_speaker == 1


def test_cremad_perceived_labels(cremad_root: Path) -> None:
    table = CremaD(cremad_root, labels="perceived").load()
    votes = cf.read_cremad_csv(
        cf.CREMAD_META / "summaryTable.csv", "FileName", "MultiModalVote"
    )
    single = {clip for clip, vote in votes.items() if vote in {"A", "H", "N", "S"}}
    # corpora.md's 4799 includes 1076_MTI_SAD_XX (voted S), which has no audio.
    assert set(table["utt_id"]) == single - {"1076_MTI_SAD_XX"}
    assert len(table) == 4798
    assert counts(table["emotion"]) == {"neutral": 1972, "happy": 1219, "angry": 1019, "sad": 588}
    assert not table["utt_id"].isin([c for c, v in votes.items() if ":" in v]).any()  # ties


def test_cremad_six_classes(cremad_root: Path) -> None:
    assert len(CremaD(cremad_root, classes=6).load()) == 7441
    six = CremaD(cremad_root, labels="perceived", classes=6).load()
    assert len(six) == 7021
    assert counts(six["emotion"])["disgust"] == 1139
    assert counts(six["emotion"])["fearful"] == 1084


def test_cremad_small_tree_and_errors(tmp_path: Path) -> None:
    """Without the shared data: own metadata, a tie, the empty clip, a missing CSV."""
    meta = tmp_path / "meta"
    cf.write_csv(meta / "VideoDemographics.csv", ["ActorID", "Age", "Sex", "Race", "Ethnicity"],
                 [[1001, 51, "Male", "Caucasian", "Not Hispanic"],
                  [1076, 25, "Female", "Caucasian", "Not Hispanic"]])
    votes = {"1001_DFA_ANG_XX": "A", "1001_IEO_HAP_LO": "N", "1001_DFA_DIS_XX": "D",
             "1076_ITS_NEU_XX": "D:N", "1076_MTI_SAD_XX": "S", "1076_IEO_FEA_HI": "F"}
    cf.write_csv(meta / "SentenceFilenames.csv", ["Stimulus_Number", "Filename"],
                 [[i, clip] for i, clip in enumerate(votes, 1)])
    cf.write_csv(meta / "summaryTable.csv", ["", "FileName", "MultiModalVote"],
                 [[str(i), clip, vote] for i, (clip, vote) in enumerate(votes.items(), 1)])
    root = cf.build_cremad(tmp_path, meta)
    intended = CremaD(root).load().set_index("utt_id")
    assert intended["emotion"].to_dict() == {
        "1001_DFA_ANG_XX": "angry", "1001_IEO_HAP_LO": "happy", "1076_ITS_NEU_XX": "neutral"
    }
    assert intended["gender"].to_dict() == {
        "1001_DFA_ANG_XX": "M", "1001_IEO_HAP_LO": "M", "1076_ITS_NEU_XX": "F"
    }
    assert intended["fold"].to_dict() == {
        "1001_DFA_ANG_XX": 1, "1001_IEO_HAP_LO": 1, "1076_ITS_NEU_XX": 5
    }
    perceived = CremaD(root, labels="perceived", classes=6).load().set_index("utt_id")
    assert perceived["emotion"].to_dict() == {
        "1001_DFA_ANG_XX": "angry", "1001_IEO_HAP_LO": "neutral", "1001_DFA_DIS_XX": "disgust",
        "1076_IEO_FEA_HI": "fearful",
    }
    with pytest.raises(SerbenchError, match="classes must be 4 or 6, not '6'"):
        CremaD(root, classes="6")
    with pytest.raises(SerbenchError, match="label source 'voice'"):
        CremaD(root, labels="voice")
    (root / "VideoDemographics.csv").unlink()
    with pytest.raises(SerbenchError, match="no VideoDemographics.csv"):
        CremaD(root).load()


# --- RAVDESS -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def real_ravdess() -> Path:
    if not cf.RAVDESS_REAL.is_dir():
        pytest.skip(f"real RAVDESS copy not found at {cf.RAVDESS_REAL} (no ../shared/data)")
    return cf.RAVDESS_REAL


#: corpora.md §4: the clips missing from the local copy.
RAVDESS_MISSING = (
    "03-01-02-01-01-02-01", "03-01-02-01-02-02-05", "03-01-02-02-02-01-05",
    "03-01-03-01-02-01-20", "03-01-06-01-01-02-20", "03-01-08-01-02-02-01",
)
EMOBOX_TEST_ACTORS = (
    {"01", "11", "20", "21"}, {"04", "10", "12", "14"}, {"08", "09", "19", "23"},
    {"03", "05", "07", "24"}, {"02", "15", "16", "18"}, {"06", "13", "17", "22"},
)


def test_ravdess_real_copy(real_ravdess: Path) -> None:
    start = time.perf_counter()
    table = Ravdess(real_ravdess).load()
    assert time.perf_counter() - start < 1.0  # names only; no audio is opened
    missing_4_class = [m for m in RAVDESS_MISSING if m.split("-")[2] in {"01", "03", "04", "05"}]
    assert missing_4_class == ["03-01-03-01-02-01-20"]
    assert len(table) == 672 - len(missing_4_class)
    assert counts(table["emotion"]) == {"happy": 191, "sad": 192, "angry": 192, "neutral": 96}
    speakers = table.drop_duplicates("speaker")
    assert sorted(speakers["speaker"]) == [f"{a:02d}" for a in range(1, 25)]
    assert counts(speakers["gender"]) == {"M": 12, "F": 12}
    assert [set(speakers.loc[speakers["fold"] == k, "speaker"]) for k in range(1, 7)] == list(
        EMOBOX_TEST_ACTORS
    )
    assert table["path"].str.endswith(".flac").all()
    assert Ravdess.clients_per_speaker == 1


def test_ravdess_real_copy_eight_classes(real_ravdess: Path) -> None:
    table = Ravdess(real_ravdess, classes=8).load()
    assert len(table) == 1434
    assert not table["utt_id"].isin(RAVDESS_MISSING).any()
    assert set(table["emotion"]) == {
        "neutral", "calm", "happy", "sad", "angry", "fearful", "disgust", "surprised"
    }
    missing_male = sum(int(m[-2:]) % 2 for m in RAVDESS_MISSING)  # actors 01, 01, 05, 05
    assert counts(table["gender"]) == {"M": 720 - missing_male, "F": 720 - (6 - missing_male)}
    assert len(load_audio(table["path"].iloc[0])) / 16_000 == pytest.approx(2.39, abs=0.01)


def test_ravdess_small_tree(tmp_path: Path) -> None:
    """Both suffixes, the release's extra folder level, and non-speech files ignored."""
    root = cf.build_ravdess(tmp_path)
    table = Ravdess(root).load()
    check_contract(table, "ravdess")
    columns = ["speaker", "gender", "emotion", "fold", "intensity", "statement"]
    assert table.set_index("utt_id")[columns].to_dict("index") == {
        "03-01-01-01-01-01-01": {"speaker": "01", "gender": "M", "emotion": "neutral", "fold": 1,
                                 "intensity": 1, "statement": 1},
        "03-01-05-02-02-01-02": {"speaker": "02", "gender": "F", "emotion": "angry", "fold": 5,
                                 "intensity": 2, "statement": 2},
    }
    assert set(Ravdess(root, classes=8).load()["emotion"]) == {"neutral", "angry", "calm"}
    with pytest.raises(SerbenchError, match="must be 4 or 8, not 6"):
        Ravdess(root, classes=6)


# --- Manifest ------------------------------------------------------------------------------
MANIFEST_HEADER = ["Path", "Speaker", "Gender", "Emotion"]  # headers match case-insensitively


def manifest_rows(folder: Path, speakers: dict[str, str], clips: int = 2) -> list[list[str]]:
    """``clips`` placeholder clips per speaker under ``folder``/audio, listed by relative path."""
    rows = []
    for speaker, gender in speakers.items():
        for i in range(clips):
            cf.write_audio(folder / "audio" / speaker / f"{speaker}_{i}.wav")
            rows.append([f"audio/{speaker}/{speaker}_{i}.wav", speaker, gender, "happy"])
    return rows


def test_manifest_deals_gender_balanced_folds(tmp_path: Path) -> None:
    speakers = {"mb": "male", "fa": "F", "ma": "M", "fc": "Female", "mc": "m", "fb": "f"}
    csv = cf.write_csv(tmp_path / "my.csv", MANIFEST_HEADER, manifest_rows(tmp_path, speakers))
    table = Manifest(csv).load()
    check_contract(table, "manifest")
    assert table["path"].iloc[0] == str(tmp_path / "audio" / "fa" / "fa_0.wav")
    assert table["utt_id"].iloc[0] == "fa_0"
    fold = table.drop_duplicates("speaker").set_index("speaker")["fold"].to_dict()
    # Women then men, each sorted, dealt over 5 folds in one round-robin.
    assert fold == {"fa": 1, "fb": 2, "fc": 3, "ma": 4, "mb": 5, "mc": 1}
    assert counts(table.drop_duplicates("speaker")["gender"]) == {"F": 3, "M": 3}


def test_manifest_fewer_speakers_than_folds_and_given_folds(tmp_path: Path) -> None:
    rows = manifest_rows(tmp_path, {"a": "F", "b": "M"})
    csv = cf.write_csv(tmp_path / "two.csv", MANIFEST_HEADER, rows)
    assert counts(Manifest(csv).load()["fold"]) == {1: 2, 2: 2}
    given = cf.write_csv(tmp_path / "given.csv", [*MANIFEST_HEADER, "fold"],
                         [[*row, 7 if row[1] == "a" else 3] for row in rows])
    assert counts(Manifest(given).load()["fold"]) == {7: 2, 3: 2}
    split = cf.write_csv(tmp_path / "split.csv", [*MANIFEST_HEADER, "fold"],
                         [[*row, i] for i, row in enumerate(rows, 1)])
    with pytest.raises(SerbenchError, match="split.csv: speaker 'a' is in several folds"):
        Manifest(split).load()


def test_manifest_repeated_stems_get_unique_ids(tmp_path: Path) -> None:
    rows = [[f"{s}/x.wav", s, "F", "sad"] for s in ("s1", "s2")] + [["x-1.wav", "s3", "M", "sad"]]
    for path, *_ in rows:
        cf.write_audio(tmp_path / path)
    csv = cf.write_csv(tmp_path / "dup.csv", MANIFEST_HEADER, rows)
    assert sorted(Manifest(csv).load()["utt_id"]) == ["x-1", "x-2", "x-3"]


def test_manifest_errors_name_the_file(tmp_path: Path) -> None:
    rows = manifest_rows(tmp_path, {"a": "F", "b": "M"}, clips=1)
    no_emotion = cf.write_csv(tmp_path / "cols.csv", MANIFEST_HEADER[:3], [r[:3] for r in rows])
    with pytest.raises(SerbenchError, match=r"cols\.csv: missing column\(s\) emotion"):
        Manifest(no_emotion).load()
    bad_gender = cf.write_csv(
        tmp_path / "gender.csv", MANIFEST_HEADER, [rows[0], [*rows[1][:2], "x", "sad"]]
    )
    with pytest.raises(SerbenchError, match=r"gender\.csv: line 3: unknown gender 'x'"):
        Manifest(bad_gender).load()
    gone = cf.write_csv(
        tmp_path / "gone.csv", MANIFEST_HEADER, [*rows, ["audio/c/c_0.wav", "c", "F", "sad"]]
    )
    with pytest.raises(SerbenchError, match=r"gone\.csv: line 4: audio file .*c_0\.wav does not"):
        Manifest(gone).load()
    with pytest.raises(SerbenchError, match="is not a file"):
        Manifest(tmp_path)


# --- All loaders ---------------------------------------------------------------------------
@pytest.mark.parametrize("loader", [*LOADERS, Manifest])
def test_missing_root_is_a_one_line_error(loader: type, tmp_path: Path) -> None:
    with pytest.raises(SerbenchError, match="does not exist") as error:
        loader(tmp_path / "nowhere")
    assert "\n" not in str(error.value)


def _labels_without_audio(loader: type, base: Path) -> Path:
    """A root with labels/metadata where the corpus keeps them, but no audio at all."""
    if loader is Iemocap:
        root = cf.build_iemocap(base)
        for n in cf.IEMOCAP_CLIPS:
            for wav in (root / f"Session{n}" / "sentences" / "wav").rglob("*.wav"):
                wav.unlink()
        return root
    if loader is MspImprov:
        root = cf.build_msp_improv(base)
        for wav in root.rglob("*.wav"):
            wav.unlink()
        return root
    if loader is CremaD:
        root = base / "CREMA-D"
        cf.write_csv(root / "VideoDemographics.csv", ["ActorID", "Sex"], [[1001, "Male"]])
        return root
    if loader is Manifest:
        return cf.write_csv(base / "empty.csv", MANIFEST_HEADER, [])
    return base


@pytest.mark.parametrize("loader", [*LOADERS, Manifest])
def test_root_without_audio_is_a_one_line_error(loader: type, tmp_path: Path) -> None:
    with pytest.raises(SerbenchError, match="no .*(audio|clips)") as error:
        loader(_labels_without_audio(loader, tmp_path)).load()
    assert "\n" not in str(error.value)
    assert str(tmp_path) in str(error.value)
