"""Progress reporting that attacks use without knowing about the terminal."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Protocol

Advance = Callable[[int], None]


class Reporter(Protocol):
    def track(self, description: str, total: int | None) -> "contextmanager[Advance]": ...

    def log(self, message: str) -> None: ...

    def stage(self, stage: str, *, mode: str | None = None, fold: int | None = None,
              folds: Sequence[int] = ()) -> None:
        """Where the run as a whole is: its attack mode, its fold (of ``folds``) and what it is
        doing (the runner says; the per-run bars show the rest)."""


class NullReporter:
    """Silent: for tests and library use."""

    @contextmanager
    def track(self, description: str, total: int | None) -> Iterator[Advance]:
        yield lambda n=1: None

    def log(self, message: str) -> None:
        pass

    def stage(self, stage: str, *, mode: str | None = None, fold: int | None = None,
              folds: Sequence[int] = ()) -> None:
        pass


class RichReporter:
    """Progress bars and log lines on a :class:`rich.progress.Progress`: one overall line
    (attack mode, fold k of n, stage) above the bars of the runs in progress. Log lines carry
    their time, not the logger's own source line."""

    def __init__(self, progress) -> None:  # rich.progress.Progress
        self.progress = progress
        self.overall = None  # the overall line's task, made at the first stage
        self._last_time = ""

    @contextmanager
    def track(self, description: str, total: int | None) -> Iterator[Advance]:
        task = self.progress.add_task(description, total=total)
        try:
            yield lambda n=1: self.progress.advance(task, n)
        finally:
            self.progress.update(task, completed=total or 0, visible=False)
            self.progress.remove_task(task)

    def stage(self, stage: str, *, mode: str | None = None, fold: int | None = None,
              folds: Sequence[int] = ()) -> None:
        from rich.markup import escape

        folds = list(folds)
        where = [mode] if mode else []
        if fold is not None:
            if folds == list(range(1, len(folds) + 1)):
                where.append(f"fold {fold} of {len(folds)}")
            else:  # e.g. --folds 2,4: fold 4 is the second of two
                where.append(f"fold {fold} ({folds.index(fold) + 1} of {len(folds)})")
        text = escape(" · ".join([*where, stage]))
        done = folds.index(fold) if fold in folds else 0  # the folds before this one
        if self.overall is None:
            self.overall = self.progress.add_task(text, total=len(folds) or None)
        self.progress.update(self.overall, description=f"[bold]{text}[/]", completed=done,
                             **({"total": len(folds)} if folds else {}))

    def log(self, message: str) -> None:
        """``[time] message``, wrapped beside the time as rich's log lines are, without the
        source path rich would add at the right margin (the reporter's own line)."""
        from rich.table import Table
        from rich.text import Text

        console = self.progress.console
        now = datetime.now().strftime("[%X]")
        grid = Table.grid(padding=(0, 1), expand=True)
        grid.add_column(style="log.time")
        grid.add_column(ratio=1, style="log.message", overflow="fold")
        grid.add_row(Text(now if now != self._last_time else " " * len(now)),
                     console.render_str(message, markup=False))
        self._last_time = now
        console.print(grid)
