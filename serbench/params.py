"""Typed parameters from ``KEY=VALUE`` strings, for plugins and corpus options alike."""

from __future__ import annotations

from typing import Any

from serbench.errors import SerbenchError


def coerce(value: Any, hint: Any, what: str) -> Any:
    """``value`` as type ``hint`` if it is a string (from the command line); else unchanged."""
    if not isinstance(value, str):
        return value
    target = hint if isinstance(hint, type) else next(
        (t for t in getattr(hint, "__args__", ()) if t is not type(None)), str)
    if value.lower() in ("none", "null") and type(None) in getattr(hint, "__args__", ()):
        return None
    try:
        if target is bool:
            if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                raise ValueError(value)
            return value.lower() in ("true", "1", "yes")
        return target(value)
    except (TypeError, ValueError):
        raise SerbenchError(f"{what}: {value!r} is not a valid {target.__name__}") from None
