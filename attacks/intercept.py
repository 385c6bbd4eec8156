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

from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from serbench.analyses import AnalysisView
from serbench.attacks.intercept_fit import Fit, Out, Score
from serbench.attacks.layer_link import layer_trials
from serbench.attacks.sides import FoldSides
from serbench.context import Attack, EvalContext
from serbench.corpora.base import GENDERS
from serbench.deploy.split import SplitDeployment, SplitRecipe, Target, deploy_split, transmit
from serbench.errors import SerbenchError, unknown_name
from serbench.metrics import emotion_classes, emotion_labels
from serbench.models.targets import CNN_FAMILIES, FAMILIES, SIZES, JointHead, build, \
    check_layer, default_layer, readable_layers
from serbench.models.train import predict_proba
from serbench.plugins import Surface
from serbench.results import FoldResult
from serbench.scoring import Role
from serbench.seeds import stable_seed
from serbench.workers import process_map


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


ANALYSES = {
    "layers": AnalysisView("layers", "layer", "gender leakage by layer of T", ordered=True),
    "emotions": AnalysisView("main", "emotion", "gender leakage by emotion category"),
    "features": AnalysisView("features", "model", "gender leakage by feature type of T"),
    "improvised": AnalysisView("main", "utterances",
                               "gender leakage: IEMOCAP improvised vs scripted"),
}


def _items(text: str, valid: tuple[str, ...] | dict, what: str) -> list[str]:
    items = [t.strip() for t in text.split(",") if t.strip()]
    for item in items:
        if item not in valid:
            raise unknown_name(f"intercept {what}", item, valid)
    return items


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

    #: T's model family (e.g. vgg, resnet, lstm).
    target: str = "vgg"
    #: T's width: "cpu" (scaled to run here) or "paper".
    size: str = "cpu"
    #: T's transmitted layer; "auto": the first pooling layer (the paper's), lstm1 for an LSTM.
    layer: str = "auto"
    #: The CNN family of the s2/s3 attackers' own models.
    other: str = "resnet"
    #: The attacker knowledge scenarios run (docs/intercept.md).
    scenarios: str = "worst,s1,s2,s3,s4"
    #: Attacker types: generic (gender only) and application-aware (gender and emotion).
    attackers: str = "generic,aware"
    #: Analyses written to the run directory (layers, emotions, features, improvised).
    analyses: str = ""
    #: The scenarios the analyses run for.
    analysis_scenarios: str = "worst,s1"
    #: Log-mel frames per utterance (cropped or padded).
    frames: int = 200
    #: Training epochs of T (trained once per fold: its emotion UAR is the reported utility).
    target_epochs: int = 20
    #: Training epochs of every attacker (ten per fold by default).
    epochs: int = 12
    #: Learning rate (Adam) of T and the attackers.
    lr: float = 1e-3
    #: Processes that train the attackers (0: one per CPU). Results do not depend on it.
    workers: int = 0
    #: Share of each gender's speakers of T's training side held out for validation (never a
    #: test speaker): it sets the epochs of the attackers trained on T's side (worst, s2) and
    #: lets ``worst`` pick its attacker. 0: fixed ``epochs``, no selection (as before).
    validation: float = 1 / 3
    #: With validation, worst/s2 train ``epochs`` and then on, up to ``max_epochs`` (0: 4 x
    #: ``epochs``), until ``patience`` epochs (0: half of ``epochs``) bring no better score on
    #: the held-out speakers.
    max_epochs: int = 0
    #: See max_epochs.
    patience: int = 0
    #: ``worst`` = the candidate scoring best on the held-out speakers among every scenario's
    #: attacker of its type run with it (the full-knowledge attacker may use any of them);
    #: false: T's own layers after k only (the paper's Table 1).
    worst_selects: bool = True
    #: Also score speaker linkability from layer k (``speaker@layer``, an EER; needs shadow
    #: speakers for its LDA backend: attacks/layer_link.py).
    linkability: bool = True
    added_params: ClassVar[dict[str, bool]] = {"linkability": False}

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
                or self.workers < 0 or not 0 <= self.validation < 1
                or min(self.max_epochs, self.patience) < 0):
            raise SerbenchError("intercept: need frames >= 8, epochs and target_epochs >= 1, "
                                "lr > 0, workers, max_epochs and patience >= 0, "
                                "0 <= validation < 1")

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
        if deployed.own_attacker is not None and ctx.mode == "non-adaptive":
            preds = pd.concat([preds, run.own_frame(deployed)], ignore_index=True)
        if self.linkability and ctx.shadow is not None:
            trials = layer_trials(ctx, fold, deployed.target, self.k, self.frames)
            preds = pd.concat([preds, trials], ignore_index=True).fillna({"enrolled": ""})
        analyses = self.analysis_rows(ctx, fold, run, deployed.target, main, preds) \
            if self.analyses else None
        return FoldResult(preds, deployed.privacy, deployed.accounting, analyses)

    def role(self, task: str, group: str) -> Role:
        return Role.LINKABILITY if task == "speaker" else super().role(task, group)

    def analysis_views(self) -> dict[str, AnalysisView]:
        return {name: ANALYSES[name] for name in _items(self.analyses, ANALYSES, "analysis")}

    def analysis_rows(self, ctx: EvalContext, fold: int, run: _FoldRun, target: Target,
                      main: _Leakage, preds: pd.DataFrame) -> pd.DataFrame:
        """This fold's rows of every analysis (the results stage writes their tables and
        plots). The models the features analysis compares come from the deployment stage,
        trained through the deployed defense as T is."""
        analyses, jobs = self.analysis_views(), self.jobs(self.analysis_scenarios)
        frames = [preds.assign(analysis="main")]
        if "layers" in analyses:
            for layer in readable_layers(self.target, self.size):
                result = run.leakage(target, layer, jobs, main if layer == self.k else None)
                frames.append(run.frame(result, jobs).assign(analysis="layers", layer=layer))
        if "features" in analyses:
            for features in FEATURE_SETS:
                for family in dict.fromkeys([self.target, "lstm"]):
                    layer = default_layer(family)
                    same = (family, features, layer) == (self.target, ctx.features, self.k)
                    model = target if same else deploy_split(
                        self.recipe(ctx, family, features), ctx.target, run.sides["target"][1],
                        ctx.defense, seed=ctx.seed, fold=fold).target
                    result = run.leakage(model, layer, jobs, main if same else None)
                    frames.append(run.frame(result, jobs).assign(
                        analysis="features", model=f"{family} on {features} ({layer})"))
        return pd.concat(frames, ignore_index=True).assign(fold=fold)


class _Leakage(NamedTuple):
    """One attacked layer: gender probabilities per (scenario, attacker),
    and T's emotion predictions from the same (defended) transmission."""

    gender: dict[tuple[str, str], np.ndarray]
    emotion: np.ndarray
    #: Per (scenario, attacker): the scenario whose model gave the predictions (``worst``'s
    #: pick) and its score on the held-out training-side speakers.
    picked: dict[tuple[str, str], str]
    val: dict[tuple[str, str], Score | None]


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

    def held_out_rows(self) -> np.ndarray | None:
        """Which rows of the target side hold the held-out validation speakers: a share
        ``validation`` of each gender's speakers (at least one), twins (``pair``) together;
        ``None`` where a gender has fewer than two speakers, or validation is off."""
        if not self.attack.validation:
            return None
        table = self.table("target")
        unit = "pair" if "pair" in table else "speaker"
        units = table.drop_duplicates(unit).sort_values(unit)
        groups = [units] if unit == "pair" else [g for _, g in units.groupby("gender")]
        if len(groups) < (1 if unit == "pair" else len(GENDERS)) \
                or min(len(g) for g in groups) < 2:
            return None
        rng = np.random.default_rng(stable_seed(self.ctx.seed, self.fold, "validation"))
        held: list[str] = []
        for group in groups:
            names = rng.permutation(group[unit].astype(str).to_numpy())
            held.extend(names[:max(1, int(round(self.attack.validation * len(names))))])
        return table[unit].astype(str).isin(held).to_numpy()

    def leakage(self, target: Target, layer: str, jobs: list[tuple[str, str]],
                known: _Leakage | None = None) -> _Leakage:
        """Attack ``target`` at ``layer`` with each (scenario, attacker) of ``jobs``, except
        those ``known`` already holds (the same T and layer, attacked before)."""
        todo = [job for job in jobs if known is None or job not in known.gender]
        if known is not None and not todo:
            return known
        sides = ["test", "target", *dict.fromkeys(SCENARIOS[s].data for s, _ in todo)]
        h = {side: self.transmitted(target, layer, side) for side in dict.fromkeys(sides)}
        held = self.held_out_rows()
        val = None
        if held is not None:
            gender = self.table("target")["gender"].map(GENDERS.index).to_numpy()
            val = (h["target"][torch.from_numpy(np.flatnonzero(held))], gender[held])
            fit_rows = torch.from_numpy(np.flatnonzero(~held))
        fits = []
        for scenario, attacker in todo:
            side = SCENARIOS[scenario].data
            seed = stable_seed(self.ctx.seed, self.fold, scenario, attacker, layer,
                               target.net.family, target.features)
            model = self.attacker(target, layer, scenario, attacker, tuple(h["test"].shape[1:]),
                                  seed)
            fits.append(Fit(model, h[side], self.labels(side, attacker), self.attack.epochs,
                             self.attack.lr, seed, h["test"],
                             len(GENDERS) if attacker == "aware" else 0, val,
                             fit_rows if val is not None and side == "target" else None,
                             self.attack.max_epochs or 4 * self.attack.epochs,
                             self.attack.patience or max(1, self.attack.epochs // 2)))
        gender = dict(known.gender) if known is not None else {}
        picked = dict(known.picked) if known is not None else {}
        scores = dict(known.val) if known is not None else {}
        own: dict[tuple[str, str], np.ndarray] = {}
        description = f"fold {self.fold}: {len(fits)} attackers on {target.net.family} {layer}"
        with self.ctx.reporter.track(description, len(fits)) as advance:
            for job, out in zip(todo, self.map(fits)):
                own[job], scores[job], picked[job] = out.test, out.val, job[0]
                gender[job] = out.test
                advance(1)
        for job in todo:
            if job[0] == "worst" and self.attack.worst_selects and scores[job] is not None:
                pool = [(s, job[1]) for s in SCENARIOS if (s, job[1]) in jobs
                        and (s, job[1]) in own and scores[(s, job[1])] is not None]
                best = max(pool, key=lambda j: (scores[j], j == job))  # ties: worst's own
                gender[job], picked[job] = own[best], best[0]
                self.ctx.reporter.log(
                    f"fold {self.fold} {layer}: worst/{job[1]} picks {best[0]}'s attacker "
                    f"(held-out training-side UAR "
                    + ", ".join(f"{s} {scores[j][0]:.3f}" for j in pool for s in [j[0]]) + ")")
        emotion = predict_proba(target.net.after(layer), [h["test"]]).argmax(1).numpy()
        return _Leakage(gender, emotion, picked, scores)

    def map(self, fits: list[Fit]) -> Iterator[Out]:
        """Each fit's results, in order, from worker processes (:mod:`serbench.workers`)."""
        return process_map(Fit.run, fits, workers=self.attack.workers)

    def emotion(self, result: _Leakage) -> tuple[np.ndarray, np.ndarray]:
        """T's emotion (true, predicted) on the test speakers."""
        return emotion_labels(self.table("test")["emotion"], self.classes), result.emotion

    def info(self) -> dict[str, np.ndarray]:
        """Each test utterance's speaker, emotion and, for IEMOCAP, improvised or scripted."""
        table = self.table("test")
        info = {"speaker": table["speaker"].to_numpy(), "emotion": table["emotion"].to_numpy()}
        if "improvised" in table:
            info["utterances"] = np.where(table["improvised"], "improvised", "scripted")
        return info

    def own_frame(self, deployed: SplitDeployment) -> pd.DataFrame:
        """The defense's own attacker (its paper's non-adaptive one, e.g. ``grl``'s adversary,
        trained with T) on the test speakers' transmissions: group ``own/adversary``."""
        h = self.transmitted(deployed.target, self.attack.k, "test")
        with torch.no_grad():
            proba = torch.cat([deployed.own_attacker(h[i:i + 256])
                               for i in range(0, len(h), 256)]).numpy()
        gender = self.table("test")["gender"].map(GENDERS.index).to_numpy()
        return pd.DataFrame({"task": "gender", "group": "own/adversary", "y_true": gender,
                             "y_pred": proba.argmax(1), "score": proba[:, 1], "bound": "",
                             "model": "own", **self.info()})

    def frame(self, result: _Leakage, jobs: list[tuple[str, str]] | None = None) -> pd.DataFrame:
        """Prediction rows: T's emotion (group "") and each attack's gender ("scenario/type"),
        with each utterance's :meth:`info`."""
        table = self.table("test")
        info = self.info()
        y_true, y_pred = self.emotion(result)
        parts = [pd.DataFrame({"task": "emotion", "group": "", "y_true": y_true,
                               "y_pred": y_pred, "bound": "", "model": "", **info})]
        gender = table["gender"].map(GENDERS.index).to_numpy()
        jobs = jobs or list(result.gender)
        for scenario, attacker in jobs:
            proba = result.gender[(scenario, attacker)]
            # "bound": the measure that should leak at least as much (serbench.scoring's
            # bound_violations flags a fold where this one beats it beyond a paired CI).
            bound = f"worst/{attacker}" if scenario != "worst" and ("worst", attacker) in jobs \
                else ""
            parts.append(pd.DataFrame({"task": "gender", "group": f"{scenario}/{attacker}",
                                       "y_true": gender, "y_pred": proba.argmax(1),
                                       "score": proba[:, 1], "bound": bound,
                                       "model": result.picked[(scenario, attacker)], **info}))
        return pd.concat(parts, ignore_index=True)
