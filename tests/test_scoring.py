"""The one scoring path (SPEC §6): speaker-level CIs, ROC statistics, per-fold rules, worst case."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import balanced_accuracy_score, roc_auc_score, roc_curve

from serbench.scoring import Role, measure_metrics, pooled, speaker_bootstrap, uar, \
    utterance_bootstrap, worst_case


def _gender_rows(speakers: int = 6, per_speaker: int = 20, wrong: int = -1) -> pd.DataFrame:
    """Half female, half male speakers; every prediction right except speaker ``wrong``'s."""
    rows = []
    for s in range(speakers):
        gender = s % 2
        pred = 1 - gender if s == wrong else gender
        rows.append(pd.DataFrame({"task": "gender", "group": "n=1", "speaker": f"spk{s}",
                                  "y_true": gender, "y_pred": [pred] * per_speaker}))
    return pd.concat(rows, ignore_index=True)


def test_speaker_ci_is_wider_than_utterance_ci_and_covers_leaving_the_speaker_out() -> None:
    frame = _gender_rows(wrong=0)
    y_true, y_pred = frame["y_true"].to_numpy(), frame["y_pred"].to_numpy()
    s_lo, s_hi = speaker_bootstrap(y_true, y_pred, frame["speaker"].to_numpy(), seed=0)
    u_lo, u_hi = utterance_bootstrap(y_true, y_pred, seed=0)
    assert s_hi - s_lo > 2 * (u_hi - u_lo)
    # The spread of the UAR with and without that speaker lies inside the speaker-level CI.
    kept = frame[frame["speaker"] != "spk0"]
    spread = sorted([uar(y_true, y_pred), uar(kept["y_true"], kept["y_pred"])])
    assert s_lo <= spread[0] and spread[1] <= s_hi
    # Same seed, same CI; another seed, another draw.
    assert speaker_bootstrap(y_true, y_pred, frame["speaker"].to_numpy(), seed=0) == (s_lo, s_hi)


def test_pooled_reports_speaker_counts_and_roc_statistics_as_sklearn() -> None:
    rng = np.random.default_rng(1)
    frame = _gender_rows(speakers=10, per_speaker=30, wrong=3)
    frame["score"] = np.clip(frame["y_true"] * 0.3 + rng.random(len(frame)) * 0.7, 0, 1)
    row = pooled(frame, seed=0).iloc[0]
    assert row["speakers"] == 10 and row["ci_method"] == "speaker bootstrap"
    y, score = frame["y_true"].to_numpy(), frame["score"].to_numpy()
    assert row["auc"] == roc_auc_score(y, score)
    fpr, tpr, _ = roc_curve(y, score)
    assert row["tpr_at_0.1_fpr"] == tpr[fpr <= 0.1].max()
    assert row["tpr_at_0.01_fpr"] == tpr[fpr <= 0.01].max()


def test_a_one_gender_fold_gets_no_per_fold_uar() -> None:
    frame = _gender_rows(speakers=2)
    one_gender = frame[frame["y_true"] == 1]
    assert "gender@n=1.uar" not in measure_metrics(one_gender)
    assert measure_metrics(frame)["gender@n=1.uar"] == 1.0


def test_worst_case_ci_is_widened_for_the_number_of_measures() -> None:
    rng = np.random.default_rng(0)
    cells = {}
    for k in range(8):  # a null: random guesses about 12 speakers
        frame = _gender_rows(speakers=12, per_speaker=10)
        frame["y_pred"] = rng.integers(0, 2, len(frame))
        cells[("non-adaptive", f"gender@s{k}")] = frame
    worst = worst_case(cells, Role.LEAKAGE, seed=0)
    best_single = max(uar(f["y_true"], f["y_pred"]) for f in cells.values())
    assert worst.uar == best_single and worst.candidates == 8
    plain = speaker_bootstrap(cells[(worst.mode, worst.measure)]["y_true"].to_numpy(),
                              cells[(worst.mode, worst.measure)]["y_pred"].to_numpy(),
                              cells[(worst.mode, worst.measure)]["speaker"].to_numpy())
    assert worst.ci_low <= plain[0] and worst.ci_high >= plain[1]
    assert worst.ci_low <= 0.5 <= worst.ci_high


def test_uar_is_scikit_learns_balanced_accuracy() -> None:
    rng = np.random.default_rng(3)
    for _ in range(20):
        y_true, y_pred = rng.integers(0, 4, 50), rng.integers(0, 5, 50)
        assert uar(y_true, y_pred) == balanced_accuracy_score(y_true, y_pred)


def test_a_ci_wholly_on_either_side_of_chance_is_a_signal_and_says_which_side() -> None:
    """Issue 28: a leakage measure below chance beyond its CI still carries the attribute (its
    sign is wrong); linkability's EER is read the other way round; utility is not read against
    chance at all."""
    from serbench.scoring import LEAKS, MIS_SIGNED, Role, signal

    assert signal(Role.LEAKAGE, (0.31, 0.46), 0.5) == MIS_SIGNED
    assert signal(Role.LEAKAGE, (0.55, 0.70), 0.5) == LEAKS
    assert signal(Role.LEAKAGE, (0.45, 0.55), 0.5) is None
    assert signal(Role.LINKABILITY, (0.10, 0.20), 0.5) == LEAKS
    assert signal(Role.LINKABILITY, (0.55, 0.60), 0.5) == MIS_SIGNED
    assert signal(Role.UTILITY, (0.10, 0.20), 0.25) is None
