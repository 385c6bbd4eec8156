"""The leaderboard as one self-contained HTML page (SPEC §7): nothing is fetched at view time.
Per track: the plot (families as curves), then a table sortable by any column, each entry's
row followed by a details row (its configuration, accounting context, provenance and
verification status), opened from the row."""

from __future__ import annotations

import base64
import html
import json
from typing import Any

from serbench.leaderboard.families import Row
from serbench.leaderboard.views import LEGEND, Board, columns, epsilon, family_heading, notes, \
    title

esc = html.escape

_SCRIPT = """
function entryRows(body) { return Array.from(body.querySelectorAll("tr[data-entry]")); }
function sortBy(th) {
  const table = th.closest("table"), body = table.tBodies[0];
  const index = Array.from(th.parentNode.children).indexOf(th);
  const ascending = th.getAttribute("aria-sort") !== "ascending";
  const numeric = th.dataset.type === "number";
  const value = (row) => {
    const v = row.cells[index].dataset.sort;
    return !numeric ? v : v === "" ? Infinity : parseFloat(v);
  };
  const rows = entryRows(body).sort((a, b) => {
    const x = value(a), y = value(b);
    return (x < y ? -1 : x > y ? 1 : 0) * (ascending ? 1 : -1);
  });
  const details = new Map(rows.map((r) => [r, r.nextElementSibling]));
  table.querySelectorAll("th").forEach((h) => h.removeAttribute("aria-sort"));
  th.setAttribute("aria-sort", ascending ? "ascending" : "descending");
  // Family heading rows stand above their family when sorted by family, hidden otherwise.
  const heads = new Map(Array.from(body.querySelectorAll("tr.family")).map(
    (r) => [r.dataset.family, r]));
  const byFamily = th.dataset.key === "family", seen = new Set();
  heads.forEach((h) => { h.hidden = !byFamily; });
  rows.forEach((r) => {
    const head = heads.get(r.dataset.family);
    if (byFamily && head && !seen.has(head)) { body.append(head); seen.add(head); }
    body.append(r, details.get(r));
  });
}
document.querySelectorAll("th[data-key]").forEach((th) =>
  th.addEventListener("click", () => sortBy(th)));
// A row opens its details (a click on a link or inside the details does not toggle it).
document.querySelectorAll("tr[data-entry]").forEach((row) =>
  row.addEventListener("click", (event) => {
    if (event.target.closest("a")) return;
    const d = row.nextElementSibling.querySelector("details");
    d.open = !d.open;
  }));
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
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 1500px; }
p.legend { max-width: 75em; font-size: 0.9em; color: #444; }
table.board { border-collapse: collapse; margin: 1em 0; font-size: 0.85em; }
table.board th, table.board td { border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: right; }
table.board th { background: #f0f0f0; cursor: pointer; user-select: none; }
th[aria-sort=ascending]::after { content: " ▲"; }
th[aria-sort=descending]::after { content: " ▼"; }
table.board td.text { text-align: left; }
table.board td.num { white-space: nowrap; }
tr[data-entry] { cursor: pointer; }
tr[data-entry]:hover td { background: #f6f9ff; }
tr.family td { background: #eef1f4; text-align: left; font-weight: bold; }
tr.inconsistent td { color: #b00; }
tr.trial td { color: #777; }
tr.details > td { padding: 0 0.5em; border-top: none; text-align: left; background: #fbfbfb; }
tr.details summary { font-size: 0.85em; color: #555; cursor: pointer; padding: 0.15em 0; }
div.facts { display: flex; flex-wrap: wrap; gap: 1.5em; padding: 0.5em 0 1em; }
div.facts section { min-width: 18em; max-width: 42em; }
div.facts h4 { margin: 0.3em 0; }
table.kv { border-collapse: collapse; font-size: 0.95em; }
table.kv th, table.kv td { border: none; padding: 0.1em 0.6em 0.1em 0; text-align: left;
  vertical-align: top; background: none; cursor: auto; font-weight: normal; position: static; }
table.kv th { color: #555; white-space: nowrap; }
code { font-size: 0.95em; }
img.plot { display: block; max-width: 100%; height: auto; border: 1px solid #eee; }
"""


def _kv(pairs: list[tuple[str, Any]]) -> str:
    return ('<table class="kv">' + "".join(
        f"<tr><th>{esc(str(k))}</th><td>{esc(_show(v))}</td></tr>" for k, v in pairs)
        + "</table>")


def _show(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True) if v else "—"
    return "—" if v is None else str(v)


#: Accounting keys shown first, in this order; the rest follow alphabetically.
_FIRST = ("epsilon", "epsilon_against", "nominal_epsilon", "delta", "nominal_delta",
          "epsilon_outside_observer", "epsilon_outside_observer_against", "accountant",
          "neighbouring_relation", "sampling", "rounds", "sample_rate", "participations",
          "participations_from", "clip", "noise_multiplier")


def _accounting(data: dict[str, Any]) -> str:
    """Per attack: each context key with its value, or its range over the runs' folds and
    modes where they differ (participations follow each fold's seeded schedule)."""
    stored = data.get("accounting")
    if stored is None:
        return ("<p>Not recorded: a schema version 1 entry (made before entries carried the "
                "accounting context).</p>")
    if not stored:
        return "<p>None: the defense reports no privacy accounting on this track.</p>"
    parts = []
    for attack, modes in stored.items():
        contexts = [c["context"] for records in modes.values() for c in records]
        keys = [k for k in _FIRST if any(k in c for c in contexts)] + sorted(
            {k for c in contexts for k in c} - set(_FIRST))
        pairs = []
        for k in keys:
            values = [c[k] for c in contexts if k in c]
            distinct = list(dict.fromkeys(json.dumps(v) for v in values))
            if len(distinct) == 1:
                pairs.append((k, values[0]))
            elif all(isinstance(v, (int, float)) for v in values):
                pairs.append((k, f"{min(values):.6g} – {max(values):.6g} over "
                                 f"{len(values)} folds"))
            else:
                pairs.append((k, " | ".join(json.loads(d) for d in distinct)))
        folds = len({(c["seed"], c["fold"]) for records in modes.values() for c in records})
        parts.append(f"<p><b>{esc(attack)}</b> ({folds} seed/fold runs, "
                     f"{', '.join(map(esc, modes))})</p>" + _kv(pairs))
    return "".join(parts)


def _provenance(row: Row) -> str:
    d = row.data
    head = "<tr><th>attack</th><th>seed</th><th>commit</th><th>content hash</th><th>run</th></tr>"
    lines = []
    for run in d["runs"]:
        env = run["environment"]
        commit = env.get("commit")
        commit_text = "not recorded" if commit is None else commit[:12] + (
            " (uncommitted changes)" if env.get("dirty") else "")
        when = f"{env.get('started', '?')} → {env.get('finished', '?')}"
        version = env.get("packages", {}).get("serbench")
        lines.append(f"<tr><td>{esc(run['attack'])}</td><td>{run['seed']}</td>"
                     f"<td><code>{esc(commit_text)}</code></td>"
                     f"<td><code title=\"{esc(run['content_hash'])}\">"
                     f"{esc(run['content_hash'][:16])}…</code></td>"
                     f"<td>{esc(when)}{esc(f', serbench {version}') if version else ''}</td></tr>")
    return (_kv([("submitted", d["submitted"]), ("schema version", d["schema_version"])])
            + f'<table class="kv">{head}{"".join(lines)}</table>')


def _verification(row: Row) -> str:
    d = row.data
    path = f"{d['corpus']}/{d['surface']}/{d['name']}.json"
    if row.entry.problem:
        check = f"✗ inconsistent: {row.entry.problem}"
    else:
        check = "✓ its results and headline are those its own predictions give"
    protocol = ("standard protocol" if d["standard"] else
                "trial (reduced protocol): never on the Pareto front")
    return _kv([("self-check (every view)", check), ("protocol", protocol),
                ("re-run check", f"serbench leaderboard verify leaderboards/{path} "
                                 f"(re-runs every run; numbers within their CI)")])


def _configuration(row: Row) -> str:
    d, p = row.data, row.data["protocol"]
    value, kind = epsilon(row)
    pairs = [("defense", f"{d['defense']['name']} ({d['defense']['ref']})"),
             ("summary", d["defense"]["summary"]), ("parameters", d["defense"]["params"]),
             ("family", f"{row.family.label} {row.strength}".strip() if row.family else "—"),
             ("ε", "—" if value is None else f"{value:.6g} ({kind})"),
             ("folds", p["folds"]), ("seeds", p["seeds"]), ("shadow", p["shadow"]),
             ("corpus options", p["dataset_options"]), ("features", p["features"]),
             ("deviations", d["deviations"] or "none (standard)"),
             ("attacks' parameters", {r["attack"]: r["config"].get("attack_params")
                                      for r in d["runs"]})]
    if row.baseline is not None:
        b = row.baseline.worst
        pairs.append(("none under the same protocol",
                      f"{row.baseline.data['name']}: worst case {b['uar']:.3f} "
                      f"({b['ci'][0]:.2f}–{b['ci'][1]:.2f}) at {b['attack']}, {b['mode']}, "
                      f"{b['measure']}"))
    return _kv(pairs)


def _details(row: Row, span: int) -> str:
    name = row.data["name"]
    sections = [("Configuration", _configuration(row)), ("Accounting", _accounting(row.data)),
                ("Provenance", _provenance(row)), ("Verification", _verification(row))]
    body = "".join(f"<section><h4>{t}</h4>{content}</section>" for t, content in sections)
    return (f'<tr class="details" data-details-for="{esc(name)}"><td colspan="{span}">'
            f'<details id="details-{esc(name)}"><summary>{esc(name)}: configuration, '
            f'accounting, provenance, verification</summary><div class="facts">{body}</div>'
            f'</details></td></tr>')


def _table(board: Board) -> str:
    cols = columns(board.track)
    head = ('<th data-key="family" data-type="number" scope="col">family</th>' + "".join(
        f'<th data-key="{c.key}" data-type="{"number" if c.numeric else "text"}" '
        f'scope="col">{esc(c.heading)}</th>' for c in cols))
    body, position = [], 0
    for number, fam in enumerate(board.families):
        if len(fam.rows) > 1:
            body.append(f'<tr class="family" data-family="{number}">'
                        f'<td colspan="{len(cols) + 1}">{esc(family_heading(fam))}</td></tr>')
        for row in fam.rows:
            position += 1
            kind = {"ok": "ok", "trial": "trial"}.get(row.status, "inconsistent")
            name = fam.defense + (f" [{fam.distinct}]" if fam.distinct else "")
            cells = f'<td class="text" data-sort="{position}">{esc(name)}' + (
                f" · {esc(row.strength)}" if row.strength and len(fam.rows) > 1 else "") + "</td>"
            cells += "".join(
                f'<td class="{"num" if c.numeric else "text"}" '
                f'data-sort="{esc(str(c.sort(row)))}">{esc(c.text(row))}</td>' for c in cols)
            body.append(f'<tr class="{kind}" data-entry="{esc(row.data["name"])}" '
                        f'data-family="{number}" '
                        f'title="click: details of {esc(row.data["name"])}">{cells}</tr>')
            body.append(_details(row, len(cols) + 1))
    return (f'<table class="board" data-track="{esc(board.track_id)}"><thead><tr>{head}</tr>'
            f'</thead><tbody>{"".join(body)}</tbody></table>')


def html_page(tracks: dict[str, Board], plots: dict[str, bytes]) -> str:
    """One self-contained page: per track the plot, the table (sortable by a click on a column
    heading; a row opens its details) and the notes."""
    parts, toc = [], []
    for track_id, board in tracks.items():
        image = base64.b64encode(plots[track_id]).decode()
        toc.append(f'<li><a href="#{esc(track_id)}">{esc(title(track_id))}</a></li>')
        parts.append(
            f'<section id="{esc(track_id)}"><h2>{esc(title(track_id))}</h2>'
            f'<img class="plot" data-track="{esc(track_id)}" alt="{esc(track_id)}: emotion UAR '
            f'vs {esc(board.track.label)}, one line per defense family" '
            f'src="data:image/png;base64,{image}">'
            f'{_table(board)}'
            f'<ul class="notes">{"".join(f"<li>{esc(n)}</li>" for n in notes(board.rows))}</ul>'
            f'</section>')
    return (f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f'<title>serbench leaderboard</title><style>{_STYLE}</style></head><body>'
            f'<h1>serbench leaderboard</h1><p class="legend">{esc(LEGEND)} Click a column '
            f'heading to sort (the "family" column restores the grouping); click a row for its '
            f'configuration, accounting context, provenance and verification status.</p>'
            f'<ul class="toc">{"".join(toc)}</ul>'
            f'{"".join(parts)}<script>{_SCRIPT}</script></body></html>\n')
