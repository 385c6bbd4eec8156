"""The one way serbench writes a file: to a temporary file beside it, renamed into place once
complete, so a crash or an interrupted run never leaves a half-written result, cache entry or
plot behind (a reader sees the old file or the new one)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # matplotlib costs a quarter second to import; only plotting commands need it
    from matplotlib.figure import Figure


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """A temporary path to write ``path``'s new content to; it replaces ``path`` when the block
    ends without an exception, and is removed otherwise. Permissions follow the umask (results
    are meant to be shared), not mkstemp's 0600.

    An :class:`OSError` of the file system (no space, no permission, ...) is raised naming
    ``path``, not the temporary file (a failed ``write`` names no file at all), so the one line
    the command line prints for it (:mod:`serbench.faults`) says which file could not be
    written; ``path`` itself is then untouched."""
    path.parent.mkdir(parents=True, exist_ok=True)  # its error names the directory
    try:
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=path.suffix)
        os.close(fd)
    except OSError as exc:
        if exc.errno is None:
            raise
        raise _naming(exc, path) from exc
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as exc:
        with suppress(OSError):  # e.g. the file system turned read-only: keep the first error
            tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError) and exc.errno is not None and exc.filename in (None, name):
            raise _naming(exc, path) from exc
        raise


def _naming(exc: OSError, path: Path) -> OSError:
    """``exc`` as the same kind of error (its errno and message), about ``path``."""
    return OSError(exc.errno, exc.strerror or os.strerror(exc.errno), str(path))


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_figure(fig: Figure, path: Path, dpi: int = 120) -> None:
    """Save a figure made with matplotlib's object API (no pyplot, no global backend)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
