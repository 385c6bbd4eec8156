"""Where serbench keeps files it can rebuild (generated corpora), shared by all commands."""

from __future__ import annotations

import os
from pathlib import Path


def serbench_cache_dir() -> Path:
    """The cache root: ``$SERBENCH_CACHE`` or ``~/.cache/serbench``.

    One overridable place, so tests and clusters with a small home directory can move every
    rebuildable file with a single environment variable. Not created here: writers create what
    they need beneath it.
    """
    return Path(os.environ.get("SERBENCH_CACHE", "~/.cache/serbench")).expanduser()
