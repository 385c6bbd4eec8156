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

from dataclasses import dataclass
from typing import ClassVar

import pandas as pd

from serbench.analyses import AnalysisView
from serbench.attacks.intercept_fold import ATTACKERS, SCENARIOS, FoldRun, Leakage
from serbench.attacks.layer_link import layer_trials
from serbench.context import Attack, EvalContext
from serbench.deploy.split import SplitDeployment, SplitRecipe, Target, deploy_split
from serbench.errors import SerbenchError, unknown_name
from serbench.metrics import emotion_classes, emotion_labels
from serbench.models.targets import CNN_FAMILIES, FAMILIES, SIZES, check_layer, default_layer, \
    readable_layers
from serbench.plugins import Surface
from serbench.results import FoldResult
from serbench.scoring import Role


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
    #: Processes that train the attackers (0: the run's ``--workers``). Results do not
    #: depend on it.
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
        run = FoldRun(self, ctx, fold)
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

    def analysis_rows(self, ctx: EvalContext, fold: int, run: FoldRun, target: Target,
                      main: Leakage, preds: pd.DataFrame) -> pd.DataFrame:
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
