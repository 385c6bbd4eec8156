"""Per track, emotion UAR against the worst case (SPEC §7): each family (a defense at several
strengths) as a line through its entries in strength order, 95% CIs as faint error bars, the
Pareto front as a staircase, chance leakage dotted. Labels never overlap: each is placed where
it collides with no other label and no point, or left out (its family's line, the legend and
the tables still identify the point). Uses matplotlib's object API only: no global state."""

from __future__ import annotations

from itertools import cycle
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.transforms import Bbox

from serbench.io import atomic_path
from serbench.leaderboard.families import BASELINE, Family, Row
from serbench.leaderboard.views import Board, title

#: Where a label may go around its point: offset (points), alignment; tried in this order, then
#: again farther out with a leader line.
_PLACES = [(6, 6, "left", "bottom"), (6, -6, "left", "top"), (-6, 6, "right", "bottom"),
           (-6, -6, "right", "top"), (0, 9, "center", "bottom"), (0, -9, "center", "top"),
           (9, 0, "left", "center"), (-9, 0, "right", "center")]
_RADII = (1.0, 2.4, 4.0)
#: Points closer than this (pixels) share one label.
_MERGE_PX = 5.0
_MARKERS = "osD^vPX*<>ph"
GID = "family:"


def _labels(fam: Family, row: Row) -> tuple[str, str]:
    """A point's label on its own (the strength within a family, else the entry's name) and
    where it shares a place with another family's point (qualified by the defense)."""
    strength = fam.strength(row) if len(fam.rows) > 1 else ""
    if not strength:
        return row.data["name"], row.data["name"]
    return strength, f"{fam.defense} {strength}"


def _box(x: float, y: float, pad: float) -> Bbox:
    return Bbox.from_extents(x - pad, y - pad, x + pad, y + pad)


def _place_labels(fig: Figure, ax, points: list[tuple[float, float, tuple[str, str], str]],
                  lines: list[list[tuple[float, float]]]) -> list:
    """Annotate ``points`` (x, y, (label, qualified label), colour) so that no label overlaps
    another, a point or a family's line; returns the texts placed."""
    renderer = fig.canvas.get_renderer()
    to_px = ax.transData.transform
    frame = ax.get_window_extent(renderer)
    # Points that (nearly) coincide share one label, e.g. defenses that leave a track alone.
    clusters: list[list] = []
    for x, y, texts, colour in points:
        px = to_px((x, y))
        for c in clusters:
            if abs(c[0][0] - px[0]) <= _MERGE_PX and abs(c[0][1] - px[1]) <= _MERGE_PX:
                c[2].append(texts)
                c[3].add(colour)
                break
        else:
            clusters.append([px, (x, y), [texts], {colour}])
    obstacles = [_box(*c[0], 4.0) for c in clusters]
    for line in lines:  # a label may not hide the segments that make a family a curve
        for (x0, y0), (x1, y1) in zip(line, line[1:]):
            (a, b), (c, d) = to_px((x0, y0)), to_px((x1, y1))
            steps = max(2, int(max(abs(c - a), abs(d - b)) / 4))
            obstacles += [_box(a + (c - a) * i / steps, b + (d - b) * i / steps, 1.5)
                          for i in range(1, steps)]
    placed, texts = [], []
    for px, xy, labels, colours in sorted(clusters, key=lambda c: (-c[0][1], c[0][0])):
        mixed = len(colours) > 1
        text = ", ".join(dict.fromkeys(q if mixed else t for t, q in labels))
        colour = "0.25" if mixed else next(iter(colours))
        done = False
        for radius in _RADII:
            for dx, dy, ha, va in _PLACES:
                arrow = {"arrowstyle": "-", "color": colour, "lw": 0.6,
                         "shrinkA": 0, "shrinkB": 3} if radius > 1 else None
                t = ax.annotate(text, xy, xytext=(dx * radius, dy * radius),
                                textcoords="offset points", ha=ha, va=va, fontsize=7.5,
                                color=colour, arrowprops=arrow)
                box = t.get_window_extent(renderer).expanded(1.04, 1.12)
                inside = (box.x0 >= frame.x0 and box.x1 <= frame.x1 and box.y0 >= frame.y0
                          and box.y1 <= frame.y1)
                if inside and not any(box.overlaps(o) for o in placed + obstacles):
                    placed.append(box)
                    texts.append(t)
                    done = True
                    break
                t.remove()
            if done:
                break
    return texts


def figure(board: Board) -> Figure:
    """The track's plot as a matplotlib figure (lines of family members carry the gid
    ``family:<label>``, in strength order)."""
    track = board.track
    fig = Figure(figsize=(9.0, 5.6), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    colours = cycle([f"C{i}" for i in range(10)])
    markers = cycle(_MARKERS)
    labels, lines = [], []
    trial_done = False
    for fam in board.families:
        rows = [r for r in fam.rows if not r.entry.problem]
        if not rows:
            continue
        colour = "black" if fam.defense == BASELINE else next(colours)
        marker = next(markers)
        xs = [r.worst["uar"] for r in rows]
        ys = [r.utility["uar"] for r in rows]
        for r, x, y in zip(rows, xs, ys):
            ax.errorbar(x, y, xerr=[[x - r.worst["ci"][0]], [r.worst["ci"][1] - x]],
                        yerr=[[y - r.utility["ci"][0]], [r.utility["ci"][1] - y]],
                        fmt="none", ecolor=colour, alpha=0.28, lw=0.9, capsize=2)
        ax.plot(xs, ys, ls="-" if len(rows) > 1 else "none", marker=marker, color=colour, lw=1.6,
                ms=6, label=fam.label, gid=GID + fam.label, zorder=3)
        lines.append(list(zip(xs, ys)))
        for r, x, y in zip(rows, xs, ys):
            if r.status == "trial":
                ax.plot([x], [y], marker=marker, ms=6, color=colour, mfc="white", zorder=4,
                        label=None if trial_done else "trial entry (hollow)")
                trial_done = True
            labels.append((x, y, _labels(fam, r), colour))
    front = sorted((r.worst["uar"], r.utility["uar"]) for r in board.rows if r.pareto)
    if front:  # a staircase: what is attainable between the front's points
        ax.plot(*zip(*front), "--", color="C3", lw=1.0, alpha=0.8, label="Pareto front",
                drawstyle="steps-post" if track.higher_is_worse else "steps-pre", zorder=2)
    if track.higher_is_worse:
        ax.axvline(0.5, color="grey", ls=":", label="chance (gender UAR 0.5)")
    ax.margins(0.12)
    ax.set_xlabel(f"{track.label} (UAR; {'lower' if track.higher_is_worse else 'higher'} "
                  f"is better); bars: CIs")
    ax.set_ylabel("emotion UAR (higher is better)")
    ax.set_title(title(board.track_id), fontsize=10)
    ax.grid(alpha=0.25)
    fig.legend(loc="outside right upper", fontsize=8, frameon=False)
    fig.canvas.draw()  # lay the figure out, then freeze it so that labels can be measured
    fig.set_layout_engine("none")
    _place_labels(fig, ax, labels, lines)
    return fig


def plot(board: Board, path: Path) -> None:
    """Write the track's plot as a PNG (atomically)."""
    fig = figure(board)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
