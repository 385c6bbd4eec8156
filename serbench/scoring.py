"""Every statistic serbench reports, computed in one place from predictions (SPEC §6).

Attacks return predictions (``task``, ``group``, ``speaker``, ``y_true``, ``y_pred`` and, for
leakage, the attacker's ``score`` for class 1) and declare what each measure is
(:class:`Role`). This module turns them into per-fold metrics, pooled UAR and accuracy, chance
and majority levels, speaker-cluster bootstrap CIs, ROC AUC and TPR at low FPR, and the worst
case a headline reports. The terminal report, ``summary.json``, the analyses and the
leaderboard all call it; none computes a statistic itself.

Why speakers: gender is a property of the speaker, so the utterances (or updates) of one speaker
are not independent draws. The CI resamples speakers with all their rows; on a 6-speaker target
the utterance bootstrap was about 6x too narrow.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np
import pandas as pd

# LEVEL, the two-sided level of every CI, is defined with the EER's statistics, which
# scoring builds on (linkability imports nothing of scoring).
from serbench.linkability import LEVEL, bootstrap_eers, equal_error_rate

#: Bootstrap resamples of a CI (vectorised: a few milliseconds per measure).
RESAMPLES = 2000
#: False-positive rates at which the true-positive rate of a leakage attack is reported.
LOW_FPRS = (0.01, 0.10)
SPEAKER_CI = "speaker bootstrap"
TRIALS_CI = "speaker bootstrap, trials rebuilt"
UTTERANCE_CI = "utterance bootstrap"


class Role(StrEnum):
    """What a measure says about the defense, and so which direction is worse for it."""

    UTILITY = "utility"  #: clean emotion UAR of the deployed model
    LEAKAGE = "leakage"  #: the attacker's gender UAR: higher is worse
    ROBUST = "robust"  #: emotion UAR under an adversarial attack: lower is worse
    LINKABILITY = "linkability"  #: a speaker-verification EER: lower is worse (0.5: unlinkable)
    UNSCORED = "unscored"  #: reported, never scored (e.g. a randomised defense without EOT)

    @property
    def higher_is_worse(self) -> bool:
        """The direction of the measure for the defense: every worst case, Pareto front and
        stronger-mode pick reads it from the role, never from a measure's name."""
        return self is Role.LEAKAGE

    @property
    def against_chance(self) -> bool:
        """An attacker's measure, read against chance: a CI wholly on either side of chance is
        a signal (SPEC §6), the defense's side included."""
        return self in (Role.LEAKAGE, Role.LINKABILITY)


#: :func:`signal`'s verdicts: the CI lies wholly on the attacker's side of chance, or wholly on
#: the other (the attacker's sign is wrong; flipping it would leak).
LEAKS, MIS_SIGNED = "leaks", "signal present, mis-signed"


def signal(role: Role, ci: tuple[float, float], chance: float) -> str | None:
    """Whether a measure shows signal beyond chance, and on which side: :data:`LEAKS`,
    :data:`MIS_SIGNED`, or None (its CI holds chance, or the role is not read against it). A
    defense whose measures all sit at or below chance is not "at chance" if one lies wholly
    below it: its surface still carries the attribute."""
    if not role.against_chance or ci[0] <= chance <= ci[1]:
        return None
    above = ci[0] > chance
    return LEAKS if above == role.higher_is_worse else MIS_SIGNED


@dataclass(frozen=True)
class Measure:
    """One reported measure: a task and a group of predictions, with its declared role."""

    task: str
    group: str
    role: Role

    @property
    def name(self) -> str:
        return measure_name(self.task, self.group)

    @property
    def higher_is_worse(self) -> bool:
        return self.role.higher_is_worse


def measure_name(task: str, group: str) -> str:
    """``task@group``, or ``task`` for the ungrouped (clean) measure."""
    return f"{task}@{group}" if group else task


def uar(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted average recall over the classes present in ``y_true`` (scikit-learn's
    balanced accuracy, without its warnings for a one-class group: an analysis by emotion
    scores each emotion's rows alone)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]))


def accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """The fraction of right predictions (scikit-learn's ``accuracy_score`` without its input
    validation, which cost more than the bootstrap when a board of entries is loaded)."""
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def _quantiles(scores: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = np.nanquantile(scores, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def utterance_bootstrap(y_true: np.ndarray, y_pred: np.ndarray, *, resamples: int = 1000,
                        seed: int = 0, level: float = LEVEL) -> tuple[float, float]:
    """Percentile CI of the UAR resampling single predictions. Kept only to score entries made
    before predictions carried speakers (their stored CIs were computed this way); too narrow
    wherever predictions cluster by speaker."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    idx = np.random.default_rng(seed).integers(0, len(y_true), size=(resamples, len(y_true)))
    t, p = y_true[idx], y_pred[idx]
    recalls = []
    for c in np.unique(y_true):
        support = (t == c).sum(1)
        hits = ((t == c) & (p == c)).sum(1)
        recalls.append(np.where(support > 0, hits / np.maximum(support, 1), np.nan))
    return _quantiles(np.nanmean(np.stack(recalls), axis=0), level)


def speaker_bootstrap(y_true: np.ndarray, y_pred: np.ndarray, speakers: np.ndarray, *,
                      resamples: int = RESAMPLES, seed: int = 0,
                      level: float = LEVEL) -> tuple[float, float]:
    """Percentile CI of the UAR resampling speakers with all their rows (cluster bootstrap).

    Where every speaker holds one class (gender), speakers are resampled within their class,
    so each resample keeps the target's design (its numbers of female and male speakers)
    and UAR stays defined. Vectorised: a resample is a vector of speaker counts, and its
    per-class hits and supports are that vector times per-speaker tables.
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    spk_codes, spk = np.unique(np.asarray(speakers).astype(str), return_inverse=True)
    classes, cls = np.unique(y_true, return_inverse=True)
    n_spk, n_cls = len(spk_codes), len(classes)
    support = np.zeros((n_spk, n_cls))
    hits = np.zeros((n_spk, n_cls))
    np.add.at(support, (spk, cls), 1)
    np.add.at(hits, (spk, cls), (y_true == y_pred).astype(float))
    single = (support > 0).sum(1) == 1
    strata = (support.argmax(1) if single.all() else np.zeros(n_spk, dtype=int))
    rng = np.random.default_rng(seed)
    counts = np.zeros((resamples, n_spk))
    rows = np.arange(resamples)[:, None]
    for s in np.unique(strata):
        members = np.flatnonzero(strata == s)
        draws = members[rng.integers(0, len(members), size=(resamples, len(members)))]
        np.add.at(counts, (np.broadcast_to(rows, draws.shape), draws), 1)
    sup, hit = counts @ support, counts @ hits
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(sup > 0, hit / sup, np.nan)
        scores = np.nanmean(recall, axis=1)
    return _quantiles(scores, level)


def roc_summary(y_true: np.ndarray, score: np.ndarray) -> dict[str, float]:
    """ROC AUC and the TPR at each of :data:`LOW_FPRS` (the largest TPR whose FPR does not
    exceed it): averages hide high-confidence breaches (SPEC §6)."""
    from sklearn.metrics import roc_auc_score, roc_curve  # 1 s to import: not for every command

    fpr, tpr, _ = roc_curve(y_true, score)
    out = {"auc": float(roc_auc_score(y_true, score))}
    for target in LOW_FPRS:
        out[f"tpr_at_{target:g}_fpr"] = float(tpr[fpr <= target].max())
    return out


def _has_speakers(frame: pd.DataFrame) -> bool:
    return "speaker" in frame and frame["speaker"].notna().all() and (frame["speaker"] != "").all()


def _has_scores(frame: pd.DataFrame) -> bool:
    return "score" in frame and pd.to_numeric(frame["score"], errors="coerce").notna().all()


def is_trials(frame: pd.DataFrame) -> bool:
    """Whether the rows are speaker-verification trials (SPEC §6's linkability): each names
    the ``enrolled`` speaker it is scored against, ``y_true`` says same speaker, ``score`` is
    the verifier's score. Their measure is an EER, not a UAR."""
    return "enrolled" in frame and len(frame) > 0 and (frame["enrolled"].astype(str) != "").all()


def _trials(frame: pd.DataFrame) -> pd.DataFrame:
    """Trial rows in :mod:`serbench.linkability`'s columns."""
    return pd.DataFrame({"model": frame["enrolled"].astype(str).to_numpy(),
                         "speaker": frame["speaker"].astype(str).to_numpy(),
                         "gender": frame["gender"].to_numpy(),
                         "target": frame["y_true"].astype(bool).to_numpy()})


def value(frame: pd.DataFrame) -> float:
    """A measure's value (the ``uar`` of tables and entries): the UAR of its predictions, or
    the EER of verification trials (:func:`is_trials`; lower is more linkable)."""
    if is_trials(frame):
        return equal_error_rate(frame["y_true"].astype(bool).to_numpy(),
                                frame["score"].astype(float).to_numpy())[0]
    return uar(frame["y_true"].to_numpy(), frame["y_pred"].to_numpy())


def ci(frame: pd.DataFrame, seed: int, level: float = LEVEL,
       resamples: int = RESAMPLES) -> tuple[float, float, str]:
    """The CI of one measure's pooled value and the method used: over speakers when the rows
    name them (trials rebuilt from the drawn speakers for an EER), else (legacy entries only)
    over predictions."""
    if is_trials(frame):
        eers = bootstrap_eers(_trials(frame), frame["score"].astype(float).to_numpy(),
                              seed=seed, resamples=resamples)
        return (*_quantiles(eers, level), TRIALS_CI)
    y_true, y_pred = frame["y_true"].to_numpy(), frame["y_pred"].to_numpy()
    if _has_speakers(frame):
        return (*speaker_bootstrap(y_true, y_pred, frame["speaker"].to_numpy(), seed=seed,
                                   level=level, resamples=resamples), SPEAKER_CI)
    return (*utterance_bootstrap(y_true, y_pred, seed=seed, level=level), UTTERANCE_CI)


def pooled(predictions: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per (task, group): pooled UAR with its CI and CI method, accuracy, majority-class rate,
    chance UAR, row and speaker counts, and for binary scored measures AUC and TPR@FPR."""
    rows = []
    for (task, group), frame in predictions.groupby(["task", "group"], sort=False):
        y_true, y_pred = frame["y_true"].to_numpy(), frame["y_pred"].to_numpy()
        lo, hi, method = ci(frame, seed)
        row: dict[str, Any] = {
            "task": task, "group": group, "n": len(frame),
            "speakers": int(frame["speaker"].nunique()) if _has_speakers(frame) else None,
            "uar": value(frame), "ci_low": lo, "ci_high": hi, "ci_method": method,
            "acc": accuracy(y_true, y_pred),
            "majority": float(np.bincount(y_true).max() / len(y_true)),
            "chance_uar": 1.0 / len(np.unique(y_true))}
        if _has_scores(frame) and len(np.unique(y_true)) == 2:
            row |= roc_summary(y_true, frame["score"].astype(float).to_numpy())
        rows.append(row)
    return pd.DataFrame(rows)


def measure_metrics(predictions: pd.DataFrame) -> dict[str, float]:
    """``<measure>.uar`` and ``<measure>.acc`` of one fold's predictions, in the order the
    attack reported its measures.

    A measure whose fold holds one class only (a fold of one gender's speakers) gets no UAR
    here: it would be that class's recall, not a balanced score. Its rows still count in the
    pooled UAR."""
    metrics: dict[str, float] = {}
    for (task, group), rows in predictions.groupby(["task", "group"], sort=False):
        name = measure_name(task, group)
        y_true, y_pred = rows["y_true"].to_numpy(), rows["y_pred"].to_numpy()
        if len(np.unique(y_true)) > 1:
            metrics[f"{name}.uar"] = value(rows)
        metrics[f"{name}.acc"] = accuracy(y_true, y_pred)
    return metrics


def spread(per_fold: Iterable[dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "std", "folds"}}`` over the folds (and seeds) that define it
    (population std)."""
    frame = pd.DataFrame(list(per_fold))
    return {k: {"mean": float(frame[k].mean()), "std": float(frame[k].std(ddof=0)),
                "folds": int(frame[k].notna().sum())} for k in frame.columns}


@dataclass(frozen=True)
class Worst:
    """The worst case over several measures, with a CI that accounts for the choice."""

    mode: str
    measure: str
    uar: float
    ci_low: float
    ci_high: float
    level: float
    candidates: int


def worst_case(cells: dict[tuple[str, str], pd.DataFrame], role: Role,
               seed: int = 0) -> Worst | None:
    """The worst pooled UAR for the defense over ``cells`` ((mode, measure) -> predictions) of
    one ``role``, with a Bonferroni-widened CI: the maximum of k noisy measures is biased
    upwards, so its CI is taken at level 1 - (1 - LEVEL)/k. On a null corpus the headline's
    CI then still covers chance (SPEC §8)."""
    scored = {key: frame for key, frame in cells.items() if len(frame)}
    if not scored:
        return None
    values = {key: value(f) for key, f in scored.items()}
    pick = max if role.higher_is_worse else min
    key = pick(values, key=values.get)
    k = len(values)
    level = 1 - (1 - LEVEL) / k
    resamples = max(RESAMPLES, int(np.ceil(40 / (1 - level))))
    lo, hi, _ = ci(scored[key], seed, level=level, resamples=resamples)
    return Worst(key[0], key[1], values[key], lo, hi, level, k)


@dataclass(frozen=True)
class Difference:
    """UAR(a) - UAR(b) of two predictors on the same rows, with its paired CI."""

    diff: float
    ci_low: float
    ci_high: float
    level: float

    @property
    def a_exceeds_b(self) -> bool:
        """Whether a beats b beyond the CI (its lower end above zero)."""
        return self.ci_low > 0


def paired_difference(y_true: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray,
                      speakers: np.ndarray, *, resamples: int = RESAMPLES, seed: int = 0,
                      level: float = LEVEL) -> Difference:
    """UAR(a) - UAR(b) on the same rows, with a two-stage paired bootstrap CI: speakers are
    resampled (within their class where each holds one, as in :func:`speaker_bootstrap`),
    then each drawn speaker's rows, keeping every row's pair of outcomes (a right?, b right?).
    The second stage keeps a CI on a fold of one speaker per gender, where resampling speakers
    alone would always draw the same ones; on many speakers the first stage dominates."""
    y_true, a, b = np.asarray(y_true), np.asarray(pred_a), np.asarray(pred_b)
    spk_codes, spk = np.unique(np.asarray(speakers).astype(str), return_inverse=True)
    classes, cls = np.unique(y_true, return_inverse=True)
    n_spk, n_cls = len(spk_codes), len(classes)
    cell = 2 * (a == y_true) + (b == y_true)  # 0: both wrong, 1: b only, 2: a only, 3: both
    counts = np.zeros((n_spk, n_cls, 4))
    np.add.at(counts, (spk, cls, cell), 1)
    support = counts.sum(2)
    single = (support > 0).sum(1) == 1
    strata = support.argmax(1) if single.all() else np.zeros(n_spk, dtype=int)
    rng = np.random.default_rng(seed)
    draws = np.concatenate([members[rng.integers(0, len(members), (resamples, len(members)))]
                            for s in np.unique(strata)
                            if len(members := np.flatnonzero(strata == s))], axis=1)
    n = support[draws]  # (resamples, drawn speakers, classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = np.nan_to_num(counts[draws] / n[..., None], nan=0.25)
    cells = rng.multinomial(n.astype(np.int64), p).sum(1)  # (resamples, classes, 4)

    def scores(hits: np.ndarray, sup: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nanmean(np.where(sup > 0, hits / sup, np.nan), axis=-1)

    sup = cells.sum(2)
    diffs = scores(cells[..., 2] + cells[..., 3], sup) - scores(cells[..., 1] + cells[..., 3], sup)
    lo, hi = _quantiles(diffs, level)
    return Difference(uar(y_true, a) - uar(y_true, b), lo, hi, level)


def bound_violations(predictions: pd.DataFrame, seed: int = 0) -> list[dict[str, Any]]:
    """Where a measure beats the one meant to bound it, beyond a paired CI.

    Rows may name, in a ``bound`` column, the group whose UAR should be at least their own
    (the intercept attack's ``worst`` scenario for every other scenario). Per fold (and
    ``fold = "pooled"`` over all folds), each such group is compared with its bound on the
    same rows (:func:`paired_difference`), at a Bonferroni level over every comparison made,
    so a run of many folds and scenarios that are equal in truth raises no flag by chance.
    A fold of one class's speakers (a one-gender fold) is compared on that class's recall.
    Returns one record per violation: fold, task, group, bound, both UARs, the difference,
    its CI and level, and the number of classes compared."""
    if "bound" not in predictions or "fold" not in predictions:
        return []
    bounded = predictions[predictions["bound"].fillna("").astype(str) != ""]
    pairs = bounded[["task", "group", "bound"]].drop_duplicates().itertuples(index=False)
    checks = []
    for task, group, bound in pairs:
        rows = predictions[predictions["task"] == task]
        for fold, part in [*rows.groupby("fold"), ("pooled", rows)]:
            mine, ref = part[part["group"] == group], part[part["group"] == bound]
            if len(mine) and len(mine) == len(ref):
                checks.append((fold, task, group, bound, mine, ref))
    if not checks:
        return []
    level = 1 - (1 - LEVEL) / len(checks)
    resamples = max(RESAMPLES, int(np.ceil(40 / (1 - level))))
    out = []
    for fold, task, group, bound, mine, ref in checks:
        y_true = mine["y_true"].to_numpy()
        if not np.array_equal(y_true, ref["y_true"].to_numpy()):
            continue
        d = paired_difference(y_true, mine["y_pred"].to_numpy(), ref["y_pred"].to_numpy(),
                              mine["speaker"].to_numpy(), seed=seed, level=level,
                              resamples=resamples)
        if d.a_exceeds_b:
            bound_uar = uar(y_true, ref["y_pred"].to_numpy())
            out.append({"fold": fold if fold == "pooled" else int(fold), "task": task,
                        "group": group, "bound": bound, "uar": bound_uar + d.diff,
                        "bound_uar": bound_uar, "diff": d.diff, "ci_low": d.ci_low,
                        "ci_high": d.ci_high, "level": d.level,
                        "classes": int(len(np.unique(y_true)))})
    return out
