"""Intercepted-layer gender attack on split computing (SPEC §3.1; Alsenani, Guha, Vinciarelli,
"Privacy risks in SER: a systematic study on gender inference attack").

The SER model T runs on the device up to layer k and transmits h_T, that layer's output; the
attacker reads h_T and infers the speaker's gender. What the attacker knows sets the scenario
(the paper's Table 1): whether it trains on T's own training speakers or on shadow speakers,
and whether its model is T's layers after k re-initialised ("same architecture"), another CNN
family, or an LSTM. Its training pairs are always (h_T(x), gender(x)) computed with the
deployed T. The generic attacker classifies gender; the application-aware one also learns T's
emotion task (summed losses). T is trained per fold, so every attacker is too.
"""

from __future__ import annotations

import multiprocessing as mp
import os
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from serbench.analyses import write_analysis
from serbench.attacks.sides import FoldSides
from serbench.context import EvalContext
from serbench.results import FoldResult
from serbench.corpora.base import GENDERS
from serbench.deploy.split import SplitDeployment, SplitRecipe, Target, stable_seed, \
    train_target, transmit
from serbench.errors import SerbenchError, unknown_name
from serbench.metrics import emotion_classes, emotion_labels
from serbench.models.targets import CNN_FAMILIES, FAMILIES, SIZES, JointHead, build, \
    check_layer, default_layer, readable_layers
from serbench.models.train import fit_classifier, predict_proba
from serbench.plugins import Attack, Surface
from serbench.results import write_csv


class Scenario(NamedTuple):
    data: str  #: "target": T's own training speakers; "shadow": the attacker's shadow speakers
    arch: str  #: "same": T's layers after k; "other": another CNN family; "recurrent": an LSTM


SCENARIOS = {
    "worst": Scenario("target", "same"),
    "s1": Scenario("shadow", "same"),
    "s2": Scenario("target", "other"),
    "s3": Scenario("shadow", "other"),
    "s4": Scenario("shadow", "recurrent"),
}
ATTACKERS = ("generic", "aware")
#: The "features" analysis compares T on these feature sets (log-mel vs low-level descriptors).
FEATURE_SETS = ("logmel", "is09-lld")


class _View(NamedTuple):
    """How one analysis reads the saved rows: which rows, the factor, the plot's title."""

    rows: str
    factor: str
    title: str
    ordered: bool = False


ANALYSES = {
    "layers": _View("layers", "layer", "gender leakage by layer of T", ordered=True),
    "emotions": _View("main", "emotion", "gender leakage by emotion category"),
    "features": _View("features", "model", "gender leakage by feature type of T"),
    "improvised": _View("main", "utterances", "gender leakage: IEMOCAP improvised vs scripted"),
}


def _items(text: str, valid: tuple[str, ...] | dict, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    for item in items:
        if item not in valid:
            raise unknown_name(f"intercept {what}", item, valid)
    return items


class _Fit(NamedTuple):
    """One classifier to train and apply to ``test``: picklable, so a worker process can run
    it. ``n_gender`` marginalises a joint (gender, emotion) softmax to gender.

    Training runs a fixed number of epochs on all the given speakers. Early stopping on
    held-out speakers was tried and dropped: with the few speakers a fold leaves (12 to 16 on
    the default corpus) the validation UAR jumped between epochs, and the epoch it chose
    sometimes scored chance on the test speakers (synth, 3 seeds: worst-case UAR 0.83-0.86
    with early stopping, 0.89-0.98 without; docs/intercept.md).
    """

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    epochs: int
    lr: float
    seed: int
    test: torch.Tensor | None = None
    n_gender: int = 0

    def train(self) -> nn.Module:
        return fit_classifier(self.model, [self.x], self.y, epochs=self.epochs, lr=self.lr,
                              weight_decay=1e-4, seed=self.seed)

    def predict(self) -> np.ndarray:
        """The attacker's gender probabilities (rows: test utterances; columns: codes)."""
        torch.set_num_threads(1)  # a worker process does not inherit the setting
        proba = predict_proba(self.train(), [self.test])
        if self.n_gender:
            proba = proba.view(len(proba), self.n_gender, -1).sum(2)
        return proba.numpy()


def _workers(requested: int) -> int:
    """``requested`` worker processes, or one per usable CPU; 1 where forkserver is missing."""
    if "forkserver" not in mp.get_all_start_methods():
        return 1
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return requested or cpus or 1


@dataclass
class InterceptAttack(Attack):
    """Parameters: T (``target`` family, ``size``, ``layer`` k), the attackers (``scenarios``,
    ``attackers``, ``other`` = the CNN family of s2/s3), training (``frames``,
    ``target_epochs``, ``epochs``, ``lr``, ``workers``) and the ``analyses`` (with
    ``analysis_scenarios``) written to the run directory."""

    name: ClassVar[str] = "intercept"
    summary: ClassVar[str] = ("gender from the hidden layer a split SER model transmits "
                              "(5 scenarios, generic and application-aware attackers)")
    surface: ClassVar[Surface] = Surface.REPRESENTATION
    default_features: ClassVar[str] = "logmel"
    feature_kinds: ClassVar[tuple[str, ...]] = ("sequence",)

    target: str = "vgg"
    size: str = "cpu"
    #: T's transmitted layer; "auto": the first pooling layer (the paper's), lstm1 for an LSTM.
    layer: str = "auto"
    other: str = "resnet"
    scenarios: str = "worst,s1,s2,s3,s4"
    attackers: str = "generic,aware"
    analyses: str = ""
    analysis_scenarios: str = "worst,s1"
    frames: int = 200
    #: Training epochs of T (trained once per fold: its emotion UAR is the reported utility).
    target_epochs: int = 20
    #: Training epochs of every attacker (ten per fold by default).
    epochs: int = 12
    lr: float = 1e-3
    #: Processes that train the attackers (0: one per CPU). Results do not depend on it.
    workers: int = 0

    def validate(self) -> None:
        if self.target not in FAMILIES:
            raise unknown_name("intercept target model", self.target, FAMILIES)
        if self.size not in SIZES:
            raise unknown_name("intercept model size", self.size, SIZES)
        if self.layer != "auto":
            check_layer(self.target, self.size, self.layer)
        others = tuple(f for f in CNN_FAMILIES if f != self.target)
        if self.other not in others:
            raise SerbenchError(f"intercept: other {self.other!r} must be a CNN family other "
                                f"than the target's; valid: {', '.join(others)}")
        analyses = _items(self.analyses, ANALYSES, "analysis")
        if not (self.jobs(self.scenarios) and (self.jobs(self.analysis_scenarios)
                                               or not {"layers", "features"} & set(analyses))):
            raise SerbenchError("intercept: give at least one scenario (and analysis scenario, "
                                "for the layers and features analyses) and one attacker")
        if (self.frames < 8 or min(self.epochs, self.target_epochs) < 1 or self.lr <= 0
                or self.workers < 0):
            raise SerbenchError("intercept: need frames >= 8, epochs and target_epochs >= 1, "
                                "lr > 0, workers >= 0")

    @property
    def k(self) -> str:
        return default_layer(self.target) if self.layer == "auto" else self.layer

    def jobs(self, scenarios: str) -> list[tuple[str, str]]:
        return [(s, a) for s in _items(scenarios, SCENARIOS, "scenario")
                for a in _items(self.attackers, ATTACKERS, "attacker")]

    def fit(self, ctx: EvalContext) -> None:
        """Fail before any training on what the run cannot do (T is trained per fold, and so
        is every attacker: there is nothing fold-independent to learn)."""
        analyses = _items(self.analyses, ANALYSES, "analysis")
        used = set(_items(self.scenarios, SCENARIOS, "scenario"))
        if {"layers", "features"} & set(analyses):
            used |= set(_items(self.analysis_scenarios, SCENARIOS, "scenario"))
        shadowed = sorted(s for s in used if SCENARIOS[s].data == "shadow")
        if shadowed and ctx.shadow is None:
            raise SerbenchError(f"intercept scenario(s) {', '.join(shadowed)} train the attacker "
                                f"on shadow speakers: give --shadow disjoint (or other datasets), "
                                f"or --attack-param scenarios=worst,s2")
        if shadowed and "aware" in _items(self.attackers, ATTACKERS, "attacker"):
            # The application-aware attacker learns T's emotion task on the shadow speakers:
            # it needs their labels in T's classes (fails here, before any training).
            emotion_labels(ctx.shadow.table["emotion"], emotion_classes(ctx.target.table["emotion"]))
        if analyses and ctx.out_dir is None:
            raise SerbenchError("intercept analyses write to the run directory: run them with "
                                "`serbench eval` (EvalContext.out_dir is not set)")
        if "improvised" in analyses and "improvised" not in ctx.target.table:
            ctx.reporter.log(f"analysis 'improvised' skipped: dataset {ctx.target.name!r} has no "
                             f"'improvised' column (IEMOCAP has one)")

    def recipe(self, ctx: EvalContext, family: str | None = None,
               features: str | None = None) -> SplitRecipe:
        """T as the device runs it, transmitting layer k (another ``family`` or ``features``:
        the models the features analysis compares, which transmit nothing in training)."""
        if family is None and features is None:
            return SplitRecipe(self.target, self.size, ctx.features, self.frames,
                               self.target_epochs, self.lr, self.k)
        return SplitRecipe(family or self.target, self.size, features or ctx.features,
                           self.frames, self.target_epochs, self.lr)

    def evaluate_fold(self, ctx: EvalContext, fold: int,
                      deployed: SplitDeployment) -> FoldResult:
        # More cores serve through worker processes: the models are too small to split (on
        # the busy 2-core machine two threads trained them ten times slower, measured).
        run = _FoldRun(self, ctx, fold)
        main = run.leakage(deployed.target, self.k, self.jobs(self.scenarios))
        preds = run.frame(main)
        if self.analyses:
            self.write_analyses(ctx, fold, run, deployed.target, main, preds)
        return FoldResult(preds, deployed.privacy)

    def write_analyses(self, ctx: EvalContext, fold: int, run: _FoldRun, target: Target,
                       main: _Leakage, preds: pd.DataFrame) -> None:
        """This fold's analysis rows, then every analysis's table and plot over the folds
        done so far (so the last fold leaves them complete, and a resumed run too)."""
        analyses = _items(self.analyses, ANALYSES, "analysis")
        jobs = self.jobs(self.analysis_scenarios)
        frames = [preds.assign(analysis="main")]
        if "layers" in analyses:
            for layer in readable_layers(self.target, self.size):
                result = run.leakage(target, layer, jobs, main if layer == self.k else None)
                frames.append(run.frame(result, jobs).assign(analysis="layers", layer=layer))
        if "features" in analyses:
            families = dict.fromkeys([self.target, "lstm"])
            for features in FEATURE_SETS:
                for family in families:
                    layer = default_layer(family)
                    same = (family, features, layer) == (self.target, ctx.features, self.k)
                    model = target if same else train_target(
                        self.recipe(ctx, family, features), ctx.target, run.sides["target"][1],
                        None, stable_seed(ctx.seed, fold, "target", family, features))
                    result = run.leakage(model, layer, jobs, main if same else None)
                    frames.append(run.frame(result, jobs).assign(
                        analysis="features", model=f"{family} on {features} ({layer})"))
        root = ctx.out_dir / "analyses" / ctx.mode
        write_csv(root / "folds" / f"fold-{fold}.csv",
                  pd.concat(frames, ignore_index=True).assign(fold=fold))
        rows = pd.concat([pd.read_csv(p, keep_default_na=False)
                          for p in sorted((root / "folds").glob("fold-*.csv"))], ignore_index=True)
        for name in analyses:
            view = ANALYSES[name]
            if view.factor not in rows:  # e.g. "utterances" without IEMOCAP's column
                continue
            write_analysis(rows[rows["analysis"] == view.rows], [view.factor, "group"],
                           view.factor, "group", root / name, title=view.title,
                           ordered=view.ordered, seed=ctx.seed)


class _Leakage(NamedTuple):
    """One attacked layer: gender probabilities per (scenario, attacker),
    and T's emotion predictions from the same (defended) transmission."""

    gender: dict[tuple[str, str], np.ndarray]
    emotion: np.ndarray


class _FoldRun(FoldSides):
    """One fold of the intercept attack: T trained without the fold's speakers (the sides of
    :class:`FoldSides`), attacked at one or more layers."""

    def __init__(self, attack: InterceptAttack, ctx: EvalContext, fold: int) -> None:
        super().__init__(ctx, fold)
        self.attack = attack

    def labels(self, side: str, attacker: str) -> torch.Tensor:
        """Gender codes; for the application-aware attacker, joint (gender, emotion) codes."""
        table = self.table(side)
        gender = table["gender"].map(GENDERS.index).to_numpy()
        if attacker == "aware":
            gender = gender * len(self.classes) + emotion_labels(table["emotion"], self.classes)
        return torch.tensor(gender, dtype=torch.long)

    def transmitted(self, target: Target, layer: str, side: str) -> torch.Tensor:
        """h_T at ``layer`` for ``side``'s utterances, through that side's defense."""
        data, rows, defense = self.sides[side]
        x, mask = data.padded(target.features, self.attack.frames)
        h = target.hidden(target.inputs(x[rows], mask[rows]), layer)
        generator = torch.Generator().manual_seed(
            stable_seed(self.ctx.seed, self.fold, side, layer, target.net.family, target.features))
        return transmit(defense, h, generator)

    def attacker(self, target: Target, layer: str, scenario: str, attacker: str,
                 shape: tuple[int, int, int], seed: int) -> nn.Module:
        n_out = len(GENDERS) + (len(self.classes) if attacker == "aware" else 0)
        arch, size = SCENARIOS[scenario].arch, self.attack.size
        if arch == "same":  # T's layers after k, re-initialised
            net = build(target.net.family, target.shape, n_out, size, seed=seed).after(layer)
        else:
            net = build(self.attack.other if arch == "other" else "lstm", shape, n_out, size,
                        seed=seed)
        return JointHead(net, len(GENDERS)) if attacker == "aware" else net

    def leakage(self, target: Target, layer: str, jobs: list[tuple[str, str]],
                known: _Leakage | None = None) -> _Leakage:
        """Attack ``target`` at ``layer`` with each (scenario, attacker) of ``jobs``, except
        those ``known`` already holds (the same T and layer, attacked before)."""
        todo = [job for job in jobs if known is None or job not in known.gender]
        if known is not None and not todo:
            return known
        sides = ["test", *dict.fromkeys(SCENARIOS[s].data for s, _ in todo)]
        h = {side: self.transmitted(target, layer, side) for side in sides}
        fits = []
        for scenario, attacker in todo:
            side = SCENARIOS[scenario].data
            seed = stable_seed(self.ctx.seed, self.fold, scenario, attacker, layer,
                         target.net.family, target.features)
            model = self.attacker(target, layer, scenario, attacker, tuple(h["test"].shape[1:]),
                                  seed)
            fits.append(_Fit(model, h[side], self.labels(side, attacker), self.attack.epochs,
                             self.attack.lr, seed, h["test"],
                             len(GENDERS) if attacker == "aware" else 0))
        gender = dict(known.gender) if known is not None else {}
        description = f"fold {self.fold}: {len(fits)} attackers on {target.net.family} {layer}"
        with self.ctx.reporter.track(description, len(fits)) as advance:
            for job, proba in zip(todo, self.map(fits)):
                gender[job] = proba
                advance(1)
        emotion = predict_proba(target.net.after(layer), [h["test"]]).argmax(1).numpy()
        return _Leakage(gender, emotion)

    def map(self, fits: list[_Fit]) -> Iterator[np.ndarray]:
        """Each fit's test probabilities, in order, from worker processes. forkserver, not fork:
        forking after torch has started its thread pools deadlocked (seen in CI)."""
        workers = min(_workers(self.attack.workers), len(fits))
        if workers < 2:
            yield from (fit.predict() for fit in fits)
            return
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("forkserver")) as pool:
            yield from pool.map(_Fit.predict, fits)

    def emotion(self, result: _Leakage) -> tuple[np.ndarray, np.ndarray]:
        """T's emotion (true, predicted) on the test speakers."""
        return emotion_labels(self.table("test")["emotion"], self.classes), result.emotion

    def frame(self, result: _Leakage, jobs: list[tuple[str, str]] | None = None) -> pd.DataFrame:
        """Prediction rows: T's emotion (group "") and each attack's gender ("scenario/type"),
        with each utterance's speaker, emotion and, for IEMOCAP, improvised or scripted."""
        table = self.table("test")
        info = {"speaker": table["speaker"].to_numpy(), "emotion": table["emotion"].to_numpy()}
        if "improvised" in table:
            info["utterances"] = np.where(table["improvised"], "improvised", "scripted")
        y_true, y_pred = self.emotion(result)
        parts = [pd.DataFrame({"task": "emotion", "group": "", "y_true": y_true,
                               "y_pred": y_pred, **info})]
        gender = table["gender"].map(GENDERS.index).to_numpy()
        for scenario, attacker in jobs or result.gender:
            proba = result.gender[(scenario, attacker)]
            parts.append(pd.DataFrame({"task": "gender", "group": f"{scenario}/{attacker}",
                                       "y_true": gender, "y_pred": proba.argmax(1),
                                       "score": proba[:, 1], **info}))
        return pd.concat(parts, ignore_index=True)
