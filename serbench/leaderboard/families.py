"""Families (SPEC §7): one defense at several strengths on one track, shown as a curve; and the
undefended baseline each defended entry is compared with (attacker adequacy).

A family is the entries of a track with the same defense and the same parameters apart from its
strength: the parameter the defense declares as its strength (``Tags.strength``, e.g. ε, σ or
the training attack's budget), read from ``defense.params``, which every entry records. A
defense whose code is not at hand is grouped by the one numeric parameter that varies between
its entries, if there is one. The board knows no defense by name but the undefended baseline.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, field
from typing import Any

from serbench.leaderboard.entry import Entry, cells, describe_deviations, measure_roles, \
    restricted_to_seeds
from serbench.registry import entry_point_names, load_plugin
from serbench.scoring import signal

#: The defense whose entries are the attacker-adequacy baseline (a protocol concept).
BASELINE = "none"


@functools.cache
def declared_strength(ref: str) -> tuple[tuple[str, str], ...]:
    """The strength parameters, with their symbols, that the defense an entry names (its
    ``ref``) declares, where it is an installed plugin; none for a defense named by a file,
    which the board never imports (entries are data, never code)."""
    if ref not in entry_point_names("defense"):
        return ()
    return load_plugin("defense", ref).tags.strength


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


@dataclass
class Family:
    """A defense's entries on one track that differ in strength only, weakest axis value first."""

    defense: str
    #: The strength parameter, or None (one configuration, or no single varying parameter).
    axis: str | None
    #: The other parameters, shared by every member.
    fixed: tuple[tuple[str, Any], ...]
    #: Each declared strength parameter's symbol (an ε that is only a parameter reads
    #: "nominal ε").
    symbols: dict[str, str] = field(default_factory=dict)
    rows: list[Row] = field(default_factory=list)

    @property
    def symbol(self) -> str:
        return self.symbols.get(self.axis, self.axis) if self.axis else ""

    @property
    def label(self) -> str:
        """``dp (ε)``, ``dp (ε) [clip=0.5]`` when another family of the defense
        differs in a fixed parameter (see :func:`families`)."""
        text = self.defense + (f" ({self.symbol})" if self.axis and
                               len(self.rows) > 1 else "")
        return text + (f" [{self.distinct}]" if self.distinct else "")

    #: Set by :func:`families` where several families share a defense.
    distinct: str = ""

    def value(self, row: Row) -> float | None:
        if self.axis is None:
            return None
        v = row.data["defense"]["params"].get(self.axis)
        return float(v) if _number(v) else None

    def strength(self, row: Row) -> str:
        """``ε=10`` (empty for a family without an axis)."""
        v = self.value(row)
        return "" if v is None else f"{self.symbol}={v:g}"

    def span(self) -> str:
        """``ε 1 → 1000`` over the members."""
        values = [v for r in self.rows if (v := self.value(r)) is not None]
        if not values:
            return ""
        return f"{self.symbol} {min(values):g} → {max(values):g}"


def _axis(strength: dict[str, str], params: dict[str, Any], varying: list[str]) -> str | None:
    for name in strength:
        if params.get(name) is not None:
            return name
    if not strength and len(varying) == 1 and _number(params.get(varying[0])):
        return varying[0]
    return None


def families(rows: list[Row], worse: Any) -> list[Family]:
    """The track's rows as families, each ordered by strength (entries without one by name).
    Families come best first: by the best worst case among their consistent members (``worse``
    is the track's comparison), the baseline first among equals, then by name."""
    by_defense: dict[str, list[Row]] = {}
    for row in rows:
        by_defense.setdefault(row.data["defense"]["name"], []).append(row)
    out: list[Family] = []
    for defense, members in by_defense.items():
        keys = sorted({k for r in members for k in r.data["defense"]["params"]})
        varying = [k for k in keys if len({json.dumps(r.data["defense"]["params"].get(k))
                                           for r in members}) > 1]
        strength = dict(declared_strength(members[0].data["defense"]["ref"]))
        found: dict[tuple, Family] = {}
        for row in members:
            params = row.data["defense"]["params"]
            axis = _axis(strength, params, varying)
            fixed = tuple((k, params[k]) for k in sorted(params) if k not in {*strength, axis})
            key = (axis, json.dumps(fixed))
            found.setdefault(key, Family(defense, axis, fixed, strength)).rows.append(row)
        mine = list(found.values())
        if len(mine) > 1:  # name what tells them apart
            for fam in mine:
                others = [dict(f.fixed) for f in mine if f is not fam]
                differ = [f"{k}={v}" for k, v in fam.fixed
                          if any(o.get(k) != v for o in others)]
                fam.distinct = ", ".join(differ) or (fam.axis or "")
        for fam in mine:
            fam.rows.sort(key=lambda r, f=fam: (f.value(r) is None, f.value(r) or 0.0,
                                                r.data["name"]))
        out += mine

    def best(fam: Family) -> float:
        values = [r.worst["uar"] for r in fam.rows if not r.entry.problem] or [
            r.worst["uar"] for r in fam.rows]
        pick = values[0]
        for v in values[1:]:
            if worse(pick, v):
                pick = v
        return pick

    ranked: list[Family] = []
    for fam in sorted(out, key=lambda f: (f.defense != BASELINE, f.label)):
        i = 0
        while i < len(ranked) and not worse(best(ranked[i]), best(fam)):
            i += 1
        ranked.insert(i, fam)
    return ranked


def protocol_key(data: dict[str, Any]) -> str:
    """What two entries must share to be compared: the protocol (folds, seeds, shadow, corpus
    options, features), the attacks' deviations from their defaults, and the attacks' own
    parameters."""
    params = sorted({json.dumps([r["attack"], load_plugin("attack", r["attack"]).as_recorded(
        r["config"].get("attack_params") or {})], sort_keys=True) for r in data["runs"]})
    return json.dumps([data["protocol"], data["deviations"], params], sort_keys=True)


def assign_baselines(rows: list[Row]) -> None:
    """Set each defended row's :attr:`Row.baseline`: the undefended entry on the same track
    under the same protocol (consistent first, then the one named ``none``, then by name), or,
    where there is none, an undefended entry run at more seeds, restricted to the row's seeds
    (a family swept at one seed beside defaults at two)."""
    pool = sorted((r for r in rows if r.data["defense"]["name"] == BASELINE),
                  key=lambda r: (bool(r.entry.problem), r.data["name"] != BASELINE,
                                 r.data["name"]))
    keyed = [(protocol_key(r.data), r) for r in pool]
    restricted: dict[tuple[str, tuple[int, ...]], Row] = {}

    def at_seeds(base: Row, seeds: list[int]) -> Row:
        cache = (base.data["name"], tuple(seeds))
        if cache not in restricted:
            restricted[cache] = Row(Entry(base.entry.path, restricted_to_seeds(
                base.data, seeds), base.entry.problem), False)
        return restricted[cache]

    for row in rows:
        if row.data["defense"]["name"] == BASELINE:
            continue
        key, seeds = protocol_key(row.data), row.data["protocol"]["seeds"]
        row.baseline = next((r for k, r in keyed if k == key), None) or next(
            (at_seeds(r, seeds) for r in pool if set(seeds) < set(r.data["protocol"]["seeds"])
             and protocol_key(dict(r.data, protocol=dict(r.data["protocol"], seeds=seeds)))
             == key), None)


@dataclass
class Row:
    entry: Entry
    pareto: bool
    #: The undefended entry under the same protocol (attacker adequacy), set by
    #: :func:`assign_baselines`.
    baseline: Row | None = None
    #: The row's family and its strength label, set by :func:`boards`.
    family: Family | None = field(default=None, repr=False)

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
    def strength(self) -> str:
        return self.family.strength(self) if self.family else ""

    @property
    def status(self) -> str:
        """"ok", "trial" (reduced attacks) or "✗ inconsistent" (numbers not its predictions')."""
        if self.entry.problem:
            return "✗ inconsistent"
        return "ok" if self.data["standard"] else "trial"

    @property
    def signals(self) -> dict[str, list[dict[str, Any]]]:
        """Per verdict of :func:`serbench.scoring.signal` (leaks, mis-signed), the measures of
        any attack and mode whose CI lies wholly on that side of chance."""
        roles = measure_roles(self.data)
        out: dict[str, list[dict[str, Any]]] = {}
        for attack, mode, measure, stats in cells(self.data["results"]):
            verdict = signal(roles[attack][measure], tuple(stats["ci"]), stats["chance"])
            if verdict:
                out.setdefault(verdict, []).append(
                    {"attack": attack, "mode": mode, "measure": measure, **stats})
        return out

    @property
    def note(self) -> str | None:
        """Why the status is not "ok"."""
        if self.entry.problem:
            return self.entry.problem
        if not self.data["standard"]:
            return "reduced protocol: " + describe_deviations(self.data["deviations"])
        return None
