"""The `asv` attack: speaker linkability scored as an EER with a trials-rebuilt speaker CI, its
attacker levels against an audio defense, the linkability null (shuffled speaker labels), and
the role-driven direction of its worst case."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from serbench import linkability as L
from serbench.attacks.asv import ASVAttack
from serbench.config import EvalConfig
from serbench.errors import SerbenchError
from serbench.protocol import load_corpus
from serbench.results import RunResult
from serbench.runner import run_eval
from serbench.scoring import TRIALS_CI, Role, pooled, worst_case

#: A handful of synth utterances: 10 speakers, 8 clips each; one training epoch for the SER.
SMALL = {"speakers": 10, "utterances_per_emotion": 2}
FAST = {"epochs": 1, "frames": 64}


def run(tmp_path: Path, name: str, defense: str = "none", **options: object) -> RunResult:
    return run_eval(EvalConfig(attack="asv", defense=defense,
                               dataset_options={**SMALL, **options}, attack_params=FAST,
                               defense_params={"alpha": 0.6} if defense == "mcadams" else {}),
                    out=tmp_path / name)


def trial_rows(seed: int = 0) -> pd.DataFrame:
    """Scored trials of 12 synthetic speakers as asv records them (well separated)."""
    rng = np.random.default_rng(seed)
    rows, embeddings = [], {}
    for s in range(12):
        centre = rng.standard_normal(16)
        for u in range(6):
            rows.append((f"s{s}-{u}", f"s{s}", "FM"[s % 2]))
            embeddings[f"s{s}-{u}"] = centre + 0.6 * rng.standard_normal(16)
    roles = L.assign_roles(pd.DataFrame(rows, columns=["utt_id", "speaker", "gender"]), seed=0)
    trials = L.make_trials(roles)
    scores = L.score_trials(roles, trials, embeddings)
    target = trials["target"].to_numpy(bool)
    return pd.DataFrame({"task": "speaker", "group": "ignorant", "speaker": trials["speaker"],
                         "enrolled": trials["model"], "gender": trials["gender"],
                         "y_true": target.astype(int),
                         "y_pred": (scores >= L.eer_threshold(target, scores)).astype(int),
                         "score": scores})


def test_trials_are_scored_as_an_eer_with_a_rebuilt_speaker_ci() -> None:
    rows = trial_rows()
    table = pooled(rows, seed=0).iloc[0]
    eer, _, _ = L.equal_error_rate(rows["y_true"].astype(bool), rows["score"])
    assert table["uar"] == pytest.approx(eer) and table["ci_method"] == TRIALS_CI
    assert table["ci_low"] <= eer <= table["ci_high"] and table["speakers"] == 12
    assert table["auc"] > 0.9  # the ROC's summary comes with it
    # The decision at the EER threshold balances the two errors: its UAR is about 1 - EER.
    assert table["acc"] > 0.8


def test_the_worst_linkability_is_the_lowest_eer_by_its_role() -> None:
    weak = trial_rows(0).assign(score=lambda f: f["score"] + np.random.default_rng(1).normal(
        0, 1, len(f)))
    cells = {("non-adaptive", "speaker@ignorant"): weak,
             ("adaptive", "speaker@lazy-informed"): trial_rows(0)}
    worst = worst_case(cells, Role.LINKABILITY)
    assert worst.mode == "adaptive"  # the lower EER, whatever the measure is called
    assert ASVAttack().role("speaker", "semi-informed") is Role.LINKABILITY
    assert ASVAttack().role("emotion", "clean-model") is Role.UTILITY
    assert ASVAttack().role("gender", "released") is Role.LEAKAGE


def test_undefended_run_reports_the_ignorant_eer_and_the_release_measures(
        tmp_path: Path) -> None:
    result = run(tmp_path, "none")
    [mode] = result.modes
    table = mode.pooled.set_index(mode.pooled["task"] + "@" + mode.pooled["group"])
    # The undefended entry meets every attacker level a defended one does: the semi-informed
    # LDA backend on the original shadow speakers as well as plain cosine.
    assert set(table.index) == {"emotion@", "emotion@clean-model", "gender@released",
                                "speaker@ignorant", "speaker@semi-informed"}
    assert table.loc["speaker@ignorant", "ci_method"] == TRIALS_CI
    assert table.loc["speaker@ignorant", "speakers"] == len(result.config["target_speakers"])
    # Nothing transforms the audio: the clean-trained model is the deployed one.
    assert table.loc["emotion@", "uar"] == table.loc["emotion@clean-model", "uar"]
    assert "EER" in (tmp_path / "none" / "report.md").read_text()


def test_an_audio_defense_gets_all_three_attacker_levels(tmp_path: Path) -> None:
    result = run(tmp_path, "mcadams", defense="mcadams")
    groups = {m.mode: set(m.pooled.loc[m.pooled["task"] == "speaker", "group"])
              for m in result.modes}
    assert groups == {"non-adaptive": {"ignorant"},
                      "adaptive": {"lazy-informed", "semi-informed"}}
    assert result.roles["speaker@semi-informed"] is Role.LINKABILITY


def test_shuffled_speaker_labels_put_the_eer_at_chance(tmp_path: Path) -> None:
    corpus = load_corpus("synth", None, {**SMALL, "shuffle_speakers": "true"}, seed=0)
    plain = load_corpus("synth", None, SMALL, seed=0)
    assert (corpus.table["speaker"] != plain.table["speaker"]).any()
    for gender in "FM":  # labels move within a gender only, each keeping its utterance count
        a, b = (t.table.loc[t.table["gender"] == gender, "speaker"] for t in (corpus, plain))
        assert sorted(a) == sorted(b)
    result = run(tmp_path, "shuffled", shuffle_speakers="true")
    pooled = result.modes[0].pooled
    levels = pooled[pooled["task"] == "speaker"]
    assert set(levels["group"]) == {"ignorant", "semi-informed"}
    for _, row in levels.iterrows():  # cosine, and LDA trained on shuffled shadow labels
        assert row["ci_low"] <= 0.5 <= row["ci_high"], row["group"]


def test_intercept_reports_the_intercepted_layers_eer_beside_gender(tmp_path: Path) -> None:
    params = {"scenarios": "worst", "attackers": "generic", "epochs": 1, "target_epochs": 1,
              "frames": 64}
    result = run_eval(EvalConfig(attack="intercept", dataset_options=SMALL,
                                 attack_params=params), out=tmp_path / "intercept")
    pooled = result.modes[0].pooled.set_index("task")
    assert result.roles["speaker@layer"] is Role.LINKABILITY
    assert pooled.loc["speaker", "ci_method"] == TRIALS_CI and "gender" in pooled.index
    assert 0 <= pooled.loc["speaker", "uar"] <= 1
    # Runs recorded before the measure existed re-run without it (committed entries verify).
    from serbench.attacks.intercept import InterceptAttack

    assert InterceptAttack.as_recorded({})["linkability"] is False


def test_an_entry_keeps_what_its_eer_and_ci_are_recomputed_from() -> None:
    from serbench.leaderboard.entry import decode_predictions, encode_predictions

    rows = trial_rows().assign(seed=0, fold=1)
    again = decode_predictions(encode_predictions(rows))
    a, b = pooled(rows, seed=0).iloc[0], pooled(again, seed=0).iloc[0]
    assert a["uar"] == pytest.approx(b["uar"], abs=1e-6)
    assert (a["ci_low"], a["ci_high"]) == pytest.approx((b["ci_low"], b["ci_high"]), abs=1e-3)
    assert b["ci_method"] == TRIALS_CI


def test_trial_records_name_each_speaker_once_and_older_entries_still_read() -> None:
    """A trial record stores its speakers as indices into ``names`` (synth's mcadams entry
    wrote 3.2 MiB of repeated names); records written before keep their per-trial lists and
    decode to the same rows; an index past the names is a one-line error."""
    from serbench.leaderboard.entry import decode_predictions, encode_predictions

    rows = trial_rows().assign(seed=0, fold=1)
    (record,) = encode_predictions(rows)
    assert {"speakers", "enrolled", "genders"}.isdisjoint(record)
    assert sorted(set(record["names"])) == record["names"]
    assert len(record["names"]) == len(set(rows["speaker"]) | set(rows["enrolled"]))
    decoded = decode_predictions([record])
    older = {k: v for k, v in record.items() if k not in
             ("names", "name_genders", "speaker_ids", "enrolled_ids")} | {
        "speakers": rows["speaker"].astype(str).tolist(),
        "enrolled": rows["enrolled"].astype(str).tolist(),
        "genders": rows["gender"].astype(str).tolist()}
    pd.testing.assert_frame_equal(decoded, decode_predictions([older]))
    assert (decoded["enrolled"].to_numpy() == rows["enrolled"].astype(str).to_numpy()).all()
    broken = record | {"enrolled_ids": [len(record["names"])] * len(record["enrolled_ids"])}
    with pytest.raises(SerbenchError, match="index past its"):
        decode_predictions([broken])
