"""The leaderboard's views (SPEC §7): a rich terminal table, Markdown, a static HTML page with
sortable tables (:mod:`serbench.leaderboard.page`), and per track a utility-vs-worst-case plot
with each defense's family as a curve and the Pareto front (:mod:`serbench.leaderboard.plot`).
Every view shows the same columns: pooled UAR, its CI, and mean ± std over folds and seeds; the
rows of one family (a defense at several strengths) stand together, weakest first."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rich.markup import escape
from rich.table import Table

from serbench.leaderboard.entry import MODES, Entry, cells, measure_roles
from serbench.leaderboard.families import Family, Row, assign_baselines, families
from serbench.leaderboard.tracks import TRACKS, Track
from serbench.scoring import LEAKS, MIS_SIGNED, Role

LEGEND = ("UAR: pooled over folds and seeds; 95% CI: percentile bootstrap over the target's "
          "speakers (entries made before predictions named speakers: over predictions, too "
          "narrow); mean ± std: over folds and seeds. Worst case: over the track's attacks, "
          "both attack modes (SPEC §5) and every measure; its CI is widened (Bonferroni, level "
          "1 − 0.05/k) for the k measures it was chosen from ('of k' where it was attained; "
          "schema version 1 entries: the plain 95% CI). none: the undefended entry's worst "
          "case under the same protocol (attacker adequacy; at the entry's seeds where it was run "
          "at more). Non-adaptive, adaptive: each attack mode's worst measure apart, with "
          "its own 95% CI (—: the run attacks in one mode only). Emotion UAR: the lowest "
          "among the attacks' targets. ε (server): DP against the server, which picks the clients "
          "(no sampling amplification); nominal: a parameter, not a DP guarantee; "
          "(v1): not accounted in the entry. ★: on the Pareto front (standard, consistent "
          "entries only). Signal vs chance: how many measures (any attack or mode) have a CI "
          "wholly above chance (leaks) or wholly below it (signal present, mis-signed: the "
          "attacker's sign is wrong, and the surface still carries the attribute).")


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
    w = row.worst
    where = f"{w['attack']}, {w['mode']}, {w['measure']}"
    return where + (f" (of {w['candidates']})" if "candidates" in w else "")


def epsilon(row: Row) -> tuple[float | None, str]:
    """The headline ε and what it is: "server" (DP against the server that picks the clients),
    "nominal" (a parameter the defense names ε, not a guarantee), "v1" (an entry that predates the accounting context), or
    "see details" (a DP ε against someone else: its accounting context says whom)."""
    h = row.data["headline"]
    if h.get("epsilon") is not None:
        if row.data["schema_version"] < 2:
            return h["epsilon"], "v1"
        against = {c["context"].get("epsilon_against", "")
                   for modes in row.data.get("accounting", {}).values()
                   for contexts in modes.values() for c in contexts
                   if "epsilon" in c["context"]}
        server = against and all(str(a).startswith("the server") for a in against)
        return h["epsilon"], "server" if server else "see details"
    if h.get("nominal_epsilon") is not None:
        return h["nominal_epsilon"], "nominal"
    return None, ""


def _epsilon_text(row: Row) -> str:
    value, kind = epsilon(row)
    if value is None:
        return "—"
    return f"{value:.3g} nominal" if kind == "nominal" else f"{value:.3g} ({kind})"


def _baseline_text(row: Row) -> str:
    if row.data["defense"]["name"] == "none":
        return "none: itself"
    if row.baseline is None:
        return "none: no entry"
    return f"none: {row.baseline.worst['uar']:.3f}"


def _signal_text(row: Row) -> str:
    """Whether any measure of the entry, in any mode, lies wholly on one side of chance: its
    worst case says "at chance" only where none does."""
    found = row.signals
    parts = [f"{verdict} ({len(found[verdict])})" for verdict in (LEAKS, MIS_SIGNED)
             if verdict in found]
    return "; ".join(parts) or "none beyond chance"


def beside(row: Row, role: Role, mode: str | None = None) -> dict[str, Any] | None:
    """The entry's measure of ``role`` that is worst for the defense (its direction from the
    role), over every attack and ``mode`` (every mode if None), with its own 95% CI; None
    where the entry has none (e.g. made before it, or a track with one mode)."""
    roles = measure_roles(row.data)
    found = [stats for attack, m, measure, stats in cells(row.data["results"])
             if roles[attack].get(measure) is role and mode in (None, m)]
    sign = 1 if role.higher_is_worse else -1
    return max(found, key=lambda stats: sign * stats["uar"], default=None)


def _beside_text(stats: dict[str, Any] | None) -> str:
    return "—" if stats is None else f"{stats['uar']:.3f} ({_ci(stats)})"


def _stats_column(key: str, heading: str, role: Role, mode: str | None = None) -> Column:
    return Column(key, heading, lambda r: _beside_text(beside(r, role, mode)),
                  lambda r: "" if (stats := beside(r, role, mode)) is None else stats["uar"])


def _beside_columns(track: Track) -> list[Column]:
    """Each attack mode's worst case apart (SPEC §5: the attacker the defense's paper used,
    and serbench's adaptive one), then the track's other role, if any."""
    modes = [_stats_column(f"mode-{m}", m, track.role, m) for m in MODES]
    if track.beside is None:
        return modes
    return [*modes, _stats_column("beside", track.beside_label, track.beside)]


def columns(track: Track) -> list[Column]:
    eps = lambda r: epsilon(r)[0]  # noqa: E731
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
        Column("worst-ci", "CI (1−0.05/k)", lambda r: _ci(r.worst), lambda r: r.worst["ci"][0]),
        Column("worst-spread", "mean±std", lambda r: _spread(r.worst),
               lambda r: r.worst["mean"]),
        Column("baseline", "none's worst", _baseline_text,
               lambda r: r.baseline.worst["uar"] if r.baseline else ""),
        *_beside_columns(track),
        Column("signal", "signal vs chance", _signal_text, _signal_text, numeric=False),
        Column("at", "worst case at", _at, _at, numeric=False),
        Column("epsilon", "ε", _epsilon_text, lambda r: "" if eps(r) is None else eps(r)),
        Column("pareto", "Pareto", lambda r: "★" if r.pareto else "", lambda r: int(r.pareto)),
        Column("status", "status", lambda r: r.status, lambda r: r.status, numeric=False),
    ]


def _dominates(track: Track, a: Row, b: Row) -> bool:
    """``a`` is at least as good as ``b`` on utility and worst case, and better on one."""
    ua, ub, wa, wb = a.utility["uar"], b.utility["uar"], a.worst["uar"], b.worst["uar"]
    return ua >= ub and not track.worse(wa, wb) and (ua > ub or track.worse(wb, wa))


@dataclass
class Board:
    """One track's rows, grouped by family (best family first, each weakest first)."""

    track_id: str
    track: Track
    families: list[Family]

    @property
    def rows(self) -> list[Row]:
        return [r for fam in self.families for r in fam.rows]


def boards(entries: list[Entry]) -> dict[str, Board]:
    """Per track (``corpus/surface``): its rows grouped by family, Pareto front and each
    defended row's baseline marked."""
    out: dict[str, Board] = {}
    for track_id in sorted({e.track_id for e in entries}):
        mine = [e for e in entries if e.track_id == track_id]
        track = mine[0].track
        rows = [Row(e, False) for e in sorted(mine, key=lambda e: e.data["name"])]
        eligible = [r for r in rows if r.status == "ok"]
        for row in eligible:
            row.pareto = not any(_dominates(track, other, row) for other in eligible)
        assign_baselines(rows)
        groups = families(rows, track.worse)
        for fam in groups:
            for row in fam.rows:
                row.family = fam
        out[track_id] = Board(track_id, track, groups)
    return out


def title(track_id: str) -> str:
    corpus, surface = track_id.split("/")
    return f"{corpus} / {surface} (attacks: {', '.join(TRACKS[surface].attacks)})"


def notes(rows: list[Row]) -> list[str]:
    """Trial and inconsistent entries; defended entries whose own attacker beats the
    undefended entry's beyond the latter's CI (the baseline is under-attacked)."""
    out = [f"{r.data['name']}: {r.note}" for r in rows if r.note]
    for r in rows:
        out += [f"{r.data['name']}: {MIS_SIGNED}: {c['attack']} {c['mode']} {c['measure']} "
                f"UAR {c['uar']:.3f} (CI {c['ci'][0]:.3f}–{c['ci'][1]:.3f}) lies wholly on the defense's side of chance "
                f"{c['chance']:.2f}" for c in r.signals.get(MIS_SIGNED, [])]
        base = r.baseline
        if base is None or r.entry.problem or base.entry.problem:
            continue
        lo, hi = base.worst["ci"]
        beyond = r.worst["uar"] > hi if r.entry.track.higher_is_worse else r.worst["uar"] < lo
        if beyond:
            out.append(f"{r.data['name']}: its attacker reaches {r.worst['uar']:.3f}, beyond the "
                       f"CI of {base.data['name']}'s worst case ({base.worst['uar']:.3f}, "
                       f"{lo:.2f}–{hi:.2f}): the undefended entry is under-attacked")
    return out


def family_heading(fam: Family) -> str:
    """``dp (ε): 4 entries, ε 1 → 1000``."""
    span = fam.span()
    return f"{fam.label}: {len(fam.rows)} entries" + (f", {span}" if span else "")


#: Text the terminal table shows under another column's numbers, to fit 80 columns.
_UNDER = {"defense": "entry", "at": "worst", "baseline": "worst", "signal": "worst"}


def rich_table(board: Board) -> Table:
    """Narrow enough for a terminal: a headline's UAR, CI, mean ± std, the baseline's worst
    case and where the worst case was attained share one cell, and the defense's parameters
    sit under the entry's name. A family of several entries gets a heading row."""
    rows = board.rows
    groups: dict[str, list[Column]] = {}
    for col in columns(board.track):
        key = col.key.split("-")[0]
        groups.setdefault(_UNDER.get(key, key), []).append(col)
    text_notes = escape("\n".join(notes(rows)))
    table = Table(title=title(board.track_id), title_justify="left", header_style="bold",
                  caption=LEGEND + ("\n" + text_notes if text_notes else ""),
                  caption_justify="left", show_lines=True)
    table.add_column("#", justify="right")
    for cols in groups.values():
        # Names and numbers are never cut; the text under them folds to the column's width.
        widths = [len(c.text(r)) for c in cols[:1] + [c for c in cols if c.numeric] for r in rows]
        table.add_column("\n".join(c.heading for c in cols), min_width=max(widths),
                         justify="right" if cols[0].numeric else "left", overflow="fold")
    i = 0
    for fam in board.families:
        if len(fam.rows) > 1:
            table.add_row("", f"[bold]{escape(family_heading(fam))}[/]",
                          *([""] * (len(groups) - 1)), style="on grey15")
        for row in fam.rows:
            i += 1
            style = "red" if row.entry.problem else ("dim" if row.status != "ok" else None)
            table.add_row(str(i), *(escape("\n".join(c.text(row) for c in cols))
                                    for cols in groups.values()), style=style)
    return table


def plot_name(track_id: str) -> str:
    return track_id.replace("/", "-") + ".png"


def _cell_md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(tracks: dict[str, Board]) -> str:
    out = ["# serbench leaderboard", "", LEGEND, ""]
    for track_id, board in tracks.items():
        cols = columns(board.track)
        out += [f"## {title(track_id)}", "",
                "| # | " + " | ".join(c.heading for c in cols) + " |",
                "|---:|" + "|".join("---" for _ in cols) + "|"]
        i = 0
        for fam in board.families:
            if len(fam.rows) > 1:
                out.append(f"|  | **{_cell_md(family_heading(fam))}** |"
                           + " |" * (len(cols) - 1))
            for r in fam.rows:
                i += 1
                out.append(f"| {i} | " + " | ".join(_cell_md(c.text(r)) for c in cols) + " |")
        out += [""] + [f"- {_cell_md(n)}" for n in notes(board.rows)]
        out += ["", f"![{track_id}: emotion UAR vs {board.track.label}]"
                    f"({plot_name(track_id)})", ""]
    return "\n".join(out)
