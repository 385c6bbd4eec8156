"""The attack contract: what an attack is given (:class:`EvalContext`), what it does
(:class:`Attack`) and returns (a :class:`serbench.results.FoldResult`). It sits above the
deployment stage, which knows nothing of attacks."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, ClassVar

from serbench.corpora.data import CorpusData
from serbench.plugins import Defense, Plugin, Surface, from_file
from serbench.progress import NullReporter, Reporter
from serbench.scoring import Role

if TYPE_CHECKING:
    from serbench.analyses import AnalysisView
    from serbench.deploy import Deployment, Recipe
    from serbench.results import FoldResult


@dataclass
class EvalContext:
    """One attack evaluation: the target corpus, the attacker's shadow corpus, the defense the
    target deploys, and the defense the attacker simulates in its shadow training (the same
    one when adaptive, none otherwise; SPEC §5)."""

    target: CorpusData
    shadow: CorpusData | None
    defense: Defense
    shadow_defense: Defense
    features: str
    seed: int
    mode: str = "non-adaptive"
    reporter: Reporter = field(default_factory=NullReporter)
    #: FL engine name (see :data:`serbench.fl.ENGINES`) for attacks on the UPDATE surface.
    engine: str = "inprocess"
    #: Worker processes for independent work (:func:`serbench.workers.process_map`; 0: one
    #: per usable CPU). Every piece seeds itself, so no number depends on it.
    workers: int = 0

    def pool_workers(self, *plugins: object) -> int:
        """:attr:`workers` for work that holds this context's defenses and ``plugins``: one
        (this process) where any was loaded from a file (:func:`serbench.plugins.from_file`)."""

        return 1 if from_file(self.defense, self.shadow_defense, *plugins) else self.workers

    def quiet(self) -> EvalContext:
        """This context reporting nothing: picklable, for a worker process."""
        return replace(self, target=self.target.quiet(),
                       shadow=self.shadow and self.shadow.quiet(), reporter=NullReporter())


@dataclass
class Attack(Plugin, ABC):
    """An attack reads a deployed target: :meth:`recipe` says what to deploy, :meth:`fit` does
    the fold-independent work of a mode (the attacker's shadow training), and
    :meth:`evaluate_fold` attacks the deployment the runner built for one fold and returns the
    predictions with their roles (:meth:`role`). It calls no defense hook itself: the
    deployment stage (:mod:`serbench.deploy`) applies the defense.

    One instance serves both attack modes (SPEC §5): the runner calls :meth:`fit` once per
    mode, so what it learns is kept per ``ctx.mode``."""

    kind: ClassVar[str] = "attack"
    surface: ClassVar[Surface]
    #: Feature set used when the user gives none.
    default_features: ClassVar[str]
    #: Feature kinds the attack's models accept ("functionals" or "sequence").
    feature_kinds: ClassVar[tuple[str, ...]]
    #: Whether the attacker's own training runs the simulated defense's training (the FL
    #: attacks' shadow clients do). If not, a defense that only trains the deployed models
    #: leaves the adaptive attacker what the non-adaptive one has (:func:`attack_modes`).
    shadow_trains_with_defense: ClassVar[bool] = False
    #: Whether the runner may attack folds in worker processes: the attack (fitted) and its
    #: :meth:`evaluate_fold` pickle, and start no worker processes of their own.
    parallel_folds: ClassVar[bool] = False

    @abstractmethod
    def recipe(self, ctx: EvalContext) -> Recipe:
        """What this attack needs deployed: the runner builds it once per fold
        (:func:`serbench.deploy.deploy`) and passes it to :meth:`evaluate_fold` in every
        mode."""

    @abstractmethod
    def fit(self, ctx: EvalContext) -> None:
        """The fold-independent work of one attack mode (e.g. the attacker's shadow training
        on ``ctx.shadow`` with ``ctx.shadow_defense``)."""

    @abstractmethod
    def evaluate_fold(self, ctx: EvalContext, fold: int, deployed: Deployment) -> FoldResult:
        """Attack ``deployed`` (the target trained without ``fold``'s speakers) and return the
        predictions on what it attacked."""

    def analysis_views(self) -> dict[str, AnalysisView]:
        """The analyses this run writes (tables and plots of leakage by a factor), read from
        the rows :attr:`FoldResult.analyses` holds: none by default."""
        return {}

    def role(self, task: str, group: str) -> Role:
        """What the measure ``task@group`` of this attack's predictions says (SPEC §6): the
        target's clean emotion UAR is utility, gender predictions are leakage. Attacks with
        other measures (robust UAR) declare them here; scoring never guesses from names."""
        if task == "gender":
            return Role.LEAKAGE
        if task == "emotion" and not group:
            return Role.UTILITY
        raise NotImplementedError(f"{self.name}: declare the role of measure {task}@{group}")
