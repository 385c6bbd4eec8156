"""User-facing errors.

Anything a user can get wrong (a path, a file, a name, a value) raises :class:`SerbenchError`
with one line naming the culprit; the CLI prints it without a traceback and exits non-zero.
"""

from __future__ import annotations

from collections.abc import Iterable


class SerbenchError(Exception):
    """A problem with the user's input, reported as one line."""


def unknown_name(kind: str, name: str, valid: Iterable[str]) -> SerbenchError:
    """The error for a name that is not one of ``valid`` (lists the valid ones)."""
    return SerbenchError(f"unknown {kind} {name!r}; valid: {', '.join(sorted(valid))}")
