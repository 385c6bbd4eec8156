"""The leaderboard's views (SPEC §7): a rich terminal table, Markdown, a static HTML page with
sortable tables, and per track a utility-vs-worst-case plot with the Pareto front. Every view
shows the same columns: pooled UAR, its 95% bootstrap CI, and mean ± std over folds and seeds."""

from __future__ import annotations

import base64
import html
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.markup import escape
from rich.table import Table

from serbench.leaderboard.entry import Entry, describe_deviations
from serbench.leaderboard.tracks import TRACKS, Track

LEGEND = ("UAR: pooled over folds and seeds; 95% CI: percentile bootstrap over the target's "
          "speakers (entries made before predictions named speakers: over predictions, too "
          "narrow); mean ± std: over folds and seeds. Worst case: over the track's attacks, "
          "both attack modes (SPEC §5) and every measure; emotion UAR: the lowest among the "
          "attacks' targets. ★: on the Pareto front (standard, consistent entries only).")


@dataclass
class Row:
    entry: Entry
    pareto: bool

    @property
    def data(self) -> dict[str, Any]:
        return self.entry.data

    @property
    def utility(self) -> dict[str, Any]:
        return self.data["headline"]["utility"]

    @property
    def worst(self) -> dict[str, Any]:
        return self.data["headline"]["worst"]

    @property
    def status(self) -> str:
        """"ok", "trial" (reduced attacks) or "✗ inconsistent" (numbers not its predictions')."""
        if self.entry.problem:
            return "✗ inconsistent"
        return "ok" if self.data["standard"] else "trial"

    @property
    def note(self) -> str | None:
        """Why the status is not "ok"."""
        if self.entry.problem:
            return self.entry.problem
        if not self.data["standard"]:
            return "reduced protocol: " + describe_deviations(self.data["deviations"])
        return None


@dataclass(frozen=True)
class Column:
    key: str
    heading: str
    text: Callable[[Row], str]
    #: The value the HTML table sorts by.
    sort: Callable[[Row], float | str]
    #: Sort numerically (a missing value, "", sorts last).
    numeric: bool = True


def _defense(row: Row) -> str:
    d = row.data["defense"]
    params = ", ".join(f"{k}={v}" for k, v in d["params"].items() if v is not None)
    return f"{d['name']}({params})" if params else d["name"]


def _ci(cell: dict[str, Any]) -> str:
    return f"{cell['ci'][0]:.2f}–{cell['ci'][1]:.2f}"


def _spread(cell: dict[str, Any]) -> str:
    return f"{cell['mean']:.3f}±{cell['std']:.3f}"


def _at(row: Row) -> str:
    return f"{row.worst['attack']}, {row.worst['mode']}, {row.worst['measure']}"


def columns(track: Track) -> list[Column]:
    eps = lambda r: r.data["headline"]["epsilon"]  # noqa: E731
    name = lambda r: r.data["name"]  # noqa: E731
    return [
        Column("entry", "entry", name, name, numeric=False),
        Column("defense", "defense", _defense, _defense, numeric=False),
        Column("utility", "emotion UAR", lambda r: f"{r.utility['uar']:.3f}",
               lambda r: r.utility["uar"]),
        Column("utility-ci", "95% CI", lambda r: _ci(r.utility), lambda r: r.utility["ci"][0]),
        Column("utility-spread", "mean±std", lambda r: _spread(r.utility),
               lambda r: r.utility["mean"]),
        Column("worst", track.label, lambda r: f"{r.worst['uar']:.3f}", lambda r: r.worst["uar"]),
        Column("worst-ci", "95% CI", lambda r: _ci(r.worst), lambda r: r.worst["ci"][0]),
        Column("worst-spread", "mean±std", lambda r: _spread(r.worst),
               lambda r: r.worst["mean"]),
        Column("at", "worst case at", _at, _at, numeric=False),
        Column("epsilon", "ε", lambda r: "—" if eps(r) is None else f"{eps(r):.3g}",
               lambda r: "" if eps(r) is None else eps(r)),
        Column("pareto", "Pareto", lambda r: "★" if r.pareto else "", lambda r: int(r.pareto)),
        Column("status", "status", lambda r: r.status, lambda r: r.status, numeric=False),
    ]


def _dominates(track: Track, a: Row, b: Row) -> bool:
    """``a`` is at least as good as ``b`` on utility and worst case, and better on one."""
    ua, ub, wa, wb = a.utility["uar"], b.utility["uar"], a.worst["uar"], b.worst["uar"]
    return ua >= ub and not track.worse(wa, wb) and (ua > ub or track.worse(wb, wa))


def boards(entries: list[Entry]) -> dict[str, list[Row]]:
    """Rows per track (``corpus/surface``), best worst case first, Pareto front marked."""
    out: dict[str, list[Row]] = {}
    for track_id in sorted({e.track_id for e in entries}):
        mine = [e for e in entries if e.track_id == track_id]
        track = mine[0].track
        rows = [Row(e, False) for e in mine]
        eligible = [r for r in rows if r.status == "ok"]
        for row in eligible:
            row.pareto = not any(_dominates(track, other, row) for other in eligible)
        sign = 1 if track.higher_is_worse else -1
        out[track_id] = sorted(rows, key=lambda r: (bool(r.entry.problem), sign * r.worst["uar"],
                                                    -r.utility["uar"], r.data["name"]))
    return out


def _title(track_id: str) -> str:
    corpus, surface = track_id.split("/")
    return f"{corpus} / {surface} (attacks: {', '.join(TRACKS[surface].attacks)})"


def _notes(rows: list[Row]) -> list[str]:
    return [f"{r.data['name']}: {r.note}" for r in rows if r.note]


#: Text the terminal table shows under another column's numbers, to fit 80 columns.
_UNDER = {"defense": "entry", "at": "worst"}


def rich_table(track_id: str, rows: list[Row]) -> Table:
    """Narrow enough for a terminal: a headline's UAR, CI, mean ± std and where the worst case
    was attained share one cell, and the defense's parameters sit under the entry's name."""
    groups: dict[str, list[Column]] = {}
    for col in columns(rows[0].entry.track):
        key = col.key.split("-")[0]
        groups.setdefault(_UNDER.get(key, key), []).append(col)
    notes = escape("\n".join(_notes(rows)))
    table = Table(title=_title(track_id), title_justify="left", header_style="bold",
                  caption=LEGEND + ("\n" + notes if notes else ""), caption_justify="left",
                  show_lines=True)
    table.add_column("#", justify="right")
    for cols in groups.values():
        # Names and numbers are never cut; the text under them folds to the column's width.
        widths = [len(c.text(r)) for c in cols[:1] + [c for c in cols if c.numeric] for r in rows]
        table.add_column("\n".join(c.heading for c in cols), min_width=max(widths),
                         justify="right" if cols[0].numeric else "left", overflow="fold")
    for i, row in enumerate(rows, 1):
        style = "red" if row.entry.problem else ("dim" if row.status != "ok" else None)
        table.add_row(str(i), *(escape("\n".join(c.text(row) for c in cols))
                                for cols in groups.values()), style=style)
    return table


def plot(track_id: str, rows: list[Row], path: Path) -> None:
    """Emotion UAR against the worst case, 95% CIs as error bars, the Pareto front as a line.
    Inconsistent entries are left out; trial entries are hollow."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    track = rows[0].entry.track
    fig, ax = plt.subplots(figsize=(6.4, 4.8))
    labels = {"ok": "entry (95% CIs)", "trial": "trial entry (reduced protocol)"}
    for row in rows:
        if row.entry.problem:
            continue
        x, y = row.worst["uar"], row.utility["uar"]
        err = [[[x - row.worst["ci"][0]], [row.worst["ci"][1] - x]],
               [[y - row.utility["ci"][0]], [row.utility["ci"][1] - y]]]
        ax.errorbar(x, y, xerr=err[0], yerr=err[1], fmt="o", capsize=3, color="C0",
                    mfc="C0" if row.status == "ok" else "white", alpha=0.9,
                    label=labels.pop(row.status, None))
        ax.annotate(row.data["name"], (x, y), fontsize=8, xytext=(4, 4),
                    textcoords="offset points")
    front = sorted((r.worst["uar"], r.utility["uar"]) for r in rows if r.pareto)
    if front:  # a staircase: what is attainable between the front's points
        ax.plot(*zip(*front), "-", color="C3", lw=1.5, label="Pareto front",
                drawstyle="steps-post" if track.higher_is_worse else "steps-pre")
    if track.higher_is_worse:
        ax.axvline(0.5, color="grey", ls=":", label="chance (gender UAR 0.5)")
    ax.set_xlabel(f"{track.label} (UAR; {'lower' if track.higher_is_worse else 'higher'} "
                  f"is better)")
    ax.set_ylabel("emotion UAR (higher is better)")
    ax.set_title(_title(track_id), fontsize=9)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)


def plot_name(track_id: str) -> str:
    return track_id.replace("/", "-") + ".png"


def _cell_md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(tracks: dict[str, list[Row]]) -> str:
    out = ["# serbench leaderboard", "", LEGEND, ""]
    for track_id, rows in tracks.items():
        cols = columns(rows[0].entry.track)
        out += [f"## {_title(track_id)}", "",
                "| # | " + " | ".join(c.heading for c in cols) + " |",
                "|---:|" + "|".join("---" for _ in cols) + "|"]
        out += [f"| {i} | " + " | ".join(_cell_md(c.text(r)) for c in cols) + " |"
                for i, r in enumerate(rows, 1)]
        out += [""] + [f"- {_cell_md(n)}" for n in _notes(rows)]
        out += ["", f"![{track_id}: emotion UAR vs {rows[0].entry.track.label}]"
                    f"({plot_name(track_id)})", ""]
    return "\n".join(out)


_SCRIPT = """
function sortBy(th) {
  const table = th.closest("table"), body = table.tBodies[0];
  const index = Array.from(th.parentNode.children).indexOf(th);
  const ascending = th.getAttribute("aria-sort") !== "ascending";
  const numeric = th.dataset.type === "number";
  const value = (row) => {
    const v = row.cells[index].dataset.sort;
    return !numeric ? v : v === "" ? Infinity : parseFloat(v);
  };
  const rows = Array.from(body.rows).sort((a, b) => {
    const x = value(a), y = value(b);
    return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
  });
  table.querySelectorAll("th").forEach((h) => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  body.append(...rows);
}
document.querySelectorAll("th[data-key]").forEach((th) =>
  th.addEventListener("click", () => sortBy(th)));
// A link to a sorted view: #sort=<column>[:desc], e.g. #sort=worst or #sort=utility:desc.
const wanted = /^#sort=([\\w-]+)(?::(asc|desc))?$/.exec(decodeURIComponent(location.hash));
if (wanted) {
  document.querySelectorAll(`th[data-key="${wanted[1]}"]`).forEach((th) => {
    th.click();
    if (wanted[2] === "desc") th.click();
  });
}
"""

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f0f0f0; cursor: pointer; user-select: none; }
th[aria-sort=ascending]::after { content: " ▲"; }
th[aria-sort=descending]::after { content: " ▼"; }
td.text { text-align: left; }
tr.inconsistent td { color: #b00; }
tr.trial td { color: #777; }
img { max-width: 100%; }
"""


def html_page(tracks: dict[str, list[Row]], plots: dict[str, bytes]) -> str:
    """One self-contained page: tables sortable by clicking a column heading, plots inline."""
    esc = html.escape
    parts = []
    for track_id, rows in tracks.items():
        cols = columns(rows[0].entry.track)
        head = "".join(f'<th data-key="{c.key}" data-type="{"number" if c.numeric else "text"}" '
                       f'scope="col">{esc(c.heading)}</th>' for c in cols)
        body = []
        for row in rows:
            kind = {"ok": "ok", "trial": "trial"}.get(row.status, "inconsistent")
            cells = "".join(
                f'<td class="{"num" if c.numeric else "text"}" '
                f'data-sort="{esc(str(c.sort(row)))}">{esc(c.text(row))}</td>' for c in cols)
            body.append(f'<tr class="{kind}" data-entry="{esc(row.data["name"])}">{cells}</tr>')
        image = base64.b64encode(plots[track_id]).decode()
        parts.append(
            f'<section id="{esc(track_id)}"><h2>{esc(_title(track_id))}</h2>'
            f'<table class="board" data-track="{esc(track_id)}"><thead><tr>{head}</tr></thead>'
            f'<tbody>{"".join(body)}</tbody></table>'
            f'<ul class="notes">{"".join(f"<li>{esc(n)}</li>" for n in _notes(rows))}</ul>'
            f'<img alt="{esc(track_id)}: emotion UAR vs {esc(rows[0].entry.track.label)}" '
            f'src="data:image/png;base64,{image}"></section>')
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<title>serbench leaderboard</title><style>{_STYLE}</style></head><body>'
            f'<h1>serbench leaderboard</h1><p>{esc(LEGEND)} Click a column heading to sort.</p>'
            f'{"".join(parts)}<script>{_SCRIPT}</script></body></html>\n')


def render(entries: list[Entry], out: Path) -> list[Path]:
    """Write leaderboard.md, leaderboard.html and one PNG per track into ``out``."""
    from serbench.results import atomic_write_text  # imports torch: not for `show`

    tracks = boards(entries)
    written = []
    for track_id, rows in tracks.items():
        written.append(out / plot_name(track_id))
        plot(track_id, rows, written[-1])
    plots = {t: (out / plot_name(t)).read_bytes() for t in tracks}
    for name, text in (("leaderboard.md", markdown(tracks)),
                       ("leaderboard.html", html_page(tracks, plots))):
        atomic_write_text(out / name, text)
        written.append(out / name)
    return written
