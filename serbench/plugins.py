"""The plugin base and the defense contract (:class:`Defense`); the attack contract,
:class:`serbench.context.Attack`, sits beside what an attack is given.

Both plugins follow scikit-learn's estimator convention: every parameter is a dataclass field set in the
constructor, validated in :meth:`Plugin.validate`, and recorded in the run's configuration.
A researcher adds one in a single file (see docs/) and selects it by name (Python entry points
``serbench.attacks`` / ``serbench.defenses``) or as ``path/to/file.py:ClassName``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from collections.abc import Mapping
from enum import StrEnum
from typing import Any, ClassVar, Self, get_type_hints

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from serbench.errors import SerbenchError
from serbench.params import coerce


class Surface(StrEnum):
    """Where a defense acts and an attack reads (SPEC §2)."""

    REPRESENTATION = "representation"  # hidden layer h_T transmitted in split computing
    UPDATE = "update"  # gradients / parameter updates shared in federated learning
    INPUT = "input"  # the model input, perturbed by adversarial examples


@dataclasses.dataclass
class Plugin:
    """Parameters as dataclass fields; ``name`` and ``summary`` identify the plugin."""

    name: ClassVar[str]
    summary: ClassVar[str]
    kind: ClassVar[str] = "plugin"

    #: Parameters added after runs were first recorded, each with the value that reproduces
    #: how the plugin behaved before it existed (a run that recorded none used that value).
    added_params: ClassVar[Mapping[str, Any]] = {}

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`SerbenchError` for invalid parameter values."""

    @classmethod
    def parameter_names(cls) -> list[str]:
        return [f.name for f in dataclasses.fields(cls) if f.init]

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Self:
        """Build from ``key -> value`` (strings from the CLI are coerced to the field's type)."""
        hints = get_type_hints(cls)
        valid = cls.parameter_names()
        kwargs = {}
        for key, value in params.items():
            if key not in valid:
                listed = ", ".join(valid) or "none"
                raise SerbenchError(f"{cls.kind} {cls.name!r} takes no parameter {key!r}; "
                                    f"valid parameters: {listed}")
            kwargs[key] = coerce(value, hints[key], f"{cls.kind} {cls.name!r} parameter {key!r}")
        return cls(**kwargs)

    @classmethod
    def parameters(cls) -> list[tuple[str, Any, str]]:
        """Each parameter's name, default and documentation (its ``#:`` comment in the class
        body, where the source can be read): what ``serbench list NAME`` shows."""
        docs: dict[str, str] = {}
        for klass in reversed(cls.__mro__):  # a subclass's comment wins
            try:
                lines, _ = inspect.getsourcelines(klass)
            except (OSError, TypeError):
                continue
            body = ast.parse(textwrap.dedent("".join(lines))).body[0]
            for node in getattr(body, "body", []):
                if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    docs[node.target.id] = _field_comment(lines, node.lineno - 1)
        defaults = {f.name: (f.default if f.default is not dataclasses.MISSING else None)
                    for f in dataclasses.fields(cls) if f.init}
        return [(name, value, docs.get(name, "")) for name, value in defaults.items()]

    def params(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.parameter_names()}

    @classmethod
    def as_recorded(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """The parameters a run recorded, completed with the :attr:`added_params` it predates
        (so that re-running or comparing an older run does not take a newer default)."""
        return {**cls.added_params, **params}


def _field_comment(lines: list[str], at: int) -> str:
    """The ``#:`` comment of the assignment on ``lines[at]``: the lines just above it, or one
    at the end of the line."""
    above = []
    row = at - 1
    while row >= 0 and lines[row].strip().startswith("#:"):
        above.insert(0, lines[row].strip()[2:].strip())
        row -= 1
    _, sep, inline = lines[at].partition("#:")
    return " ".join(above) if above else inline.strip() if sep else ""


@dataclasses.dataclass
class Defense(Plugin):
    """A defense acts on one or more :class:`Surface` s; every hook defaults to "do nothing".

    A defense that does not touch an attack's surface is still evaluated against it (SPEC §4).
    Defenses are public: adaptive attackers (SPEC §5) apply the same instance in their shadow
    training, so hooks must depend only on the parameters and the generator they are given.
    """

    kind: ClassVar[str] = "defense"
    surfaces: ClassVar[frozenset[Surface]] = frozenset()
    #: Randomised defenses are scored only against attacks that average over their randomness.
    randomized: ClassVar[bool] = False
    #: The defense changes how models are trained (T, and each FL client's local training):
    #: trainers then call :meth:`make_private` and :meth:`training_batch`.
    trains: ClassVar[bool] = False
    #: T trains with :meth:`transform_representation` applied at the transmitted layer
    #: (noise-aware training, SPEC §4): declared, so wrapping the method changes nothing.
    noise_aware: ClassVar[bool] = False

    @property
    def input_draws(self) -> int:
        """How many draws of :meth:`transform_input` one deployed prediction averages."""
        return 1

    def calibrate(self, *, rounds: int, sample_rate: float,
                  participations: int | None = None) -> None:
        """Called before every FL run with its recipe, for defenses whose noise depends on it
        (UDP turns a target ε into a noise multiplier). ``participations``: the most rounds
        any client takes part in under the run's seeded schedule, which the server knows
        (``None``: unknown; assume every round)."""

    def privatize_update(self, update: dict[str, torch.Tensor], *,
                         generator: torch.Generator) -> dict[str, torch.Tensor]:
        """UPDATE surface: transform a client's update before it is shared with the server."""
        return update

    def privacy(self, *, rounds: int, sample_rate: float,
                participations: int | None = None) -> dict[str, float]:
        """Formal guarantees of the FL run (e.g. ``{"epsilon": ..., "delta": ...}``), if any,
        against the server (which picked the clients: no sampling amplification)."""
        return {}

    def accounting(self, *, rounds: int, sample_rate: float,
                   participations: int | None = None) -> dict[str, Any]:
        """:meth:`privacy` with its accounting context (accountant, δ, rounds, sampling scheme,
        neighbouring relation, clip, ...), recorded in the run and the leaderboard entry."""
        return {}

    def transform_representation(self, h: torch.Tensor, *,
                                 generator: torch.Generator) -> torch.Tensor:
        """REPRESENTATION surface: transform the hidden layer the device transmits."""
        return h

    def transform_input(self, x: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """INPUT surface: transform the model input at test time (e.g. randomisation)."""
        return x

    def make_private(self, model: nn.Module, optimizer: Optimizer, criterion: nn.Module,
                     loader: DataLoader, *, epochs: int, generator: torch.Generator
                     ) -> tuple[nn.Module, Optimizer, nn.Module, DataLoader]:
        """Training (``trains``): wrap a trainer's model, optimizer, loss function and data
        loader before it trains, in the shape of Opacus' ``PrivacyEngine.make_private``; the
        trainer then computes ``criterion(model(x), y).backward()``. ``criterion`` has a
        ``reduction`` attribute (a per-example loss with ``"none"``). Called once per
        training."""
        return model, optimizer, criterion, loader

    def training_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, step: int,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Training (``trains``): the batch ``model`` trains on at ``step`` (the epoch of a
        central training, the round of an FL client's), e.g. with adversarial copies added."""
        return x, y

    def training_privacy(self) -> dict[str, float]:
        """Formal guarantees of the last training :meth:`make_private` wrapped, if any."""
        return {}

    def training_accounting(self) -> dict[str, Any]:
        """:meth:`training_privacy` with its accounting context, recorded in the run and the
        leaderboard entry."""
        return {}
