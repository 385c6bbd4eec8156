"""Progress reporting that attacks use without knowing about the terminal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol

Advance = Callable[[int], None]


class Reporter(Protocol):
    def track(self, description: str, total: int | None) -> "contextmanager[Advance]": ...

    def log(self, message: str) -> None: ...


class NullReporter:
    """Silent: for tests and library use."""

    @contextmanager
    def track(self, description: str, total: int | None) -> Iterator[Advance]:
        yield lambda n=1: None

    def log(self, message: str) -> None:
        pass


class RichReporter:
    """Progress bars and log lines on a :class:`rich.progress.Progress`."""

    def __init__(self, progress) -> None:  # rich.progress.Progress
        self.progress = progress

    @contextmanager
    def track(self, description: str, total: int | None) -> Iterator[Advance]:
        task = self.progress.add_task(description, total=total)
        try:
            yield lambda n=1: self.progress.advance(task, n)
        finally:
            self.progress.update(task, completed=total or 0, visible=False)
            self.progress.remove_task(task)

    def log(self, message: str) -> None:
        self.progress.console.log(message)
