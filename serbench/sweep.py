"""Parameter sweeps: one run per value of a defense parameter plus the undefended baseline,
summarised as a utility-vs-leakage table (CSV) and plot (PNG)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pandas as pd
from matplotlib.figure import Figure

from serbench.io import save_figure
from serbench.progress import Reporter
from serbench.results import write_csv
from serbench.runner import EvalConfig, run_eval


def run_sweep(cfg: EvalConfig, key: str, values: list[str], out: Path,
              reporter: Reporter) -> pd.DataFrame:
    """Evaluate ``cfg`` with ``defense_params[key]`` set to each value, and without defense."""
    rows = []
    runs = [("baseline", dataclasses.replace(cfg, defense="none", defense_params={}))]
    runs += [(f"{key}={v}", dataclasses.replace(cfg, defense_params={**cfg.defense_params,
                                                                     key: v})) for v in values]
    for label, run_cfg in runs:
        reporter.log(f"sweep: {label}")
        result = run_eval(run_cfg, out / label.replace("/", "_"), reporter)
        rows.append({"setting": label, "defense": run_cfg.defense, **result.headline()})
    frame = pd.DataFrame(rows)
    write_csv(out / "sweep.csv", frame)
    plot_sweep(frame, out / "sweep.png")
    return frame


def plot_sweep(frame: pd.DataFrame, path: Path) -> None:
    """Emotion UAR against each leakage measure, one point per setting."""
    leak_cols = [c for c in frame.columns if c.startswith("gender") and c.endswith(".uar")]
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for col in leak_cols:
        ax.plot(frame[col], frame["emotion.uar"], "o-", label=col.removesuffix(".uar"))
        for x, y, text in zip(frame[col], frame["emotion.uar"], frame["setting"]):
            ax.annotate(text, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    ax.axvline(0.5, color="grey", ls=":", label="chance leakage")
    ax.set_xlabel("gender leakage (UAR, stronger attack mode)")
    ax.set_ylabel("emotion UAR")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
