"""A user's own corpus as it is (issue 12): any label set, classes= and map= for every corpus,
the real-audio null (permute_gender, SPEC §8), and every attack surface on seven classes."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

import corpus_fixtures as cf
from serbench.errors import SerbenchError
from serbench.metrics import emotion_classes, emotion_labels
from serbench.protocol import class_counts, gender_permutation, load_corpus, permute_gender
from serbench.runner import EvalConfig, run_eval
from test_cli import assert_one_line_error, serbench

#: The smallest configurations that still run every step (one fold, few rounds/epochs).
TINY = {
    "fedavg": {"rounds": 5, "epochs": 2, "averaging": "1,all"},
    "intercept": {"frames": 30, "target_epochs": 2, "epochs": 2, "scenarios": "worst,s1"},
    "pgd": {"frames": 30, "target_epochs": 2, "steps": 2},
}
#: A tiny built-in corpus whose classes (neutral, happy, sad, angry) differ from the manifest's.
TINY_SYNTH = {"speakers": "10", "utterances_per_emotion": "2"}


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Ten speakers with the seven labels of a German corpus, two placeholder clips each."""
    return cf.build_manifest(tmp_path_factory.mktemp("emodb"))


# --- labels --------------------------------------------------------------------------------
def test_any_label_set_in_a_documented_order() -> None:
    """Standard names in serbench's order, then the rest sorted, whatever the row order."""
    expected = ("neutral", "happy", "sad", "angry", "disgust", "boredom", "fear")
    assert emotion_classes(cf.EMODB_LABELS) == expected
    assert emotion_classes(reversed(cf.EMODB_LABELS)) == expected
    assert emotion_classes(["b", "a", "b"]) == ("a", "b")


def test_foreign_labels_are_an_error_or_dealt_onto_free_codes() -> None:
    target = ("neutral", "happy", "sad", "angry")
    shadow = pd.Series(["neutral", "fear", "boredom", "fear", "neutral"])
    with pytest.raises(SerbenchError, match="'boredom', 'fear' not among the target's classes"):
        emotion_labels(shadow, target)
    # neutral keeps its code; boredom and fear (sorted) take the free codes 1 and 2.
    assert emotion_labels(shadow, target, deal_others=True).tolist() == [0, 2, 1, 2, 0]
    crowded = pd.Series(["neutral", "happy", "sad", "angry", "x", "y", "z", "w", "v"])
    codes = emotion_labels(crowded, target, deal_others=True)  # no free code: all four reused
    assert codes[:4].tolist() == [0, 1, 2, 3] and set(codes[4:]) <= {0, 1, 2, 3}


def test_a_manifest_keeps_its_own_labels(manifest: Path) -> None:
    data = load_corpus("manifest", manifest)
    assert class_counts(data.table) == {c: 20 for c in emotion_classes(cf.EMODB_LABELS)}


def test_classes_and_map_select_and_rename(manifest: Path) -> None:
    kept = load_corpus("manifest", manifest, {"classes": "angry,happy,neutral,sad"})
    assert class_counts(kept.table) == {"neutral": 20, "happy": 20, "sad": 20, "angry": 20}
    mapped = load_corpus("manifest", manifest, {"map": "fear:fearful,boredom:neutral"})
    assert class_counts(mapped.table) == {"neutral": 40, "happy": 20, "sad": 20, "angry": 20,
                                          "fearful": 20, "disgust": 20}
    both = load_corpus("manifest", manifest, {"map": "boredom:neutral", "classes": "neutral,sad"})
    assert class_counts(both.table) == {"neutral": 40, "sad": 20}
    assert len(both.table) == 60 and both.table["utt_id"].is_monotonic_increasing


def test_classes_on_a_standard_corpus_load_the_classes_its_default_drops(ravdess_root) -> None:
    full = class_counts(load_corpus("ravdess", ravdess_root, {"classes": "8"}).table)
    assert list(class_counts(load_corpus("ravdess", ravdess_root).table)) == [
        "neutral", "happy", "sad", "angry"]  # the 4-class default is unchanged
    picked = class_counts(load_corpus("ravdess", ravdess_root, {"classes": "calm,neutral"}).table)
    assert picked == {"neutral": full["neutral"], "calm": full["calm"]}


@pytest.mark.parametrize("options, fragments", [
    ({"classes": "angry,joy,sad"}, ["classes=", "'joy'", "its classes: neutral"]),
    ({"map": "fear:fearful,rage:angry"}, ["map=", "'rage'"]),
    ({"map": "boredom:neutral", "classes": "boredom,sad"}, ["'boredom'", "after map="]),
    ({"classes": "angry"}, ["1 emotion class", "'angry'", "at least two"]),
    ({"map": "fear"}, ["OLD:NEW"]),
    ({"classes": "angry,,sad"}, ["empty name"]),
    ({"permute_gender": "maybe"}, ["permute_gender", "'maybe'"]),
    ({"clases": "angry,sad"}, ["no option 'clases'", "classes, map, permute_gender"]),
])
def test_label_option_errors(manifest: Path, options: dict, fragments: list[str]) -> None:
    with pytest.raises(SerbenchError) as err:
        load_corpus("manifest", manifest, options)
    message = str(err.value)
    assert "\n" not in message and all(f in message for f in fragments), message


def test_a_class_rarer_than_the_folds_is_named(tmp_path: Path) -> None:
    """Ten speakers in five folds; 'fear' has one clip per speaker of three speakers only."""
    csv = cf.build_manifest(tmp_path, labels=("angry", "sad"), clips=1)
    rows = [f"spk0{s}/angry_0.wav,spk0{s},female,fear" for s in (0, 2, 4)]
    csv.write_text(csv.read_text() + "\n".join(rows) + "\n")
    with pytest.raises(SerbenchError, match=r"'fear' \(3 utterances\) fewer than its 5 folds"):
        load_corpus("manifest", csv)
    assert_one_line_error(serbench("eval", "--attack", "fedavg", "--dataset", "manifest",
                                   "--data-root", str(csv)), "'fear'", "5 folds")
    assert "fear" not in class_counts(load_corpus("manifest", csv, {"classes": "angry,sad"}).table)


def test_one_class_corpus_is_a_one_line_error(tmp_path: Path) -> None:
    csv = cf.build_manifest(tmp_path, labels=("angry",), speakers=4, clips=1)
    assert_one_line_error(serbench("eval", "--attack", "fedavg", "--dataset", "manifest",
                                   "--data-root", str(csv)), "1 emotion class", "'angry'")


# --- the real-audio null -------------------------------------------------------------------
def speaker_table(women: int, men: int, folds: int) -> pd.DataFrame:
    """Two utterances per speaker, speakers dealt over the folds by gender in turn."""
    genders = ["F"] * women + ["M"] * men
    rows = [{"utt_id": f"s{i:02d}_{k}", "path": f"/audio/s{i:02d}_{k}.wav", "speaker": f"s{i:02d}",
             "gender": g, "emotion": "angry", "fold": (i if g == "F" else i - women) % folds + 1}
            for i, g in enumerate(genders) for k in range(2)]
    return pd.DataFrame(rows)


def per_speaker(table: pd.DataFrame) -> pd.DataFrame:
    return table.drop_duplicates("speaker").set_index("speaker")


def test_permute_gender_half_agree_balanced_and_seeded() -> None:
    table = speaker_table(12, 12, folds=6)  # RAVDESS's shape: 2 women and 2 men per fold
    permuted = permute_gender(table, seed=0)
    spk = per_speaker(permuted)
    assert (spk["gender"] == spk["voice_gender"]).sum() == 12  # exactly half agree
    for _, fold in spk.groupby("fold"):  # each fold keeps its labels' counts, and half agree
        assert (fold["gender"] == "F").sum() == 2 and (fold["gender"] == fold["voice_gender"]).sum() == 2
    assert permuted[["utt_id", "path", "speaker", "emotion", "fold"]].equals(
        table[["utt_id", "path", "speaker", "emotion", "fold"]])  # the audio is untouched
    assert (permuted["voice_gender"] == table["gender"]).all()
    assert permute_gender(table, seed=0).equals(permuted)  # deterministic
    others = {tuple(permute_gender(table, seed=s)["gender"]) for s in range(1, 6)}
    assert len(others | {tuple(permuted["gender"])}) > 1  # and the seed matters


def test_permute_gender_with_unequal_genders_keeps_label_counts() -> None:
    """6 women, 4 men: round(6 × 4 / 10) = 2 of each swap, so label and voice are (as near as
    whole speakers allow) independent: P(label F | voice F) = 4/6, P(label F | voice M) = 2/4."""
    spk = per_speaker(permute_gender(speaker_table(6, 4, folds=5), seed=3))
    assert (spk["gender"] == "F").sum() == 6
    assert ((spk["voice_gender"] == "F") & (spk["gender"] == "M")).sum() == 2


def test_permute_gender_through_any_corpus_is_recorded(manifest: Path) -> None:
    first = load_corpus("manifest", manifest, {"permute_gender": "true"}, seed=1).table
    again = load_corpus("manifest", manifest, {"permute_gender": "true"}, seed=1).table
    assert first.equals(again)
    record = gender_permutation(first)  # 5 women, 5 men: round(2.5) = 3 of each swap
    assert record["speakers"] == 10 and len(record["relabelled"]) == 10 - record["agree"] == 6
    assert all(voice != label for voice, label in record["relabelled"].values())
    assert gender_permutation(load_corpus("manifest", manifest).table) is None


# --- end to end ----------------------------------------------------------------------------
@pytest.mark.parametrize("attack", ["fedavg", "intercept", "pgd"])
def test_every_surface_runs_on_seven_classes(manifest: Path, attack: str, tmp_path: Path) -> None:
    cfg = EvalConfig(attack=attack, dataset="manifest", data_root=str(manifest), folds=[1],
                     attack_params=TINY[attack])
    run_eval(cfg, tmp_path / "run")
    preds = pd.read_csv(tmp_path / "run" / "predictions.csv", keep_default_na=False)
    assert preds.loc[preds["task"] == "emotion", "y_true"].nunique() == 7
    assert preds["task"].eq("gender" if attack != "pgd" else "emotion").any()
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert set(config["class_counts"]["target"]) == set(cf.EMODB_LABELS)


def test_class_counts_and_permutation_in_config_json(manifest: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    proc = serbench("eval", "--attack", "fedavg", "--dataset", "manifest", "--data-root",
                    str(manifest), "--dataset-option", "map=boredom:neutral,fear:fearful",
                    "--dataset-option", "classes=neutral,fearful,angry", "--dataset-option",
                    "permute_gender=true", "--seed", "2", "--folds", "1",
                    *[f"--attack-param={k}={v}" for k, v in TINY["fedavg"].items()],
                    "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    config = json.loads((out / "config.json").read_text())
    counts = config["class_counts"]
    total = {c: counts["target"][c] + counts["shadow"][c] for c in counts["target"]}
    assert total == {"neutral": 40, "angry": 20, "fearful": 20}
    permutation = config["gender_permutation"]
    assert permutation["speakers"] == 10 and permutation["agree"] == 4
    expected = gender_permutation(load_corpus("manifest", manifest, {"permute_gender": "true"},
                                              seed=2).table)
    assert permutation == expected  # seeded by the run's seed


def test_cross_corpus_shadow_with_other_labels(manifest: Path, tmp_path: Path) -> None:
    """The manifest's seven classes as shadow data for a four-class target: the generic
    intercept attacker needs no labels in common; the application-aware one says which
    classes differ."""
    common = ["eval", "--attack", "intercept", "--dataset-option", "speakers=10",
              "--dataset-option", "utterances_per_emotion=2", "--shadow", "manifest",
              "--shadow-root", str(manifest), "--folds", "1",
              *[f"--attack-param={k}={v}" for k, v in TINY["intercept"].items()
                if k != "scenarios"], "--attack-param", "scenarios=s1"]
    proc = serbench(*common, "--attack-param", "attackers=generic", "--out", str(tmp_path / "a"))
    assert proc.returncode == 0, proc.stderr
    assert_one_line_error(serbench(*common, "--attack-param", "attackers=aware",
                                   "--out", str(tmp_path / "b")),
                          "'boredom', 'disgust', 'fear'", "application-aware")


def test_fl_attack_with_a_shadow_corpus_of_other_labels(manifest: Path, tmp_path: Path) -> None:
    cfg = EvalConfig(attack="fedavg", dataset_options=TINY_SYNTH, shadow="manifest",
                     shadow_root=[str(manifest)], folds=[1], attack_params=TINY["fedavg"])
    run_eval(cfg, tmp_path / "run")
    assert (tmp_path / "run" / "predictions.csv").is_file()
