"""How the FL attack chooses its model on held-out shadow speakers: a validation strategy says
which shadow FL runs the candidates train on, which they are judged on, and which the chosen one
is trained again on; a candidate protocol builds its training set, fits, scores on the held-out
speakers and refits. Adding a candidate is one :class:`Candidate` in :data:`CANDIDATES`;
adding a validation strategy is one :class:`Strategy` in :data:`STRATEGIES`.

Every step seeds itself from the run seed (:mod:`serbench.seeds`): the shadow runs, and the CNN
candidate's initialisation, which before drew from torch's global RNG as the last shadow run
left it, so the runs had to happen in one order in one process.

In the adaptive mode every candidate, and the non-adaptive mode's fitted model, is judged with
its sign and threshold calibrated on the held-out shadow speakers
(:mod:`attacks.update_calibration`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from serbench.attacks.update_calibration import IDENTITY, Calibration, calibrate, \
    grouped_margins, margins
from serbench.attacks.update_inversion import InputSpaceModel
from serbench.attacks.update_models import LinearUpdateModel, UpdateAttackModel
from serbench.attacks.update_runs import RunSpec, ShadowRuns
from serbench.attacks.update_sets import INVERTED, Stats, TrainingSet, normalise, stacked, \
    training_set, weight_space
from serbench.context import Attack, EvalContext
from serbench.errors import SerbenchError
from serbench.fl.engine import UpdateLog
from serbench.models.train import Validation, fit_classifier
from serbench.scoring import uar
from serbench.seeds import stable_seed
from serbench.workers import in_process, process_map

#: The inversion candidate's grid, searched on held-out shadow speakers: (C, row scaling).
INVERSION_GRID = tuple((c, scale) for scale in ("class", "update")
                       for c in (1e-3, 1e-2, 1e-1, 1.0))


class Judged(NamedTuple):
    """A candidate judged on held-out shadow speakers: its UAR there, the calibration it was
    reached with, and what :meth:`Candidate.refit` needs."""

    score: float
    calibration: Calibration
    state: Any


class Fitted(NamedTuple):
    """What the attack learns in one mode: the model, how to read updates for it, and every
    candidate's held-out shadow UAR (recorded beside the results)."""

    #: shadow mean and std of weight and bias (``None``: the model standardises itself)
    stats: Stats | None
    model: nn.Module
    selection: dict[str, float]
    names: tuple[str, str]  #: the update log's layers the model reads


def held_out_speakers(table: pd.DataFrame, seed: int) -> list[str]:
    """A seeded third of each gender's shadow speakers (at least one), on which the attacker
    chooses its model; an error where a gender has fewer than two speakers."""
    rng = np.random.default_rng(seed)
    held: list[str] = []
    for g in ("F", "M"):
        spk = sorted(set(table.loc[table["gender"] == g, "speaker"]))
        if len(spk) < 2:
            raise SerbenchError("shadow data needs at least two speakers of each gender")
        held += list(rng.choice(spk, max(1, len(spk) // 3), replace=False))
    return held


@dataclass
class Shadow:
    """One attack mode's shadow: its FL simulations (the attacker runs the target's recipe on
    shadow speakers with the simulated defense) and the sets built from them so far."""

    attack: Attack  #: the FL attack (attacks.fl_inference), whose parameters say how
    ctx: EvalContext
    tried: tuple[str, ...]
    held: list[str]
    #: The selection run's weight-space set and its statistics, and the held-out one.
    data: TrainingSet | None = None
    stats: Stats | None = None
    check: TrainingSet | None = None
    #: The selection runs' logs (``train``, and ``check`` for the held-out run), and those of
    #: the inversion's further runs (:meth:`Strategy.more_runs`).
    logs: dict[str, UpdateLog] = field(default_factory=dict)
    more: list[UpdateLog] = field(default_factory=list)
    #: The inversion's stacked selection set (its inputs and genders), and its held-out rows
    #: (inputs, genders, averaging-size groups).
    inverted_set: tuple[list[torch.Tensor], torch.Tensor] | None = None
    inverted_held: tuple[list[torch.Tensor], np.ndarray, np.ndarray] | None = None

    @property
    def weight(self) -> bool:
        return any(name != "inversion" for name in self.tried)

    def runs(self, specs: list[RunSpec]) -> list[UpdateLog]:
        """The shadow FL runs ``specs``, in worker processes where there are several (the
        progress bars only where this process runs them), their first-layer updates inverted
        where the inversion is a candidate."""
        a, ctx = self.attack, self.ctx
        work = ShadowRuns(a.recipe(ctx, shadow=True), ctx.shadow, ctx.shadow_defense, ctx.seed,
                          ctx.engine, a.probe_rounds, "inversion" in self.tried,
                          f"shadow {a.algorithm}{{what}} ({ctx.mode})", ctx.reporter)
        workers = ctx.pool_workers()
        if not in_process(specs, workers):
            work = work.quiet()
        return list(process_map(work, specs, workers=workers))

    def weight_set(self, log: UpdateLog, stats: Stats | None = None
                   ) -> tuple[TrainingSet, Stats]:
        return weight_space(log, self.attack.recorded, self.attack.averaging_sizes(), stats)

    def inverted(self, log: UpdateLog) -> TrainingSet:
        return training_set(log, INVERTED, self.attack.averaging_sizes())

    def labels(self) -> torch.Tensor:
        return torch.as_tensor(self.data.genders)

    def judge(self, margin: np.ndarray, truth: np.ndarray) -> tuple[float, Calibration]:
        """A candidate's held-out UAR from its margins: with its sign and threshold calibrated
        where the shadow runs under the defense the adaptive attacker simulates, as it is in
        the non-adaptive mode (as in the papers)."""
        if self.ctx.mode == "adaptive":
            return calibrate(margin, truth)
        return uar(truth, (margin > 0).astype(np.int64)), IDENTITY


class Strategy:
    """Where candidates train, are judged and are trained again (``validation``)."""

    name: ClassVar[str]

    def select(self, shadow: Shadow) -> None:
        """Run the selection runs and build the weight-space sets where a candidate needs them
        (:attr:`Shadow.data`, :attr:`Shadow.check`)."""
        raise NotImplementedError

    def held_out(self, shadow: Shadow) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The held-out speakers' weight-space inputs and genders."""
        raise NotImplementedError

    def fit_rows(self, shadow: Shadow) -> Any:
        """The rows of :attr:`Shadow.data` the candidates train on."""
        raise NotImplementedError

    def inverted_parts(self, shadow: Shadow) -> tuple[list[TrainingSet], np.ndarray]:
        """The inversion's training sets from every selection run, and which rows are held
        out."""
        raise NotImplementedError

    def train_rows(self, shadow: Shadow) -> np.ndarray:
        """The shadow rows the selection runs train on: every row by default."""
        return np.arange(len(shadow.ctx.shadow.table))

    def more_runs(self, shadow: Shadow) -> list[RunSpec]:
        """The inversion's further runs on :meth:`train_rows` (other initialisations and
        samplings), run with the selection runs; none without the inversion."""
        rows = self.train_rows(shadow)
        return [RunSpec(k, rows, f" run {k + 1}", raw=False)
                for k in range(1, shadow.attack.shadow_runs) if "inversion" in shadow.tried]

    def training_parts(self, shadow: Shadow) -> list[TrainingSet]:
        """The inverted sets of the training run and of :meth:`more_runs`."""
        return [shadow.inverted(log) for log in (shadow.logs["train"], *shadow.more)]

    def final_runs(self, shadow: Shadow) -> bool:
        """Whether the chosen model is trained again on runs of every shadow speaker."""
        return False


def _check_genders(attack: Attack, genders: np.ndarray, what: str) -> None:
    if len(np.unique(genders)) < 2:
        raise SerbenchError(
            f"attack {attack.name!r}: the shadow's {what} updates hold one gender only "
            f"({len(genders)} updates); record more of them (--attack-param "
            f"shadow_probe_every=N probes every shadow client each N rounds, or more rounds)")


class HeldOutRun(Strategy):
    """``run``: the held-out third of the shadow speakers gets an FL run of its own from the
    server's initialisation, as the target's speakers do; candidates train on a run without
    them, and the chosen one trains again on runs of every shadow speaker."""

    name = "run"

    def _in_held(self, shadow: Shadow) -> np.ndarray:
        return shadow.ctx.shadow.table["speaker"].isin(shadow.held).to_numpy()

    def train_rows(self, shadow: Shadow) -> np.ndarray:
        return np.flatnonzero(~self._in_held(shadow))

    def select(self, shadow: Shadow) -> None:
        held = np.flatnonzero(self._in_held(shadow))
        train, check, *shadow.more = shadow.runs([
            RunSpec(0, self.train_rows(shadow), " selection run", raw=shadow.weight),
            RunSpec(shadow.attack.shadow_runs, held, " validation run", init_run=0,
                    raw=shadow.weight), *self.more_runs(shadow)])
        shadow.logs.update(train=train, check=check)
        if shadow.weight:  # standardised, and the raw layers dropped
            shadow.data, shadow.stats = shadow.weight_set(train)
            shadow.check = shadow.weight_set(check, shadow.stats)[0]
        _check_genders(shadow.attack, shadow.logs["train"].genders, "training")
        _check_genders(shadow.attack, shadow.logs["check"].genders, "held-out")

    def held_out(self, shadow: Shadow) -> tuple[list[torch.Tensor], torch.Tensor]:
        return shadow.check.inputs, torch.as_tensor(shadow.check.genders)

    def fit_rows(self, shadow: Shadow) -> Any:
        return slice(None)

    def inverted_parts(self, shadow: Shadow) -> tuple[list[TrainingSet], np.ndarray]:
        parts = [*self.training_parts(shadow), shadow.inverted(shadow.logs["check"])]
        held = np.repeat([False] * (len(parts) - 1) + [True], [len(p.genders) for p in parts])
        return parts, held

    def final_runs(self, shadow: Shadow) -> bool:
        return True


class SameRun(Strategy):
    """``same-run``: candidates train and are judged on one run of every shadow speaker, the
    held-out third left out of training; that run's shared trajectory flatters the
    weight-space models (docs/design.md)."""

    name = "same-run"

    def select(self, shadow: Shadow) -> None:
        log, *shadow.more = shadow.runs([RunSpec(0, self.train_rows(shadow), "",
                                                 raw=shadow.weight), *self.more_runs(shadow)])
        shadow.logs["train"] = log
        if shadow.weight:
            shadow.data, shadow.stats = shadow.weight_set(log)
        _check_genders(shadow.attack, log.genders[~np.isin(log.speakers, shadow.held)],
                       "training")

    def _val(self, shadow: Shadow) -> torch.Tensor:
        return torch.as_tensor(np.isin(shadow.data.speakers, shadow.held))

    def held_out(self, shadow: Shadow) -> tuple[list[torch.Tensor], torch.Tensor]:
        val = self._val(shadow)
        return [t[val] for t in shadow.data.inputs], shadow.labels()[val]

    def fit_rows(self, shadow: Shadow) -> Any:
        return ~self._val(shadow)

    def inverted_parts(self, shadow: Shadow) -> tuple[list[TrainingSet], np.ndarray]:
        parts = self.training_parts(shadow)
        return parts, np.concatenate([np.isin(p.speakers, shadow.held) for p in parts])


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (HeldOutRun(), SameRun())}


class Candidate:
    """An attack model: :meth:`select` fits it for selection and judges it on the held-out
    shadow speakers, with what :meth:`refit` needs to give the fitted model for the target."""

    name: ClassVar[str]
    #: Recorded after the inversion (the order of the record).
    scored_last: ClassVar[bool] = True

    def select(self, shadow: Shadow, strategy: Strategy) -> Judged:
        raise NotImplementedError

    def refit(self, shadow: Shadow, strategy: Strategy, chosen: Any) -> Fitted:
        raise NotImplementedError


def judge_weight_space(shadow: Shadow, strategy: Strategy, model: nn.Module) -> Judged:
    """A weight-space candidate judged on the held-out speakers' standardised updates."""
    inputs, truth = strategy.held_out(shadow)
    return Judged(*shadow.judge(margins(model, model.prepare(*inputs)), truth.numpy()), model)


def judge_fitted(shadow: Shadow, strategy: Strategy, fitted: Fitted) -> Judged:
    """Another mode's fitted model (the non-adaptive one) judged on this mode's held-out
    speakers, read as it reads the target: inverted updates standardised per averaging size,
    or the updates standardised with its own shadow's statistics."""
    if fitted.names == INVERTED:
        inputs, truth, groups = shadow.inverted_held
        return Judged(*shadow.judge(grouped_margins(fitted.model, inputs, groups), truth), fitted)
    inputs, truth = strategy.held_out(shadow)
    raw = [t * std + mean for t, (mean, std) in zip(inputs, shadow.stats)]
    prepared = fitted.model.prepare(*normalise(raw, fitted.stats))
    return Judged(*shadow.judge(margins(fitted.model, prepared), truth.numpy()), fitted)


class Linear(Candidate):
    """:class:`LinearUpdateModel` on the standardised flattened update."""

    name = "linear"

    def select(self, shadow: Shadow, strategy: Strategy) -> Judged:
        rows = strategy.fit_rows(shadow)
        model = LinearUpdateModel().fit([shadow.data.flat[rows]], shadow.labels()[rows])
        return judge_weight_space(shadow, strategy, model)

    def refit(self, shadow: Shadow, strategy: Strategy, chosen: Any) -> Fitted:
        """Cheap to refit: on every shadow speaker (of a run of them all, for ``run``)."""
        if strategy.final_runs(shadow):
            everyone = np.arange(len(shadow.ctx.shadow.table))
            shadow.data, shadow.stats = shadow.weight_set(
                shadow.runs([RunSpec(0, everyone, " (all speakers)")])[0])
        model = LinearUpdateModel().fit([shadow.data.flat], shadow.labels())
        return Fitted(shadow.stats, model, {}, shadow.attack.recorded)


class CNN(Candidate):
    """The reference CNN, early-stopped on the held-out speakers; it keeps that fit."""

    name = "cnn"

    def select(self, shadow: Shadow, strategy: Strategy) -> Judged:
        a, ctx = shadow.attack, shadow.ctx
        with torch.random.fork_rng(devices=[]):  # its own seed, whatever ran before it
            torch.manual_seed(stable_seed(ctx.seed, ctx.mode, "attack cnn"))
            model = UpdateAttackModel(shadow.data.inputs[1].shape[1], a.input_pool)
        rows = strategy.fit_rows(shadow)
        held_x, held_y = strategy.held_out(shadow)
        # prepare() pools each update on its own: pooling a subset is the subset of the pooled
        fit_x = model.prepare(*[t[rows] for t in shadow.data.inputs])
        val_x = model.prepare(*held_x)
        with ctx.reporter.track(f"attack CNN on {a.layer}-layer updates", a.epochs) as adv:
            model = fit_classifier(model, fit_x, shadow.labels()[rows],
                                   val=Validation(val_x, held_y, patience=3), epochs=a.epochs,
                                   lr=1e-3, weight_decay=1e-4, seed=ctx.seed, advance=adv)
        return judge_weight_space(shadow, strategy, model)

    def refit(self, shadow: Shadow, strategy: Strategy, chosen: Any) -> Fitted:
        return Fitted(shadow.stats, chosen, {}, shadow.attack.recorded)


class Inversion(Candidate):
    """:class:`InputSpaceModel` on inverted first-layer updates of several shadow runs, its
    setting searched over :data:`INVERSION_GRID`."""

    name = "inversion"
    scored_last = False

    def select(self, shadow: Shadow, strategy: Strategy) -> Judged:
        parts, held = strategy.inverted_parts(shadow)
        inputs, labels = stacked(parts)
        groups = np.concatenate([p.groups for p in parts])
        grid, judged = inversion_grid(inputs, labels, torch.as_tensor(held), groups,
                                      shadow.judge)
        shadow.inverted_set = (inputs, labels)
        shadow.inverted_held = ([t[held] for t in inputs], labels[held].numpy(), groups[held])
        shadow.ctx.reporter.log(f"{shadow.ctx.mode} inversion candidate: C={grid[0]:g}, "
                                f"rows scaled per {grid[1]}")
        return Judged(*judged, grid)

    def refit(self, shadow: Shadow, strategy: Strategy, chosen: Any) -> Fitted:
        """On the selection runs (``same-run``), or on runs of every shadow speaker (``run``:
        not the validation run, whose few clients take part unusually often)."""
        if strategy.final_runs(shadow):
            everyone = np.arange(len(shadow.ctx.shadow.table))
            logs = shadow.runs([RunSpec(k, everyone, f" run {k + 1} (all speakers)", raw=False)
                                for k in range(shadow.attack.shadow_runs)])
            inputs, labels = stacked([shadow.inverted(log) for log in logs])
        else:
            inputs, labels = shadow.inverted_set
        return Fitted(None, InputSpaceModel(*chosen).fit(inputs, labels), {}, INVERTED)


CANDIDATES: dict[str, Candidate] = {c.name: c for c in (Linear(), CNN(), Inversion())}


def inversion_grid(inputs: list[torch.Tensor], labels: torch.Tensor, val: torch.Tensor,
                   groups: np.ndarray, judge: Callable[[np.ndarray, np.ndarray], Any]
                   ) -> tuple[tuple[float, str], tuple[float, Calibration]]:
    """The inversion candidate's setting: :data:`INVERSION_GRID` searched on held-out shadow
    speakers (each averaging size standardised with its own statistics, as the target's
    will be), with its held-out UAR and calibration (``judge``: :meth:`Shadow.judge`)."""
    train = ([t[~val] for t in inputs], labels[~val])
    held = [t[val] for t in inputs]
    held_groups, truth = groups[val.numpy()], labels[val].numpy()
    judged = {}
    for c, scale in INVERSION_GRID:
        model = InputSpaceModel(c, scale).fit(*train)
        judged[c, scale] = judge(grouped_margins(model, held, held_groups), truth)
    best = max(judged, key=lambda grid: judged[grid][0])
    return best, judged[best]
