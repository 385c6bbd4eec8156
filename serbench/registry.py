"""Finding plugins by name: Python entry points (``serbench.attacks`` / ``serbench.defenses``,
built-ins included) or a file, ``path/to/file.py:ClassName``, for a defense under development."""

from __future__ import annotations

import importlib.util
import sys
from importlib.metadata import entry_points
from pathlib import Path

from serbench.errors import SerbenchError, unknown_name
from serbench.context import Attack
from serbench.plugins import USER_MODULES, Defense, Plugin

BASES: dict[str, type[Plugin]] = {"attack": Attack, "defense": Defense}


def entry_point_names(kind: str) -> list[str]:
    """Names of the installed plugins of ``kind`` ("attack" or "defense"), without importing
    them: one broken third-party plugin must not break every command."""
    return sorted({ep.name for ep in entry_points(group=f"serbench.{kind}s")})


def available(kind: str) -> dict[str, type[Plugin]]:
    """Installed plugins of ``kind`` that import, by name (a broken one is left out)."""
    found = {}
    for name in entry_point_names(kind):
        try:
            found[name] = load_plugin(kind, name)
        except SerbenchError:
            continue
    return found


def load_plugin(kind: str, ref: str) -> type[Plugin]:
    """The plugin class for a name or a ``file.py:ClassName`` reference."""
    path, sep, cls_name = ref.rpartition(":")
    if sep and path.endswith(".py"):
        return _from_file(kind, Path(path), cls_name)
    eps = [ep for ep in entry_points(group=f"serbench.{kind}s") if ep.name == ref]
    if not eps:
        raise unknown_name(kind, ref, entry_point_names(kind))
    try:
        cls = eps[0].load()
    except Exception as exc:  # a plugin's import failure: report it, don't trace back
        raise SerbenchError(f"{kind} {ref!r} ({eps[0].value}) cannot be imported: "
                            f"{type(exc).__name__}: {exc}") from None
    if not (isinstance(cls, type) and issubclass(cls, BASES[kind])):
        raise SerbenchError(f"{kind} {ref!r} ({eps[0].value}) is not a {BASES[kind].__name__}")
    return cls


def _from_file(kind: str, path: Path, cls_name: str) -> type[Plugin]:
    if not path.is_file():
        raise SerbenchError(f"{kind} file {path} does not exist")
    module_name = f"{USER_MODULES}{kind}_{path.stem}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses resolve annotations through sys.modules
    try:
        spec.loader.exec_module(module)
    except Exception as exc:  # a user's plugin file: report, don't trace back
        raise SerbenchError(f"{path}: cannot import ({type(exc).__name__}: {exc})") from None
    cls = getattr(module, cls_name, None)
    base = BASES[kind]
    if not (isinstance(cls, type) and issubclass(cls, base)):
        raise SerbenchError(f"{path}: no {base.__name__} subclass named {cls_name!r}")
    return cls
