"""``serbench leaderboard``: show, submit, verify and render entries (docs/leaderboard.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape

app = typer.Typer(help="The leaderboard: one JSON entry per defense configuration and track "
                       "(corpus, threat surface). See docs/leaderboard.md.",
                  no_args_is_help=True)
console = Console()
err_console = Console(stderr=True)

Directory = Annotated[Path, typer.Option(
    "--dir", help="Leaderboard directory (entries: DIR/<corpus>/<surface>/<name>.json).")]


def _report_rejected(rejected: list[str]) -> None:
    """Invalid entry files: one line each, and a failing exit status (for CI)."""
    for reason in rejected:
        err_console.print(f"[red]rejected[/] {escape(reason)}", highlight=False, soft_wrap=True)
    if rejected:
        raise typer.Exit(1)


@app.command("show")
def show_cmd(
    track: Annotated[Optional[str], typer.Option(
        help="Only this track, CORPUS/SURFACE, e.g. synth/update.")] = None,
    directory: Directory = Path("leaderboards"),
) -> None:
    """Print the leaderboard: one table per track, Pareto front and inconsistent entries marked."""
    from serbench.leaderboard.entry import load_entries
    from serbench.leaderboard.tracks import parse_track
    from serbench.leaderboard.views import boards, rich_table

    wanted = parse_track(track) if track else None
    entries, rejected = load_entries(directory)
    entries = [e for e in entries if wanted in (None, (e.data["corpus"], e.data["surface"]))]
    for board in boards(entries).values():
        console.print(rich_table(board))
    if not entries:
        console.print(f"no entries under {directory}" + (f" for track {track}" if track else ""))
    _report_rejected(rejected)


@app.command("submit")
def submit_cmd(
    runs: Annotated[list[Path], typer.Argument(
        help="Run directories of `serbench eval`: every attack of the track, same defense.")],
    name: Annotated[str, typer.Option(help="Entry name: letters, digits, '_', '.', '-'.")],
    directory: Directory = Path("leaderboards"),
    allow_reduced: Annotated[bool, typer.Option(
        help="Accept attacks with non-default parameters or a corpus with non-default "
             "options (a trial entry, marked as such, never on the Pareto front).")] = False,
    replace: Annotated[bool, typer.Option(help="Overwrite an entry of the same name.")] = False,
) -> None:
    """Check that runs follow the standard protocol and write their leaderboard entry."""
    from serbench.leaderboard.entry import read_entry, validate_name

    validate_name(name)  # before the heavy imports: a bad name fails at once
    from serbench.leaderboard.submit import submit
    from serbench.leaderboard.views import boards, rich_table

    path = submit(runs, name, directory, allow_reduced, replace)
    entry = read_entry(path, directory)
    for board in boards([entry]).values():
        console.print(rich_table(board))
    console.print(f"entry written: {path}")


@app.command("verify")
def verify_cmd(
    entry: Annotated[Path, typer.Argument(help="The entry's JSON file.")],
    folds: Annotated[str, typer.Option(
        help="'all' (default) or a spot check of some folds, e.g. 1 (their per-fold UARs).")
    ] = "all",
    tolerance: Annotated[Optional[float], typer.Option(
        help="Smallest tolerance of any UAR (default 0.01); each number's own is derived from "
             "its sampling error (its CI half-width).")] = None,
    out: Annotated[Optional[Path], typer.Option(
        help="Keep the re-runs here (resumable); default: a temporary directory.")] = None,
    data_root: Annotated[Optional[Path], typer.Option(
        help="The corpus on this machine, if not where the entry's runs found it.")] = None,
    defense: Annotated[Optional[str], typer.Option(
        help="The defense plugin, as an installed name or path/to/file.py:ClassName (needed "
             "when the entry's defense was a file).")] = None,
) -> None:
    """Re-run an entry's configuration and compare its numbers within a tolerance."""
    from rich.progress import Progress
    from rich.table import Table

    from serbench.config import parse_folds
    from serbench.leaderboard.entry import read_entry

    loaded = read_entry(entry)  # before the heavy imports: a malformed entry fails at once
    from serbench.leaderboard.verify import TOLERANCE, verify
    from serbench.progress import RichReporter

    tolerance = TOLERANCE if tolerance is None else tolerance
    with Progress(console=err_console, transient=True,
                  disable=not err_console.is_terminal) as progress:
        result = verify(loaded, folds=parse_folds(folds), tolerance=tolerance, out=out,
                        data_root=str(data_root) if data_root else None, defense=defense,
                        reporter=RichReporter(progress))
    table = Table(title=f"verify {entry}", title_justify="left", header_style="bold")
    for heading in ("number", "entry", "re-run", "|Δ|", "tolerance", ""):
        table.add_column(heading, justify="left" if heading == "number" else "right",
                         overflow="fold" if heading == "number" else None)
    for c in result.comparisons:
        table.add_row(c.what, *("missing" if x is None else f"{x:.4f}"
                                for x in (c.entry, c.rerun, c.delta, c.tolerance)),
                      "exact" if c.exact else "within" if c.ok else "✗",
                      style=None if c.ok else "red")
    console.print(table)
    if result.identical is not None:
        console.print("re-run content hashes " + ("identical to the entry's: an exact "
                      "reproduction" if result.identical else "differ from the entry's"))
    failed = [c for c in result.comparisons if not c.ok]
    exact = sum(c.exact for c in result.comparisons)
    if failed:
        console.print(f"[red]FAILED[/]: {len(failed)} of {len(result.comparisons)} numbers "
                      f"differ from the entry's by more than their tolerance")
        raise typer.Exit(1)
    console.print(f"verified: {exact} of {len(result.comparisons)} numbers exact, the rest "
                  f"within their tolerance (CI half-width, at least ±{tolerance})")


@app.command("render")
def render_cmd(
    directory: Directory = Path("leaderboards"),
    out: Annotated[Optional[Path], typer.Option(
        help="Where to write leaderboard.md, leaderboard.html and the plots (default: "
             "--dir).")] = None,
) -> None:
    """Write the leaderboard as Markdown, a static HTML page and one Pareto plot per track."""
    from serbench.errors import SerbenchError
    from serbench.leaderboard.entry import load_entries
    from serbench.leaderboard.render import render

    entries, rejected = load_entries(directory)
    if not entries:
        raise SerbenchError(f"no valid entries under {directory}")
    for path in render(entries, out or directory):
        console.print(f"wrote {path}")
    _report_rejected(rejected)
