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
from serbench.scoring import Role


def run_sweep(cfg: EvalConfig, key: str, values: list[str], out: Path,
              reporter: Reporter) -> pd.DataFrame:
    """Evaluate ``cfg`` with ``defense_params[key]`` set to each value, and without defense."""
    rows = []
    roles: dict[str, Role] = {}
    runs = [("baseline", dataclasses.replace(cfg, defense="none", defense_params={}))]
    runs += [(f"{key}={v}", dataclasses.replace(cfg, defense_params={**cfg.defense_params,
                                                                     key: v})) for v in values]
    for label, run_cfg in runs:
        reporter.log(f"sweep: {label}")
        result = run_eval(run_cfg, out / label.replace("/", "_"), reporter)
        rows.append({"setting": label, "defense": run_cfg.defense, **result.stronger_mode()})
        roles |= {f"{name}.uar": role for name, role in result.roles.items()}
    frame = pd.DataFrame(rows)
    write_csv(out / "sweep.csv", frame)
    plot_sweep(frame, roles, out / "sweep.png")
    return frame


#: The x axis of a sweep's plot for each scored role (what the run recorded of its measures).
AXES = {Role.LEAKAGE: ("leakage (UAR, stronger attack mode)", 0.5, "chance leakage"),
        Role.LINKABILITY: ("speaker-verification EER (stronger attack mode)", 0.5, "unlinkable"),
        Role.ROBUST: ("robust emotion UAR (stronger attack mode)", None, "")}


def plot_sweep(frame: pd.DataFrame, roles: dict[str, Role], path: Path) -> None:
    """Utility against each scored measure, one point per setting; the measures' roles (as
    the runs recorded them) say which column is which."""
    utility = next(c for c, r in roles.items() if r is Role.UTILITY and c in frame)
    scored = [c for c, r in roles.items() if r in AXES and c in frame]
    fig = Figure(figsize=(6, 4.5))
    ax = fig.subplots()
    for col in scored:
        ax.plot(frame[col], frame[utility], "o-", label=col.removesuffix(".uar"))
        for x, y, text in zip(frame[col], frame[utility], frame["setting"]):
            ax.annotate(text, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
    axes = list(dict.fromkeys(AXES[roles[c]] for c in scored))
    for _, chance, label in axes:
        if chance is not None:
            ax.axvline(chance, color="grey", ls=":", label=label)
    ax.set_xlabel("; ".join(a[0] for a in axes))
    ax.set_ylabel(f"{utility.removesuffix('.uar')} UAR (utility)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    save_figure(fig, path)
