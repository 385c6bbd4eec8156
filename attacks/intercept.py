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

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from serbench.analyses import write_analysis
from serbench.attacks.sides import FoldSides
from serbench.context import Attack, EvalContext
from serbench.corpora.base import GENDERS
from serbench.deploy.split import SplitDeployment, SplitRecipe, Target, train_target, transmit
from serbench.errors import SerbenchError, unknown_name
from serbench.metrics import emotion_classes, emotion_labels
from serbench.models.targets import CNN_FAMILIES, FAMILIES, SIZES, JointHead, build, \
    check_layer, default_layer, readable_layers
from serbench.models.train import fit_classifier, predict_proba
from serbench.plugins import Surface
from serbench.results import FoldResult, write_csv
from serbench.scoring import uar
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


Score = tuple[float, float]


def _score(proba: np.ndarray, gender: np.ndarray) -> Score:
    """How well gender probabilities fit held-out speakers: (UAR, mean probability of the
    true gender averaged over genders). The second, smooth, breaks UAR's ties."""
    soft = float(np.mean([proba[gender == g, g].mean() for g in np.unique(gender)]))
    return uar(gender, proba.argmax(1)), soft


class _Out(NamedTuple):
    """A fit's gender probabilities on the test speakers, its score on the validation
    speakers (``None``: none held out) and the epochs of its final training."""

    test: np.ndarray
    val: Score | None
    epochs: int


class _Fit(NamedTuple):
    """One classifier to train and apply to ``test``: picklable, so a worker process can run
    it. ``n_gender`` marginalises a joint (gender, emotion) softmax to gender.

    ``val`` holds out speakers of T's training side (their h_T and gender codes), never a
    test speaker. With ``fit_rows`` (the rows of ``x`` that are not theirs: a scenario that
    trains on T's training side), the model first trains on those rows only for up to
    ``epochs``, scored on ``val`` after every epoch; the epoch count of the best score is
    kept and a fresh copy of the same initial model is refit on all of ``x`` for that many
    epochs. Without ``fit_rows`` (a shadow-trained attacker, which never saw the held-out
    speakers) it trains on ``x`` for ``epochs`` and is scored on ``val`` once, so the
    ``worst`` attacker can compare every candidate on the same held-out speakers.

    Early stopping on the *final* model was dropped once (docs/intercept.md): with 12-16
    speakers the validation UAR jumped between epochs. Refitting on every training speaker
    for the chosen number of epochs keeps all the data in the final model; only the epoch
    count comes from validation.
    """

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    epochs: int
    lr: float
    seed: int
    test: torch.Tensor | None = None
    n_gender: int = 0
    val: tuple[torch.Tensor, np.ndarray] | None = None
    fit_rows: torch.Tensor | None = None
    max_epochs: int = 0
    patience: int = 0

    def gender(self, model: nn.Module, x: torch.Tensor) -> np.ndarray:
        proba = predict_proba(model, [x])
        if self.n_gender:
            proba = proba.view(len(proba), self.n_gender, -1).sum(2)
        return proba.numpy()

    def train(self, model: nn.Module, rows: torch.Tensor | None = None, epochs: int | None = None,
              advance=None) -> nn.Module:
        x, y = (self.x, self.y) if rows is None else (self.x[rows], self.y[rows])
        return fit_classifier(model, [x], y, epochs=epochs or self.epochs, lr=self.lr,
                              weight_decay=1e-4, seed=self.seed, advance=advance)

    def run(self) -> _Out:
        """The attacker's gender probabilities on the test speakers (rows: utterances;
        columns: codes), with its validation score."""
        torch.set_num_threads(1)  # a worker process does not inherit the setting
        if self.val is None:
            return _Out(self.gender(self.train(self.model), self.test), None, self.epochs)
        if self.fit_rows is None:
            model = self.train(self.model)
            return _Out(self.gender(model, self.test), _score(self.gender(model, self.val[0]),
                                                              self.val[1]), self.epochs)
        probe = copy.deepcopy(self.model)
        curve: list[Score] = []
        start = self.epochs - 1

        def validate(_: int) -> None:  # fit_classifier's per-epoch hook
            curve.append(_score(self.gender(probe, self.val[0]), self.val[1]))
            if len(curve) > self.epochs and len(curve) - _best(curve, start) > self.patience:
                raise _Enough

        try:
            self.train(probe, self.fit_rows, epochs=max(self.epochs, self.max_epochs),
                       advance=validate)
        except _Enough:
            pass
        best = _best(curve, start)
        model = self.train(self.model, epochs=best + 1)
        return _Out(self.gender(model, self.test), curve[best], best + 1)


class _Enough(Exception):
    """Stops a validated training: no better validation score for ``patience`` epochs."""


def _best(curve: list[Score], start: int) -> int:
    """The first epoch (0-based) of the best score from epoch ``start`` on."""
    return max(range(start, len(curve)), key=lambda e: (curve[e], -e))


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
        return FoldResult(preds, deployed.privacy, deployed.accounting)

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

    def validation(self) -> np.ndarray | None:
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
        held = self.validation()
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
            fits.append(_Fit(model, h[side], self.labels(side, attacker), self.attack.epochs,
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

    def map(self, fits: list[_Fit]) -> Iterator[_Out]:
        """Each fit's results, in order, from worker processes (:mod:`serbench.workers`)."""
        return process_map(_Fit.run, fits, workers=self.attack.workers)

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
