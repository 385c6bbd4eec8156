"""Run configurations as TOML files.

``serbench eval --config run.toml`` reads every ``eval`` option from a file (command-line
options override it), and every run directory holds a ``config.toml`` that re-runs it:
``serbench eval --config runs/<run>/config.toml``. A file's values are turned into what the
command line would have given (``KEY=VALUE`` strings for plugin and corpus parameters, lists
joined with commas), so a setting means the same whichever way it arrives, and a value the
command line would reject the file cannot smuggle in.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomli_w

from serbench.errors import SerbenchError
from serbench.protocol import DISJOINT


@dataclass
class EvalConfig:
    """Everything that determines an evaluation's numbers, and how many worker processes
    compute it (:data:`NOT_RESOLVED`: no number depends on it)."""

    attack: str
    defense: str = "none"
    dataset: str = "synth"
    data_root: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    shadow: str = DISJOINT
    shadow_root: list[str] = field(default_factory=list)
    features: str | None = None
    folds: list[int] | None = None
    seed: int = 0
    engine: str = "inprocess"
    attack_params: dict[str, Any] = field(default_factory=dict)
    defense_params: dict[str, Any] = field(default_factory=dict)
    #: Worker processes for a run's independent work (0: one per usable CPU).
    workers: int = 0


def eval_config(options: Mapping[str, Any]) -> tuple[EvalConfig, Path | None]:
    """The :class:`EvalConfig` and ``--out`` the options describe (defaults
    for what they leave out); ``layer`` and ``analysis`` go into the attack's parameters."""
    if not options.get("attack"):
        raise SerbenchError("no attack: give --attack NAME (or attack = \"NAME\" in --config)")
    attack_params = dict(options.get("attack_params", {}))
    if options.get("layer") is not None:
        attack_params["layer"] = options["layer"]
    if options.get("analysis"):
        attack_params["analyses"] = ",".join(options["analysis"])
    given = {k: options[k] for k in RUN_KEYS if k not in ("attack", "folds", "attack_params")
             and options.get(k) is not None}
    cfg = EvalConfig(attack=options["attack"], folds=parse_folds(options.get("folds", "all")),
                     attack_params=attack_params, **given)
    if cfg.workers < 0:
        raise SerbenchError(f"--workers {cfg.workers}: give 0 (one per CPU) or more")
    out = options.get("out")
    return cfg, Path(out) if out is not None else None


#: The one list of configuration keys, from :class:`EvalConfig`: written to a run directory's
#: config.toml in this order; with the options that are not its fields (``layer`` and
#: ``analysis`` go into the attack's parameters, ``out`` names the run directory), the
#: top-level keys of a --config file and the ``eval`` command's options (``param`` is
#: ``defense_params``, ``attack-param`` ``attack_params``, ``dataset-option``
#: ``dataset_options``).
RUN_KEYS = tuple(f.name for f in dataclasses.fields(EvalConfig))
TABLES = tuple(f.name for f in dataclasses.fields(EvalConfig) if f.default_factory is dict)
LISTS = (*(f.name for f in dataclasses.fields(EvalConfig) if f.default_factory is list),
         "analysis")
INTEGERS = tuple(f.name for f in dataclasses.fields(EvalConfig) if f.type == "int")
SCALARS = (*(k for k in RUN_KEYS if k not in (*TABLES, *LISTS, *INTEGERS)), "layer", "out")
KEYS = (*SCALARS, *INTEGERS, *LISTS, *TABLES)
#: Keys that change how a run computes, never what: left out of its resolved configuration
#: (config.json, which a resumed run must match), recorded in environment.json.
NOT_RESOLVED = ("workers",)
RUN_HEADER = ("# serbench eval --config THIS_FILE re-runs this run (into a new directory unless\n"
              "# --out is given); options given on the command line override the file.\n")


def read_config(path: Path) -> dict[str, Any]:
    """The options in the TOML file ``path``, as the command line gives them: scalars as
    strings (:data:`INTEGERS` ints), ``shadow_root`` and ``analysis`` lists of strings, and
    the parameter tables ``{key: "value"}``. Unknown keys and wrong types are one-line
    errors."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise SerbenchError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SerbenchError(f"{path}: not valid TOML ({str(exc).splitlines()[0]})") from None
    out: dict[str, Any] = {}
    for key, value in data.items():
        where = f"{path}: {key!r}"
        if key not in KEYS:
            raise SerbenchError(f"{path}: unknown key {key!r}; valid keys: {', '.join(KEYS)}")
        if key in INTEGERS:
            if isinstance(value, bool) or not isinstance(value, int):
                raise SerbenchError(f"{where} must be an integer, not {value!r}")
            out[key] = value
        elif key in TABLES:
            if not isinstance(value, dict):
                raise SerbenchError(f"{where} must be a table ([{key}]), not {value!r}")
            out[key] = {k: _text(v, f"{where}.{k}", mapping=key == "dataset_options")
                        for k, v in value.items()}
        elif key in LISTS:
            items = value if isinstance(value, list) else [value]
            out[key] = [_text(v, where) for v in items]
        elif key == "folds" and isinstance(value, int | list) and not isinstance(value, bool):
            out[key] = _text(value, where)  # [1, 3] -> "1,3", as --folds takes it
        elif isinstance(value, str):
            out[key] = value
        else:
            raise SerbenchError(f"{where} must be a string, not {value!r}")
    return out


def merge(file: Mapping[str, Any], given: Mapping[str, Any]) -> dict[str, Any]:
    """``file``'s options overridden by the command line's (``given``: only options the user
    typed). Parameter tables merge key by key; anything else is replaced whole."""
    out = dict(file)
    for key, value in given.items():
        out[key] = {**out.get(key, {}), **value} if key in TABLES else value
    return out


def parse_folds(text: str) -> list[int] | None:
    """``all`` (None) or comma-separated fold numbers, as ``--folds`` takes them."""
    if text.strip() == "all":
        return None
    try:
        return sorted({int(f) for f in text.split(",")})
    except ValueError:
        raise SerbenchError(f"--folds {text!r}: expected 'all' or comma-separated fold numbers") \
            from None


def run_config_text(resolved: Mapping[str, Any]) -> str:
    """config.toml for a run whose resolved configuration (config.json's content) is
    ``resolved``: every EvalConfig field, plugin parameters as resolved, paths absolute so
    the file re-runs from any directory. A value of None is written as "none", which the
    parameters it can occur in read back as None."""
    data = {}
    for key in RUN_KEYS:
        value = resolved.get(key)
        if value is None or value == [] and key == "shadow_root":
            continue  # absent means the default (folds: all, data_root: the corpus's own)
        if key == "data_root":
            value = str(Path(value).expanduser().absolute())
        elif key == "shadow_root":
            value = [str(Path(v).expanduser().absolute()) for v in value]
        data[key] = _toml_value(value)
    return RUN_HEADER + tomli_w.dumps(data)


def write_run_config(path: Path, resolved: Mapping[str, Any]) -> None:
    """Write :func:`run_config_text` to ``path`` (atomically, like every result file)."""
    from serbench.io import atomic_write_text

    atomic_write_text(path, run_config_text(resolved))


def _text(value: Any, where: str, mapping: bool = False) -> str:
    """A TOML value as the command line's string: lists comma-joined, booleans lower-case,
    and (for ``mapping``: dataset options such as ``map``) tables as ``OLD:NEW`` pairs."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | int | float):
        return str(value)
    if isinstance(value, list):
        return ",".join(_text(v, where) for v in value)
    if mapping and isinstance(value, dict):
        return ",".join(f"{_text(k, where)}:{_text(v, where)}" for k, v in value.items())
    raise SerbenchError(f"{where}: unsupported value {value!r}")


def _toml_value(value: Any) -> Any:
    if value is None:
        return "none"
    if isinstance(value, dict):
        return {str(k): _toml_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_toml_value(v) for v in value]
    return value
