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
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, ClassVar, NamedTuple, Self, get_type_hints

import numpy as np
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
    AUDIO = "audio"  # the speech itself, transformed on the device before anything reads it


#: The prefix of the module a plugin loaded from a ``file.py:Class`` reference lives in.
USER_MODULES = "serbench_user_"


def from_file(*plugins: object) -> bool:
    """Whether any of ``plugins`` was loaded from a ``file.py:Class``: a worker process cannot
    import its module by name, so work that holds it stays in this process."""
    return any(type(p).__module__.startswith(USER_MODULES) for p in plugins)


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


@dataclasses.dataclass(frozen=True)
class Tags:
    """Everything a defense declares about what it does: the one record that ``check-defense``,
    the runner (which attack modes run) and the leaderboard (families, strength axes) consult,
    in the spirit of scikit-learn's estimator tags. ``check-defense`` and the runner refuse a
    defense whose hooks do more than its tags say (:func:`serbench.testing.undeclared`)."""

    #: Where it acts: each surface's hook may be overridden only where it is declared.
    surfaces: frozenset[Surface] = frozenset()
    #: A hook draws random numbers at test time: scored only by attacks that average over that
    #: randomness (EOT, SPEC §3.3). A hook whose output varies with its generator must say so.
    randomized: bool = False
    #: It changes how models are trained (T, and each FL client's local training): trainers
    #: then call :meth:`Defense.make_private` and :meth:`Defense.training_batch`.
    trains: bool = False
    #: T trains with :meth:`Defense.transform_representation` at the transmitted layer
    #: (noise-aware training, SPEC §4).
    noise_aware: bool = False
    #: Draws of :meth:`Defense.transform_input` one deployed prediction averages: a number, or
    #: the name of the parameter that holds it.
    input_draws: int | str = 1
    #: The parameters that set its strength, in order of preference, each with the symbol that
    #: labels it (a family's axis on the leaderboard is the first one an entry sets).
    strength: tuple[tuple[str, str], ...] = ()
    #: It reads the sensitive attribute of its own training data (SPEC §4a): trainers pass
    #: ``attribute`` (0 = F, 1 = M) to :meth:`Defense.make_private` and
    #: :meth:`Defense.privatize_update`, an FL client's own gender, or T's training examples'
    #: genders (with ``transmitted``, the module whose output the device sends). Never a test
    #: speaker's; a defense that does not declare it never receives it.
    reads_attribute: bool = False
    #: It trains on public data (SPEC §4a: the corpus's shadow side, never a target speaker):
    #: :meth:`Defense.calibrate` receives ``public``, a :class:`PublicData`, and the run
    #: records its speakers.
    public_data: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "surfaces", frozenset(Surface(s) for s in self.surfaces))


@dataclasses.dataclass(frozen=True)
class PublicData:
    """What a ``public_data`` defense may train on: the public speakers' utterances in the
    feature set the deployed model reads (``x``), with each row's speaker, gender (0 = F,
    1 = M) and emotion label in the target's classes."""

    x: torch.Tensor
    speakers: tuple[str, ...]
    genders: torch.Tensor
    emotions: torch.Tensor


@dataclasses.dataclass(frozen=True)
class Guarantee:
    """A formal guarantee, returned by the call that establishes it (:meth:`Defense.calibrate`
    for an FL run, ``spent`` of :meth:`Defense.make_private` for a training), never kept on
    the defense, so no call depends on the order of another. ``numbers`` (``epsilon``,
    ``delta``, ...) are scored and shown; ``context`` says what they mean (accountant, clip,
    against whom); runs and entries record both."""

    numbers: Mapping[str, float] = dataclasses.field(default_factory=dict)
    context: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def accounting(self) -> dict[str, Any]:
        """The numbers with their context, as runs and entries record them."""
        return {**self.numbers, **self.context} if self.numbers else {}


class Private(NamedTuple):
    """What :meth:`Defense.make_private` returns: Opacus' four wrapped objects, and ``spent``,
    the guarantee of the steps the wrapped training has taken when it is called."""

    model: nn.Module
    optimizer: Optimizer
    criterion: nn.Module
    loader: DataLoader
    spent: Callable[[], Guarantee] = Guarantee
    #: The attacker the defense trains alongside (its paper's non-adaptive attacker, e.g. a
    #: gradient-reversal adversary): gender probabilities (N, 2) from the transmitted layer.
    own_attacker: Callable[[torch.Tensor], torch.Tensor] | None = None


#: The hooks that act on each surface, or on training (``trains``): a defense may override a
#: hook only where its tags declare it.
HOOKS: dict[str, Surface | str] = {
    "privatize_update": Surface.UPDATE,
    "transform_representation": Surface.REPRESENTATION,
    "transform_input": Surface.INPUT,
    "transform_audio": Surface.AUDIO,
    "make_private": "trains",
    "training_batch": "trains",
}


@dataclasses.dataclass
class Defense(Plugin):
    """A defense acts where its :class:`Tags` say; every hook defaults to "do nothing".

    A defense that does not touch an attack's surface is still evaluated against it (SPEC §4).
    Defenses are public: adaptive attackers (SPEC §5) apply a copy of the same instance in
    their shadow training, and every deployment works on its own copy, so hooks depend only on
    the parameters, what :meth:`calibrate` set for the run, and the generator they are given.
    """

    kind: ClassVar[str] = "defense"
    tags: ClassVar[Tags] = Tags()

    @property
    def surfaces(self) -> frozenset[Surface]:
        return self.tags.surfaces

    @property
    def input_draws(self) -> int:
        """How many draws of :meth:`transform_input` one deployed prediction averages."""
        draws = self.tags.input_draws
        return int(getattr(self, draws)) if isinstance(draws, str) else draws

    def calibrate(self, *, rounds: int, sample_rate: float,
                  participations: int | None = None) -> Guarantee:
        """Called on the run's own copy before every FL run with its recipe: set what the
        clients' hooks need (UDP turns a target ε into a noise multiplier) and return the
        run's guarantee against the server, which picked the clients (no sampling
        amplification). ``participations``: the most rounds any client takes part in under the
        run's seeded schedule, which the server knows (``None``: unknown; every round). A
        ``public_data`` defense also receives ``public`` (:class:`PublicData`)."""
        return Guarantee()

    def own_scores(self) -> list[float] | None:
        """FL: the defense's own attacker's P(male) for each update this run's copy shared, in
        the order it shared them (its paper's non-adaptive attacker, e.g. RecUP-FL's zoo);
        ``None``: it has none."""
        return None

    def privatize_update(self, update: dict[str, torch.Tensor], *,
                         generator: torch.Generator) -> dict[str, torch.Tensor]:
        """UPDATE surface: transform a client's update before it is shared with the server."""
        return update

    def transform_representation(self, h: torch.Tensor, *,
                                 generator: torch.Generator) -> torch.Tensor:
        """REPRESENTATION surface: transform the hidden layer the device transmits."""
        return h

    def transform_input(self, x: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """INPUT surface: transform the model input at test time (e.g. randomisation)."""
        return x

    def transform_audio(self, wave: np.ndarray, sample_rate: int, *,
                        generator: torch.Generator) -> np.ndarray:
        """AUDIO surface: transform one utterance's float32 mono waveform on the device, before
        features, training, transmission or release read it. Return it at the same sample rate
        and length (``check-defense``). ``generator`` is seeded per utterance by the run's seed
        and the audio's content, so the released audio, and its cached features, are fixed."""
        return wave

    def make_private(self, model: nn.Module, optimizer: Optimizer, criterion: nn.Module,
                     loader: DataLoader, *, epochs: int, generator: torch.Generator) -> Private:
        """Training (``tags.trains``): wrap a trainer's model, optimizer, loss function and data
        loader before it trains, in the shape of Opacus' ``PrivacyEngine.make_private``, with
        ``spent``, the guarantee of the steps taken. The trainer then computes
        ``criterion(model(x), y).backward()``. ``criterion`` has a ``reduction`` attribute (a
        per-example loss with ``"none"``). Called once per training."""
        return Private(model, optimizer, criterion, loader)

    def training_batch(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, step: int,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Training (``tags.trains``): the batch ``model`` trains on at ``step`` (the epoch of a
        central training, the round of an FL client's), e.g. with adversarial copies added."""
        return x, y
