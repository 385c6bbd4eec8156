"""``serbench leaderboard render``: the board's files (Markdown, HTML page, one plot per
track) from its entries."""

from __future__ import annotations

from pathlib import Path

from serbench.io import atomic_write_text
from serbench.leaderboard.entry import Entry
from serbench.leaderboard.page import html_page
from serbench.leaderboard.plot import plot
from serbench.leaderboard.views import boards, markdown, plot_name


def render(entries: list[Entry], out: Path) -> list[Path]:
    """Write leaderboard.md, leaderboard.html and one PNG per track into ``out``."""
    tracks = boards(entries)
    written = []
    for track_id, board in tracks.items():
        written.append(out / plot_name(track_id))
        plot(board, written[-1])
    plots = {t: (out / plot_name(t)).read_bytes() for t in tracks}
    for name, text in (("leaderboard.md", markdown(tracks)),
                       ("leaderboard.html", html_page(tracks, plots))):
        atomic_write_text(out / name, text)
        written.append(out / name)
    return written
