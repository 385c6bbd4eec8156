"""The run report: one row per measure (pooled UAR, speaker-level CI, speaker count, mean ± std
over folds, AUC and TPR at low FPR), then the per-fold UARs, in the terminal and as
``report.md`` in the run directory.

Every cell is a short fixed-width number and the tables fit 80 columns, so a report piped to a
file or read in a CI log shows every number in full; long measure names wrap, numbers never do.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pandas as pd
from rich import box
from rich.console import Console
from rich.table import Table

from serbench.io import atomic_write_text
from serbench.scoring import LEVEL, LOW_FPRS, MIS_SIGNED, RESAMPLES, TRIALS_CI, Role, measure_name, \
    signal

if TYPE_CHECKING:
    from serbench.results import ModeResult, RunResult

DASH = "–"


def _num(value: float | None, digits: int = 2) -> str:
    return DASH if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


def _label(name: str) -> str:
    return name.replace("@", " ")


@dataclass
class _Grid:
    """A table as plain strings: rendered by rich for the terminal and as Markdown."""

    title: str
    header: list[str]
    rows: list[list[str]]


def _summary_grid(mode: ModeResult) -> _Grid:
    header = ["measure", "UAR", f"{LEVEL:.0%} CI", "spk", "mean±std", "AUC",
              *(f"TPR@{f:.0%}" for f in LOW_FPRS)]
    rows = []
    for row in mode.pooled.to_dict(orient="records"):
        name = measure_name(row["task"], row["group"])
        fold = mode.summary.get(f"{name}.uar")
        spread = DASH if fold is None else f"{_num(fold['mean'])}±{_num(fold['std'])}"
        speakers = row.get("speakers")
        rows.append([_label(name), _num(row["uar"], 3),
                     f"{_num(row['ci_low'])}–{_num(row['ci_high'])}",
                     DASH if speakers is None or pd.isna(speakers) else str(int(speakers)),
                     spread, _num(row.get("auc")),
                     *(_num(row.get(f"tpr_at_{f:g}_fpr")) for f in LOW_FPRS)])
    return _Grid(f"{mode.mode} attacker", header, rows)


def _fold_grid(mode: ModeResult) -> _Grid:
    folds = list(mode.folds)
    names = [measure_name(t, g) for t, g in mode.pooled[["task", "group"]].itertuples(index=False)]
    rows = [[_label(name), *(_num(mode.folds[f].metrics.get(f"{name}.uar")) for f in folds)]
            for name in names]
    return _Grid(f"{mode.mode}: UAR per fold", ["measure", *(f"fold {f}" for f in folds)], rows)


def _grids(result: RunResult) -> Iterator[_Grid]:
    for mode in result.modes:
        yield _summary_grid(mode)
        yield _fold_grid(mode)


def _title(result: RunResult) -> str:
    cfg = result.config
    return (f"{cfg['attack']} vs {cfg['defense']} on {cfg['dataset']} ({cfg['features']} "
            f"features, shadow: {cfg['shadow']}, seed {cfg['seed']}, {len(cfg['folds'])} folds)")


def _notes(result: RunResult) -> list[str]:
    methods = sorted({m for mode in result.modes for m in mode.pooled["ci_method"]})
    chance = {}
    for mode in result.modes:
        for row in mode.pooled.itertuples():
            if result.roles[measure_name(row.task, row.group)] is not Role.UNSCORED:
                chance.setdefault(row.task, row.chance_uar)
    notes = []
    if TRIALS_CI in methods:
        notes.append("speaker measures: the EER of same-gender verification trials, not a UAR "
                     "(lower is more linkable; 0.5: unlinkable), CI over speakers with the "
                     "trials rebuilt from them")
    worst = result.worst()
    if worst is not None:
        notes.append(f"worst case: {_label(worst.measure)} ({worst.mode}) UAR {worst.uar:.3f}, "
                     f"{worst.level:.2%} CI {worst.ci_low:.2f}–{worst.ci_high:.2f} "
                     f"(Bonferroni over the {worst.candidates} measures it was chosen from)")
    notes += [f"{MIS_SIGNED} ({mode}): {_label(name)} UAR {uar:.3f}, CI {lo:.2f}–{hi:.2f} lies "
              f"wholly {'below' if hi < chance else 'above'} chance {chance:.2f}" for mode, name, uar, lo, hi, chance
              in _mis_signed(result)]
    for v in result.violations:
        fold = "pooled over folds" if v["fold"] == "pooled" else f"fold {v['fold']}"
        name = _label(measure_name(v["task"], v["group"]))
        what = "UAR" if v.get("classes", 2) > 1 else "recall (one-class fold)"
        notes.append(f"BOUND EXCEEDED ({v['mode']}, {fold}): {name} {what} {v['uar']:.3f} > "
                     f"{v['bound']} {v['bound_uar']:.3f} (difference {v['diff']:+.3f}, paired "
                     f"{v['level']:.2%} CI {v['ci_low']:+.2f} to {v['ci_high']:+.2f})")
    bounded = any("bound" in r.predictions and (r.predictions["bound"].fillna("") != "").any()
                  for m in result.modes for r in m.folds.values())
    if bounded and not result.violations:
        notes.append("bound check: no measure beats its bound (intercept: worst) on any fold "
                     "or pooled, beyond a paired two-stage speaker bootstrap CI (Bonferroni)")
    for name, value in result.modes[0].extras.items():
        notes.append(f"{name} = {value:.4g}")
    notes.append(f"{LEVEL:.0%} CI: {' / '.join(methods)} ({RESAMPLES} resamples of the target's "
                 f"speakers with all their rows, within gender for gender measures); "
                 f"spk: target speakers; mean±std over folds holding both classes")
    notes.append("chance UAR: " + ", ".join(f"{t} {v:.2f}" for t, v in chance.items())
                 + "; AUC, TPR@FPR: from the attacker's scores (SPEC §6)")
    return notes


def _mis_signed(result: RunResult) -> Iterator[tuple[str, str, float, float, float, float]]:
    """(mode, measure, UAR, CI, chance) of each measure whose CI lies wholly on the defense's
    side of chance: the attacker's sign is wrong, and the surface still carries the attribute."""
    for mode in result.modes:
        for row in mode.pooled.itertuples():
            name = measure_name(row.task, row.group)
            if signal(result.roles[name], (row.ci_low, row.ci_high), row.chance_uar) \
                    == MIS_SIGNED:
                yield mode.mode, name, row.uar, row.ci_low, row.ci_high, row.chance_uar


def _rich(grid: _Grid) -> Table:
    table = Table(title=grid.title, title_justify="left", box=box.SIMPLE_HEAD,
                  header_style="bold", pad_edge=False, collapse_padding=True,
                  min_width=len(grid.title))
    table.add_column(grid.header[0], overflow="fold", ratio=1)
    for name in grid.header[1:]:
        table.add_column(name, justify="right", no_wrap=True)
    for row in grid.rows:
        table.add_row(*row)
    return table


def print_report(result: RunResult, console: Console) -> None:
    """The run's tables in the terminal (the same as ``report.md``)."""
    console.print(_title(result), style="bold", highlight=False)
    for grid in _grids(result):
        console.print(_rich(grid))
    for note in _notes(result):
        console.print(note, style="dim", highlight=False)
    console.print(f"results: {result.path}", highlight=False)


def markdown(result: RunResult) -> str:
    """The report as Markdown (``report.md``)."""
    lines = [f"# {_title(result)}", ""]
    for grid in _grids(result):
        lines += [f"## {grid.title}", "", "| " + " | ".join(grid.header) + " |",
                  "|" + "|".join(["---", *["---:"] * (len(grid.header) - 1)]) + "|",
                  *("| " + " | ".join(row) + " |" for row in grid.rows), ""]
    lines += [f"- {note}" for note in _notes(result)]
    return "\n".join(lines) + "\n"


def write_markdown(result: RunResult) -> None:
    atomic_write_text(result.path / "report.md", markdown(result))


def print_sweep(frame: pd.DataFrame, out, console: Console) -> None:
    """The sweep's utility-vs-leakage table (one row per setting)."""
    table = Table(title="utility vs leakage (leakage: stronger attack mode)", title_justify="left",
                  box=box.SIMPLE_HEAD, pad_edge=False)
    columns = [c for c in frame.columns if c not in ("setting", "defense")]
    table.add_column("setting", overflow="fold")
    for c in columns:
        table.add_column(_label(c.removesuffix(".uar")), justify="right", overflow="fold")
    for values in frame.to_dict(orient="records"):
        table.add_row(values["setting"], *(f"{values[c]:.3g}" if pd.notna(values[c]) else ""
                                           for c in columns))
    console.print(table)
    console.print(f"results: {out}/sweep.csv, plot: {out}/sweep.png", highlight=False)
