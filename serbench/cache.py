"""Where serbench keeps files it can rebuild (generated corpora), shared by all commands."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

try:
    import fcntl
except ImportError:  # not POSIX: concurrent runs may compute an entry twice, never mix it
    fcntl = None


def serbench_cache_dir() -> Path:
    """The cache root: ``$SERBENCH_CACHE`` or ``~/.cache/serbench``.

    One overridable place, so tests and clusters with a small home directory can move every
    rebuildable file with a single environment variable. Not created here: writers create what
    they need beneath it.
    """
    return Path(os.environ.get("SERBENCH_CACHE", "~/.cache/serbench")).expanduser()


@contextmanager
def cache_lock(key: str, cache_dir: Path | None = None) -> Iterator[OSError | None]:
    """Hold an exclusive lock named ``key`` (a file under the cache's ``locks/``).

    Cache entries are written atomically, so concurrent runs never read half an entry; the lock
    only stops them computing the same missing entries at once (two baselines running side by
    side, two test workers): the second waits, then finds them done. It ends with the process.

    Yields None once locked, or the error that kept the lock file from being made (a cache the
    run cannot write: nothing to share, so the block runs unlocked and the caller says so).
    """
    path = (cache_dir or serbench_cache_dir()) / "locks" / f"{key}.lock"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a")
    except OSError as exc:
        error = exc
    else:
        with fh:
            try:
                if fcntl is not None:
                    fcntl.flock(fh, fcntl.LOCK_EX)
            except OSError as exc:  # e.g. a network file system without locks
                error = exc
            else:
                yield None
                return
    yield error
