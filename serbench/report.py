"""The terminal report: per-fold rows, mean ± std, pooled UAR with its 95% CI, chance levels."""

from __future__ import annotations

import pandas as pd
from rich.console import Console
from rich.table import Table

from serbench.runner import ModeResult, RunResult


def _metric_columns(mode: ModeResult) -> list[str]:
    return list(next(iter(mode.folds.values())).metrics)


def _label(metric: str) -> str:
    task, _, stat = metric.rpartition(".")
    return f"{task.replace('@', ' ')} {stat.upper()}"


def mode_table(mode: ModeResult, title: str) -> Table:
    """Metrics as rows, folds as columns, so the table stays narrow whatever the attack."""
    table = Table(title=title, title_justify="left", header_style="bold")
    table.add_column("metric", no_wrap=True)
    for fold in mode.folds:
        table.add_column(f"fold {fold}", justify="right")
    for name in ("mean±std", "95% CI", "chance"):
        table.add_column(name, justify="right")
    pooled = {(r.task if not r.group else f"{r.task}@{r.group}"): r
              for r in mode.pooled.itertuples()}
    for metric in _metric_columns(mode):
        task, _, stat = metric.rpartition(".")
        row = pooled.get(task)
        ci = f"{row.ci_low:.2f}–{row.ci_high:.2f}" if row is not None and stat == "uar" else ""
        chance = "" if row is None else (f"{row.chance_uar:.2f}" if stat == "uar"
                                         else f"{row.majority:.2f}*")
        summary = mode.summary[metric]
        table.add_row(_label(metric), *(f"{r.metrics[metric]:.2f}" for r in mode.folds.values()),
                      f"{summary['mean']:.3f}±{summary['std']:.3f}", ci, chance,
                      style="bold" if stat == "uar" else "dim")
    return table


def print_report(result: RunResult, console: Console) -> None:
    cfg = result.config
    console.print(f"[bold]{cfg['attack']}[/] vs [bold]{cfg['defense']}[/] on "
                  f"[bold]{cfg['dataset']}[/] ({cfg['features']} features, shadow: "
                  f"{cfg['shadow']}, seed {cfg['seed']}, {len(cfg['folds'])} folds)")
    for mode in result.modes:
        console.print(mode_table(mode, f"{mode.mode} attacker"))
        if mode.extras:
            console.print("  " + ", ".join(f"{k} = {v:.3g}" for k, v in mode.extras.items()))
    if len(result.modes) > 1:
        headline = result.headline()
        console.print("headline (stronger attack mode): " + ", ".join(
            f"{_label(k)} {v:.3f}" for k, v in headline.items() if k.endswith(".uar")))
    console.print("95% CI: bootstrap over pooled predictions; chance: UAR of a constant guess, "
                  "* majority-class rate for accuracy", style="dim")
    console.print(f"results: {result.path}")


def print_sweep(frame, out, console: Console) -> None:
    """The sweep's utility-vs-leakage table (one row per setting)."""
    table = Table(title="utility vs leakage (leakage: stronger attack mode)", title_justify="left")
    columns = [c for c in frame.columns if c not in ("setting", "defense")]
    table.add_column("setting", no_wrap=True)
    for c in columns:
        table.add_column(_label(c) if c.endswith(".uar") else c, justify="right")
    for values in frame.to_dict(orient="records"):
        table.add_row(values["setting"], *(f"{values[c]:.3g}" if pd.notna(values[c]) else ""
                                           for c in columns))
    console.print(table)
    console.print(f"results: {out}/sweep.csv, plot: {out}/sweep.png")
