"""Leakage broken down by a factor (layer, emotion, feature type, ...), as a CSV table and a PNG.

Attacks that offer analyses (SPEC §3.1's sweeps) save each fold's predictions with the
factor's columns; these functions turn all folds' rows into one table and one plot, so a
resumed or partial run always shows what its finished folds support.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import accuracy_score

from serbench.metrics import bootstrap_ci, uar
from serbench.results import write_csv


def leakage_table(predictions: pd.DataFrame, keys: Sequence[str], seed: int = 0) -> pd.DataFrame:
    """Per combination of ``keys``: UAR mean ± std over folds, pooled UAR with its 95% bootstrap
    CI, accuracy and chance, like the run's main report. Needs ``fold``, ``y_true``, ``y_pred``.
    Per-fold UARs of a fold holding one class only are that class's recall: read the pooled UAR.
    """
    rows = []
    for values, frame in predictions.groupby(list(keys), sort=False):
        y_true, y_pred = frame["y_true"].to_numpy(), frame["y_pred"].to_numpy()
        per_fold = [uar(f["y_true"].to_numpy(), f["y_pred"].to_numpy())
                    for _, f in frame.groupby("fold")]
        lo, hi = bootstrap_ci(y_true, y_pred, seed=seed)
        rows.append({**dict(zip(keys, values if isinstance(values, tuple) else (values,))),
                     "n": len(frame), "folds": len(per_fold), "uar_mean": float(np.mean(per_fold)),
                     "uar_std": float(np.std(per_fold)), "uar_pooled": uar(y_true, y_pred),
                     "ci_low": lo, "ci_high": hi, "acc": float(accuracy_score(y_true, y_pred)),
                     "chance_uar": 1.0 / len(np.unique(y_true))})
    return pd.DataFrame(rows)


def plot_leakage(table: pd.DataFrame, x: str, series: str, path: Path, *, title: str,
                 ordered: bool = False) -> None:
    """Pooled UAR with its 95% CI per ``x`` value, one marker series per ``series`` value;
    ``ordered`` x values (e.g. layer depth) are joined by lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = list(dict.fromkeys(table[x]))
    groups = list(dict.fromkeys(table[series]))
    fig, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(xs) + 2.5), 4.2))
    width = 0.6 / max(1, len(groups))
    for i, (name, frame) in enumerate(table.groupby(series, sort=False)):
        pos = np.array([xs.index(v) for v in frame[x]]) + (i - (len(groups) - 1) / 2) * width
        err = np.vstack([frame["uar_pooled"] - frame["ci_low"],
                         frame["ci_high"] - frame["uar_pooled"]])
        ax.errorbar(pos, frame["uar_pooled"], yerr=err, marker="o", capsize=3, label=str(name),
                    linestyle="-" if ordered else "none")
    ax.axhline(float(table["chance_uar"].max()), color="grey", linestyle="--", label="chance")
    labels = [str(v) for v in xs]
    tilt = len(labels) > 6 or max(map(len, labels)) > 12
    ax.set_xticks(range(len(xs)), labels, rotation=25 if tilt else 0,
                  ha="right" if tilt else "center")
    ax.set_xlabel(x)
    ax.set_ylabel("UAR (pooled, 95% CI)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_analysis(predictions: pd.DataFrame, keys: Sequence[str], x: str, series: str,
                   path: Path, *, title: str, ordered: bool = False, seed: int = 0,
                   plotted: str = "gender") -> pd.DataFrame:
    """``path``.csv (the table, every task: e.g. the target's emotion UAR beside the leakage)
    and ``path``.png (the plot of task ``plotted``); returns the table."""
    table = leakage_table(predictions, ["task", *keys], seed)
    write_csv(path.with_suffix(".csv"), table)
    plot_leakage(table[table["task"] == plotted], x, series, path.with_suffix(".png"),
                 title=title, ordered=ordered)
    return table
