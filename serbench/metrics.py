"""Metrics and statistics (SPEC §6): UAR and accuracy, mean ± std over folds, 95% bootstrap CI
on pooled predictions, and the chance levels a reader compares against."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from serbench.errors import SerbenchError

#: The standard class names in serbench's canonical order: the 4-class map first, so a
#: standard class has the same code on every corpus (and cross-corpus shadow data lines up).
EMOTION_ORDER = ("neutral", "happy", "sad", "angry", "calm", "fearful", "disgust", "surprised")


def emotion_classes(emotions: Iterable[str]) -> tuple[str, ...]:
    """The classes of a corpus, whatever strings its rows hold: the standard names present in
    :data:`EMOTION_ORDER`'s order, then any other names sorted. The order depends only on the
    set of names, never on row order, so a class's code is the same in every run."""
    present = set(emotions)
    standard = tuple(e for e in EMOTION_ORDER if e in present)
    return standard + tuple(sorted(present - set(EMOTION_ORDER)))


def emotion_labels(emotions: pd.Series, classes: Sequence[str], *,
                   deal_others: bool = False) -> np.ndarray:
    """Integer codes of ``emotions`` in ``classes``.

    A name outside ``classes`` is an error naming it, unless ``deal_others``: then a generic
    attacker's shadow data with its own label set (another corpus) still trains a model with
    the target's ``len(classes)`` outputs. Shared names keep the target's code; the others,
    sorted, are dealt round robin over the codes left free (over all codes if none is free).
    Which output a foreign class takes is arbitrary; the attacker needs the training dynamics,
    not the meaning of the labels.
    """
    codes = {c: i for i, c in enumerate(classes)}
    missing = sorted(set(emotions) - set(codes))
    if missing and not deal_others:
        raise SerbenchError(f"emotion class(es) {', '.join(map(repr, missing))} not among the "
                            f"target's classes {', '.join(classes)}: predicting emotion on both "
                            f"sides (the application-aware attacker) needs shared classes; align "
                            f"the target's with --dataset-option map=OLD:NEW or classes=A,B,... "
                            f"or attack with generic attackers only")
    free = [i for c, i in codes.items() if c not in set(emotions)] or list(codes.values())
    codes |= {name: free[k % len(free)] for k, name in enumerate(missing)}
    return emotions.map(codes).to_numpy(dtype=np.int64)


def uar(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Unweighted average recall over the classes present in ``y_true``."""
    return float(balanced_accuracy_score(y_true, y_pred))


def classification_metrics(task: str, y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    return {f"{task}.uar": uar(y_true, y_pred), f"{task}.acc": float(accuracy_score(y_true, y_pred))}


def bootstrap_ci(y_true: np.ndarray, y_pred: np.ndarray, *, resamples: int = 1000,
                 seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the UAR over pooled predictions (vectorised)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    idx = np.random.default_rng(seed).integers(0, len(y_true), size=(resamples, len(y_true)))
    t, p = y_true[idx], y_pred[idx]
    recalls = []
    for c in np.unique(y_true):
        support = (t == c).sum(1)
        hits = ((t == c) & (p == c)).sum(1)
        recalls.append(np.where(support > 0, hits / np.maximum(support, 1), np.nan))
    scores = np.nanmean(np.stack(recalls), axis=0)
    lo, hi = np.quantile(scores, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def summarize(fold_metrics: Sequence[dict[str, float]]) -> dict[str, dict[str, float]]:
    """``{metric: {"mean", "std"}}`` over folds (population std, 0 for a single fold)."""
    frame = pd.DataFrame(list(fold_metrics))
    return {k: {"mean": float(frame[k].mean()), "std": float(frame[k].std(ddof=0))}
            for k in frame.columns}


def pooled_summary(predictions: pd.DataFrame, seed: int = 0) -> pd.DataFrame:
    """Per (task, group): pooled UAR, its 95% CI, accuracy, majority-class rate and chance UAR."""
    rows = []
    for (task, group), frame in predictions.groupby(["task", "group"], sort=False):
        y_true, y_pred = frame["y_true"].to_numpy(), frame["y_pred"].to_numpy()
        lo, hi = bootstrap_ci(y_true, y_pred, seed=seed)
        rows.append({"task": task, "group": group, "n": len(frame), "uar": uar(y_true, y_pred),
                     "ci_low": lo, "ci_high": hi, "acc": float(accuracy_score(y_true, y_pred)),
                     "majority": float(np.bincount(y_true).max() / len(y_true)),
                     "chance_uar": 1.0 / len(np.unique(y_true))})
    return pd.DataFrame(rows)
