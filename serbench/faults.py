"""Faults of the machine, not of the input: a full disk, a directory that cannot be written, a
corrupt cache entry, Ctrl-C. Each becomes one line, in this one place:

- An :class:`OSError` the environment causes (no space, no permission, a read-only file system,
  ...) reaches the command line's top level and is printed as ``error: PATH: REASON; WHAT TO
  DO`` with exit status 1 (:func:`describe`). The atomic writer (:mod:`serbench.io`) names the
  file it was writing and leaves the old file or none, so a run directory stays resumable.
- Ctrl-C raises :class:`Interrupted` in the main thread (:func:`interrupts_raise`; deferred
  while worker processes start, :func:`interrupts_deferred`); the command line prints
  ``interrupted; rerun with the same --out to resume: COMMAND`` and exits 130. Worker
  processes never see the terminal's SIGINT and are stopped by the pool
  (:mod:`serbench.workers`).
- A problem the run survives (a corrupt cache entry, a cache it cannot write) is one
  ``warning:`` line (:func:`warn`), and the run goes on.
"""

from __future__ import annotations

import errno
import shlex
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from serbench.cache import serbench_cache_dir

#: Exit status of a command stopped by Ctrl-C (128 + SIGINT, as shells report it).
INTERRUPTED = 130

#: What to do about each error the environment causes (anything else: check the path).
_ADVICE = {getattr(errno, name): advice for name, advice in (
    ("ENOSPC", "free space on its disk"),
    ("EDQUOT", "free space within your disk quota"),
    ("EFBIG", "choose a file system that allows larger files"),
    ("EACCES", "give yourself permission there or choose another directory"),
    ("EPERM", "give yourself permission there or choose another directory"),
    ("EROFS", "choose a directory on a writable file system"),
    ("EIO", "check the disk (an input/output error)"),
    ("EMFILE", "raise the open-file limit (ulimit -n)"),
    ("ENFILE", "close other programs' files or raise the system's open-file limit"),
) if hasattr(errno, name)}

_run_dirs: list[Path] = []


class Interrupted(BaseException):
    """Ctrl-C. Not a :class:`KeyboardInterrupt`, which click and typer turn into a silent exit;
    a :class:`BaseException`, so no ``except Exception`` swallows it."""


def reset() -> None:
    """Forget the run directories of a previous command (the CLI may run twice in-process)."""
    _run_dirs.clear()


def run_dir_opened(path: Path) -> None:
    """Called by :class:`serbench.results.RunDir`: where a rerun resumes."""
    _run_dirs.append(Path(path))


@contextmanager
def interrupts_raise() -> Iterator[None]:
    """Within the block, Ctrl-C (SIGINT) raises :class:`Interrupted` in the main thread. A
    SIGINT ignored at start (``nohup``, a background job) stays ignored."""
    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield
        return
    previous = signal.signal(signal.SIGINT, _raise_interrupted)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


_deferred = {"depth": 0, "pending": False}


def _raise_interrupted(signum: int, frame: object) -> None:
    if _deferred["depth"]:
        _deferred["pending"] = True
        return
    raise Interrupted()


@contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Ctrl-C within the block takes effect when it ends: for steps that must not stop
    halfway, such as starting worker processes (one left half started prints a traceback of
    its own when its parent is gone)."""
    _deferred["depth"] += 1
    try:
        yield
    finally:
        _deferred["depth"] -= 1
    if not _deferred["depth"] and _deferred["pending"]:
        _deferred["pending"] = False
        raise Interrupted()


def environmental(exc: OSError) -> bool:
    """Whether ``exc`` is the machine's fault at a path (reported in one line) rather than a bug
    (which keeps its traceback)."""
    return exc.errno in _ADVICE or exc.filename is not None


def describe(exc: OSError, argv: Sequence[str] | None = None) -> str:
    """``PATH: REASON; WHAT TO DO, then rerun: COMMAND`` for an error the environment caused."""
    path = exc.filename if exc.filename is not None else "?"
    reason = exc.strerror or str(exc)
    advice = _ADVICE.get(exc.errno, "check that path")
    if _under(Path(path), serbench_cache_dir()):
        advice += " (or set SERBENCH_CACHE to another directory)"
    return f"{path}: {reason}; {advice}, then {_rerun(argv)}"


def _under(path: Path, root: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):
        return False


def interrupted_line(argv: Sequence[str] | None = None) -> str:
    """The one line Ctrl-C prints."""
    return f"interrupted; {_rerun(argv)}"


def _rerun(argv: Sequence[str] | None) -> str:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "eval":
        return "rerun: " + _command(args)
    out = _resume_dir()
    if out is not None and not any(a == "--out" or a.startswith("--out=") for a in args):
        args += ["--out", str(out)]
    return "rerun with the same --out to resume: " + _command(args)


def _resume_dir() -> Path | None:
    """The directory a rerun resumes: the run directory opened, or the sweep holding it (whose
    config.toml re-runs the whole sweep; a run directory has a config.json)."""
    if not _run_dirs:
        return None
    first = _run_dirs[0]
    parent = first.parent
    if (parent / "config.toml").is_file() and not (parent / "config.json").exists():
        return parent
    return first


def _command(args: Sequence[str]) -> str:
    return shlex.join(["serbench", *args])


def warn(message: str) -> None:
    """One warning line on stderr (above the progress bars while they show)."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[yellow]warning:[/] {escape(message)}", highlight=False,
                               soft_wrap=True)
