"""Metrics and statistics (SPEC §6): UAR and accuracy, mean ± std over folds, 95% bootstrap CI
on pooled predictions, and the chance levels a reader compares against."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score, balanced_accuracy_score

from serbench.errors import SerbenchError

#: Canonical class order: the 4-class map first, so 4-class codes are the same on every corpus.
EMOTION_ORDER = ("neutral", "happy", "sad", "angry", "calm", "fearful", "disgust", "surprised")


def emotion_classes(emotions: Iterable[str]) -> tuple[str, ...]:
    present = set(emotions)
    unknown = present - set(EMOTION_ORDER)
    if unknown:
        raise SerbenchError(f"unknown emotion label(s) {sorted(unknown)}; "
                            f"valid: {', '.join(EMOTION_ORDER)}")
    return tuple(e for e in EMOTION_ORDER if e in present)


def emotion_labels(emotions: pd.Series, classes: Sequence[str]) -> np.ndarray:
    codes = {c: i for i, c in enumerate(classes)}
    missing = set(emotions) - set(codes)
    if missing:
        raise SerbenchError(f"emotion(s) {sorted(missing)} not among the target's classes "
                            f"{', '.join(classes)}")
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
