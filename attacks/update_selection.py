"""How the FL attack chooses its model on held-out shadow speakers: a validation strategy says
which shadow FL runs the candidates train on, which they are judged on, and which the chosen one
is trained again on; a candidate protocol builds its training set, fits, scores on the held-out
speakers and refits. Adding a candidate is one :class:`Candidate` in :data:`CANDIDATES`;
adding a validation strategy is one :class:`Strategy` in :data:`STRATEGIES`.

The order of the shadow runs is part of the protocol: each run reseeds torch's global RNG (the
server's initialisation), from which the CNN candidate is initialised, so runs happen in the
order below and a seed gives the same numbers as it always did.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from serbench.attacks.update_inversion import InputSpaceModel
from serbench.attacks.update_models import LinearUpdateModel, UpdateAttackModel
from serbench.attacks.update_sets import INVERTED, Stats, TrainingSet, add_inverted, stacked, \
    training_set, weight_space
from serbench.context import Attack, EvalContext
from serbench.deploy.federated import federate
from serbench.errors import SerbenchError
from serbench.fl.engine import UpdateLog
from serbench.models.train import Validation, fit_classifier, predict_proba
from serbench.scoring import uar
from serbench.seeds import shadow_run_seeds

#: The inversion candidate's grid, searched on held-out shadow speakers: (C, row scaling).
INVERSION_GRID = tuple((c, scale) for scale in ("class", "update")
                       for c in (1e-3, 1e-2, 1e-1, 1.0))


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
    #: The selection runs' logs (``train``, and ``check`` for the held-out run).
    logs: dict[str, UpdateLog] = field(default_factory=dict)
    #: The inversion's stacked selection set (its inputs and genders).
    inverted_set: tuple[list[torch.Tensor], torch.Tensor] | None = None

    @property
    def weight(self) -> bool:
        return any(name != "inversion" for name in self.tried)

    def run(self, k: int, rows: np.ndarray, what: str, init_run: int | None = None) -> UpdateLog:
        """Shadow FL run ``k`` on ``rows`` (initialised like run ``init_run``, default ``k``),
        its first-layer updates inverted where the inversion is a candidate."""
        a, ctx = self.attack, self.ctx
        run_seed, init_seed = shadow_run_seeds(ctx.seed, k)
        if init_run is not None:
            init_seed = shadow_run_seeds(ctx.seed, init_run)[1]
        deployed = federate(a.recipe(ctx), ctx.shadow, rows, ctx.shadow_defense, seed=run_seed,
                            init_seed=init_seed, engine=ctx.engine, reporter=ctx.reporter,
                            probe_rounds=a.probe_rounds, partial=True, public=ctx.shadow,
                            description=f"shadow {a.algorithm}{what} ({ctx.mode})")
        if "inversion" in self.tried:  # from the raw first-layer updates, dropped once copied
            add_inverted(deployed.run.log, deployed.observed)
        return deployed.run.log

    def weight_set(self, log: UpdateLog, stats: Stats | None = None
                   ) -> tuple[TrainingSet, Stats]:
        return weight_space(log, self.attack.recorded, self.attack.averaging_sizes(), stats)

    def inverted(self, log: UpdateLog) -> TrainingSet:
        return training_set(log, INVERTED, self.attack.averaging_sizes())

    def labels(self) -> torch.Tensor:
        return torch.as_tensor(self.data.genders)


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

    def training_parts(self, shadow: Shadow) -> list[TrainingSet]:
        """The inverted sets of the training run and of the inversion's further runs (other
        initialisations and samplings) on :meth:`train_rows`."""
        rows = self.train_rows(shadow)
        return [shadow.inverted(shadow.logs["train"])] + [
            shadow.inverted(shadow.run(k, rows, f" run {k + 1}"))
            for k in range(1, shadow.attack.shadow_runs)]

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
        shadow.logs["train"] = shadow.run(0, self.train_rows(shadow), " selection run")
        if shadow.weight:  # standardised (and the raw layers dropped) before the next run
            shadow.data, shadow.stats = shadow.weight_set(shadow.logs["train"])
        shadow.logs["check"] = shadow.run(shadow.attack.shadow_runs,
                                          np.flatnonzero(self._in_held(shadow)),
                                          " validation run", init_run=0)
        if shadow.weight:
            shadow.check = shadow.weight_set(shadow.logs["check"], shadow.stats)[0]
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
        log = shadow.run(0, self.train_rows(shadow), "")
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
    """An attack model: :meth:`select` fits it for selection and returns its held-out shadow
    UAR with what :meth:`refit` needs to give the fitted model for the target."""

    name: ClassVar[str]
    #: Scored with the others after the inversion's grid (the order of the record).
    scored_last: ClassVar[bool] = True

    def select(self, shadow: Shadow, strategy: Strategy) -> tuple[float | None, Any]:
        raise NotImplementedError

    def refit(self, shadow: Shadow, strategy: Strategy, chosen: Any) -> Fitted:
        raise NotImplementedError


def held_out_uar(model: nn.Module, held: tuple[list[torch.Tensor], torch.Tensor]) -> float:
    return uar(held[1].numpy(), predict_proba(model, model.prepare(*held[0])).argmax(1).numpy())


class Linear(Candidate):
    """:class:`LinearUpdateModel` on the standardised flattened update."""

    name = "linear"

    def select(self, shadow: Shadow, strategy: Strategy) -> tuple[None, nn.Module]:
        rows = strategy.fit_rows(shadow)
        return None, LinearUpdateModel().fit([shadow.data.flat[rows]], shadow.labels()[rows])

    def refit(self, shadow: Shadow, strategy: Strategy, chosen: Any) -> Fitted:
        """Cheap to refit: on every shadow speaker (of a run of them all, for ``run``)."""
        if strategy.final_runs(shadow):
            everyone = np.arange(len(shadow.ctx.shadow.table))
            shadow.data, shadow.stats = shadow.weight_set(
                shadow.run(0, everyone, " (all speakers)"))
        model = LinearUpdateModel().fit([shadow.data.flat], shadow.labels())
        return Fitted(shadow.stats, model, {}, shadow.attack.recorded)


class CNN(Candidate):
    """The reference CNN, early-stopped on the held-out speakers; it keeps that fit."""

    name = "cnn"

    def select(self, shadow: Shadow, strategy: Strategy) -> tuple[None, nn.Module]:
        a, ctx = shadow.attack, shadow.ctx
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
        return None, model

    def refit(self, shadow: Shadow, strategy: Strategy, chosen: Any) -> Fitted:
        return Fitted(shadow.stats, chosen, {}, shadow.attack.recorded)


class Inversion(Candidate):
    """:class:`InputSpaceModel` on inverted first-layer updates of several shadow runs, its
    setting searched over :data:`INVERSION_GRID`."""

    name = "inversion"
    scored_last = False

    def select(self, shadow: Shadow, strategy: Strategy) -> tuple[float, tuple[float, str]]:
        parts, held = strategy.inverted_parts(shadow)
        inputs, labels = stacked(parts)
        grid, score = inversion_grid(inputs, labels, torch.as_tensor(held),
                                     np.concatenate([p.groups for p in parts]))
        shadow.inverted_set = (inputs, labels)
        shadow.ctx.reporter.log(f"{shadow.ctx.mode} inversion candidate: C={grid[0]:g}, "
                                f"rows scaled per {grid[1]}")
        return score, grid

    def refit(self, shadow: Shadow, strategy: Strategy, chosen: Any) -> Fitted:
        """On the selection runs (``same-run``), or on runs of every shadow speaker (``run``:
        not the validation run, whose few clients take part unusually often)."""
        if strategy.final_runs(shadow):
            everyone = np.arange(len(shadow.ctx.shadow.table))
            parts = []
            for k in range(shadow.attack.shadow_runs):
                log = shadow.run(k, everyone, f" run {k + 1} (all speakers)")
                for name in shadow.attack.recorded:  # only its inverted updates are needed
                    log.layers.pop(name, None)
                parts.append(shadow.inverted(log))
            inputs, labels = stacked(parts)
        else:
            inputs, labels = shadow.inverted_set
        return Fitted(None, InputSpaceModel(*chosen).fit(inputs, labels), {}, INVERTED)


CANDIDATES: dict[str, Candidate] = {c.name: c for c in (Linear(), CNN(), Inversion())}


def inversion_grid(inputs: list[torch.Tensor], labels: torch.Tensor, val: torch.Tensor,
                   groups: np.ndarray) -> tuple[tuple[float, str], float]:
    """The inversion candidate's setting: :data:`INVERSION_GRID` searched on held-out shadow
    speakers (each averaging size standardised with its own statistics, as the target's
    will be), with its held-out UAR."""
    train = ([t[~val] for t in inputs], labels[~val])
    held = [t[val] for t in inputs]
    held_groups, truth = groups[val.numpy()], labels[val].numpy()
    scores = {}
    for c, scale in INVERSION_GRID:
        model = InputSpaceModel(c, scale).fit(*train)
        pred = np.empty(len(truth), dtype=np.int64)
        for g in np.unique(held_groups):
            rows = torch.as_tensor(np.flatnonzero(held_groups == g))
            part = [t[rows] for t in held]
            pred[rows.numpy()] = model.adapt(part)(*part).argmax(1).numpy()
        scores[c, scale] = uar(truth, pred)
    best = max(scores, key=scores.get)
    return best, scores[best]
