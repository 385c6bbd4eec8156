"""Leakage broken down by a factor (layer, emotion, feature type, ...), as a CSV table and a PNG.

Attacks that offer analyses (SPEC §3.1's sweeps) save each fold's predictions with the
factor's columns; these functions turn all folds' rows into one table and one plot, so a
resumed or partial run always shows what its finished folds support.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from serbench.io import save_figure
from serbench.scoring import measure_metrics, pooled, spread
from serbench.results import write_csv


def leakage_table(predictions: pd.DataFrame, keys: Sequence[str], seed: int = 0) -> pd.DataFrame:
    """Per combination of ``keys``: :func:`serbench.scoring.pooled`'s statistics (pooled UAR,
    speaker-level CI, AUC, ...) and the UAR mean ± std over the folds that hold both classes,
    like the run's main report. Needs ``fold``, ``y_true``, ``y_pred`` (and ``speaker``)."""
    rows = []
    for values, frame in predictions.groupby(list(keys), sort=False):
        values = values if isinstance(values, tuple) else (values,)
        stats = pooled(frame.assign(task="", group=""), seed).iloc[0].to_dict()
        per_fold = spread(measure_metrics(f.assign(task="", group="")) for _, f in
                          frame.groupby("fold")).get(".uar", {"mean": np.nan, "std": np.nan,
                                                              "folds": 0})
        rows.append({**dict(zip(keys, values)), "n": stats["n"], "speakers": stats["speakers"],
                     "folds": per_fold["folds"], "uar_mean": per_fold["mean"],
                     "uar_std": per_fold["std"], "uar_pooled": stats["uar"],
                     "ci_low": stats["ci_low"], "ci_high": stats["ci_high"],
                     "acc": stats["acc"], "chance_uar": stats["chance_uar"],
                     **{k: stats[k] for k in ("auc", "tpr_at_0.01_fpr", "tpr_at_0.1_fpr")
                        if k in stats}})
    return pd.DataFrame(rows)


def plot_leakage(table: pd.DataFrame, x: str, series: str, path: Path, *, title: str,
                 ordered: bool = False) -> None:
    """Pooled UAR with its 95% CI per ``x`` value, one marker series per ``series`` value;
    ``ordered`` x values (e.g. layer depth) are joined by lines."""
    xs = list(dict.fromkeys(table[x]))
    groups = list(dict.fromkeys(table[series]))
    fig = Figure(figsize=(max(5.0, 0.9 * len(xs) + 2.5), 4.2))
    ax = fig.subplots()
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
    ax.set_ylabel("UAR (pooled, 95% CI over speakers)")
    ax.set_title(title)
    ax.legend(fontsize="small")
    fig.tight_layout()
    save_figure(fig, path)


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


class AnalysisView(NamedTuple):
    """How one analysis an attack offers reads its saved rows: which rows (their ``analysis``
    column), the factor, the plot's title, and whether the factor is ordered (layer depth)."""

    rows: str
    factor: str
    title: str
    ordered: bool = False


def write_analyses(root: Path, fold: int, rows: pd.DataFrame, views: dict[str, AnalysisView],
                   seed: int) -> None:
    """Save one fold's analysis rows under ``root``, then write every view's table and plot
    over the folds saved so far (so the last fold leaves them complete, and a resumed run
    too). A view whose factor the rows lack (IEMOCAP's "utterances" elsewhere) is skipped."""
    write_csv(root / "folds" / f"fold-{fold}.csv", rows)
    saved = pd.concat([pd.read_csv(p, keep_default_na=False)
                       for p in sorted((root / "folds").glob("fold-*.csv"))], ignore_index=True)
    for name, view in views.items():
        if view.factor in saved:
            write_analysis(saved[saved["analysis"] == view.rows], [view.factor, "group"],
                           view.factor, "group", root / name, title=view.title,
                           ordered=view.ordered, seed=seed)
