"""FL attribute inference from shared updates (SPEC §3.2; Feng et al., fed-ser-leakage).

The honest-but-curious server records every client's update. The attacker runs the same FL
recipe on shadow speakers whose gender it knows, trains a CNN on one layer's updates (the weight
update as a one-channel image plus the bias update, z-normalised with shadow statistics), and
classifies each private client's update, alone or averaged over n of that client's updates.

Candidates (``model``): the reference CNN, a logistic regression on the flattened update, and,
on the first layer, the input-space inversion (:mod:`attacks.update_inversion`): the server
keeps, of each round's global model it sends, the backprop basis on its own reference inputs,
maps every first-layer update into class x input-feature space, and classifies there, each side
standardised with its own statistics. ``auto`` picks the best of the logistic regression and
the inversion on held-out shadow speakers; the CNN, which lost every selection measured
(docs/performance.md), is tried only when named. The adaptive attacker also tries the
non-adaptive one's model, and reads every candidate with its sign and threshold calibrated on
held-out shadow speakers run under the defense (:mod:`attacks.update_calibration`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from serbench.attacks.update_inversion import backprop_basis
from serbench.attacks.update_calibration import IDENTITY, Calibration, calibrated
from serbench.attacks.update_selection import CANDIDATES, STRATEGIES, Fitted, Shadow, \
    held_out_speakers, judge_fitted
from serbench.attacks.update_sets import INVERTED, add_inverted, average_updates, \
    keep_inverted, normalise
from serbench.context import Attack, EvalContext
from serbench.deploy.federated import SERVER_ELSEWHERE, FLDeployment, FLRecipe
from serbench.errors import SerbenchError
from serbench.fl.clients import make_clients
from serbench.fl.engine import FLConfig, UpdateLog, predict, recorded_per_round
from serbench.metrics import emotion_classes, emotion_labels
from serbench.models.mlp import SERMLP
from serbench.models.train import predict_proba
from serbench.plugins import Surface
from serbench.registry import load_plugin
from serbench.results import FoldResult

#: Reference inputs (attacker's shadow inputs) for each round's backprop basis.
REFERENCE_INPUTS = 400


@dataclass
class FLInferenceAttack(Attack):
    """Shared by ``fedsgd`` and ``fedavg``; only the FL algorithm differs."""

    surface: ClassVar[Surface] = Surface.UPDATE
    default_features: ClassVar[str] = "emobase"
    feature_kinds: ClassVar[tuple[str, ...]] = ("functionals",)
    algorithm: ClassVar[str]
    shadow_trains_with_defense: ClassVar[bool] = True  # the shadow FL clients train defended
    parallel_folds: ClassVar[bool] = True

    #: The layer whose updates the attacker reads: first, second or last.
    layer: str = "first"
    #: FL rounds of the target's and the shadow's runs (the reference: 200).
    rounds: int = 200
    #: Share of the clients sampled each round.
    client_fraction: float = 0.1
    #: Sizes n of the per-client averages of n consecutive updates attacked ("all": every
    #: update of a client).
    averaging: str = "1,5,10,all"
    #: The attack model: auto (the best of linear and inversion on held-out shadow speakers),
    #: cnn, linear or inversion.
    model: str = "auto"
    #: The CNN candidate's pooling of the update's input-feature axis.
    input_pool: int = 8
    #: Training epochs of the CNN candidate (early-stopped on held-out shadow speakers).
    epochs: int = 12
    #: Every Nth round the server computes every shadow client's update on its global model
    #: (0: only the sampled clients').
    shadow_probe_every: int = 8
    #: Shadow FL runs for the inversion candidate: the first starts from the server's
    #: initialisation (the weight-space models need its alignment), the others from other
    #: initialisations and client samplings (the reference trained five shadow models).
    shadow_runs: int = 3
    #: Where candidate models are judged: ``run``, held-out shadow speakers in an FL run of
    #: their own from the server's initialisation (as the target's speakers are); ``same-run``,
    #: held-out speakers of the training run, whose shared trajectory flatters the
    #: weight-space models (docs/design.md: on synth they were chosen and transferred worst).
    validation: str = "run"
    #: ``model=auto`` leaves out the weight-space candidate (linear) when one shadow FL
    #: run's recorded updates of the attacked layer take more than this many GiB: they need
    #: every update whole in memory, the shadow's and the target's, while the inversion keeps
    #: 4 x D numbers of each update, computed as it arrives (docs/performance.md). At the
    #: default it keeps them on synth's 40 speakers, not on CREMA-D's 91; raise it where
    #: memory allows.
    weight_space_gib: float = 1.5

    MODELS: ClassVar[tuple[str, ...]] = ("auto", *CANDIDATES)
    VALIDATIONS: ClassVar[tuple[str, ...]] = tuple(STRATEGIES)
    #: (every run recorded before weight_space_gib existed fitted within its default)
    added_params: ClassVar[dict[str, Any]] = {"validation": "same-run", "weight_space_gib": 1.5}
    _fitted: dict[str, Fitted] = field(default_factory=dict, init=False, repr=False)

    def validate(self) -> None:
        if self.layer not in SERMLP.layer_names:
            raise SerbenchError(f"attack {self.name!r}: unknown layer {self.layer!r}; "
                                f"valid layers: {', '.join(SERMLP.layer_names)}")
        if (self.rounds < 1 or not 0 < self.client_fraction <= 1 or self.input_pool < 1
                or self.shadow_probe_every < 0 or self.shadow_runs < 1
                or not self.weight_space_gib > 0):
            raise SerbenchError(f"attack {self.name!r}: need rounds >= 1, 0 < client_fraction <= 1"
                                f", input_pool >= 1, shadow_probe_every >= 0, shadow_runs >= 1 "
                                f"and weight_space_gib > 0")
        if self.model not in self.MODELS:
            raise SerbenchError(f"attack {self.name!r}: unknown model {self.model!r}; "
                                f"valid: {', '.join(self.MODELS)}")
        if self.validation not in self.VALIDATIONS:
            raise SerbenchError(f"attack {self.name!r}: unknown validation {self.validation!r}; "
                                f"valid: {', '.join(self.VALIDATIONS)}")
        if self.model == "inversion" and self.layer != "first":
            raise SerbenchError(f"attack {self.name!r}: model 'inversion' inverts first-layer "
                                f"updates only; give layer=first or another model")
        self.averaging_sizes()

    def averaging_sizes(self) -> list[int | None]:
        sizes: list[int | None] = []
        for item in self.averaging.split(","):
            item = item.strip()
            if item == "all":
                sizes.append(None)
            elif item.isdigit() and int(item) > 0:
                sizes.append(int(item))
            else:
                raise SerbenchError(f"attack {self.name!r}: averaging {item!r} is not a positive "
                                    f"integer or 'all'")
        return sizes

    def fl_config(self, ctx: EvalContext) -> FLConfig:
        classes = emotion_classes(ctx.target.table["emotion"])
        return FLConfig(self.algorithm, rounds=self.rounds, client_fraction=self.client_fraction,
                        n_classes=len(classes))

    def target_per_round(self, ctx: EvalContext) -> int:
        """The clients per round of the target's FL runs: the server's own schedule, so the
        attacker knows it. Folds whose training sides differ in size may differ; the count of
        most folds (the larger on a tie) stands for all, whichever folds a run evaluates."""
        table, cfg = ctx.target.table, self.fl_config(ctx)
        counts = [cfg.clients_per_round(len(make_clients(
            table[table["fold"] != fold].reset_index(drop=True), ctx.target.clients_per_speaker,
            ctx.seed))) for fold in sorted(set(table["fold"]))]
        return max(set(counts), key=lambda c: (counts.count(c), c))

    def shadow_config(self, ctx: EvalContext) -> FLConfig:
        """The FL recipe of every simulation the attacker runs: the target's, aggregating the
        target's clients per round (a fixed count, sampled without replacement, as the target's
        schedule) whatever the number of shadow clients."""
        return replace(self.fl_config(ctx), per_round=self.target_per_round(ctx))

    @property
    def recorded(self) -> tuple[str, str]:
        return f"{self.layer}.weight", f"{self.layer}.bias"

    @property
    def probe_rounds(self) -> range:
        """The rounds in which the server computes every shadow client's update on its global
        model (it knows the model, so it can), not just the sampled clients' ones."""
        return (range(0, self.rounds, self.shadow_probe_every) if self.shadow_probe_every
                else range(0))

    def inverts(self, ctx: EvalContext) -> bool:
        """Whether the inversion can be a candidate: first layer only (deeper layers' inputs are
        hidden activations, not shared features), and an engine whose server loop runs here."""
        return (self.layer == "first" and self.model in ("auto", "inversion")
                and ctx.shadow is not None
                and (self.model == "inversion" or ctx.engine not in SERVER_ELSEWHERE))

    def weight_space_bytes(self, ctx: EvalContext) -> int:
        """The attacked layer's recorded updates of one shadow FL run on every shadow speaker,
        as float32: what the weight-space candidates hold whole (several times over)."""
        shadow = ctx.shadow
        d_in = shadow.features(ctx.features).shape[1]
        cfg = self.shadow_config(ctx)
        with torch.device("meta"):
            layer = SERMLP(d_in, cfg.n_classes).state_dict()
        clients = make_clients(shadow.table.reset_index(drop=True), shadow.clients_per_speaker,
                               ctx.seed)
        updates = sum(recorded_per_round(len(clients), cfg, self.probe_rounds))
        return updates * 4 * sum(layer[name].numel() for name in self.recorded)

    def candidates(self, ctx: EvalContext) -> tuple[str, ...]:
        """The attack models tried: ``model``, or for ``auto`` the weight-space ones where one
        shadow run's updates fit :attr:`weight_space_gib` and the inversion where it can run."""
        if self.model != "auto":
            return (self.model,)
        size = self.weight_space_bytes(ctx) if ctx.shadow is not None else 0
        found = (("linear",) if size <= self.weight_space_gib * 2**30 else ()) + (
            ("inversion",) if self.inverts(ctx) else ())
        if not found:
            raise SerbenchError(
                f"attack {self.name!r}: one shadow run's {self.layer}-layer updates take "
                f"{size / 2**30:.1f} GiB, more than weight_space_gib={self.weight_space_gib:g}, "
                f"and only first-layer updates can be inverted; give --attack-param "
                f"weight_space_gib={math.ceil(size / 2**30)} (memory allowing) or record fewer "
                f"updates (--attack-param shadow_probe_every=16 or rounds=100)")
        return found

    def reference_inputs(self, ctx: EvalContext) -> torch.Tensor:
        """The attacker's reference inputs for the backprop basis: a seeded sample of its shadow
        inputs (the same for the shadow and the target runs)."""
        x = torch.as_tensor(ctx.shadow.features(ctx.features), dtype=torch.float32)
        rows = torch.randperm(len(x), generator=torch.Generator().manual_seed(ctx.seed))
        return x[rows[:REFERENCE_INPUTS]].contiguous()

    def recipe(self, ctx: EvalContext, *, shadow: bool = False) -> FLRecipe:
        """The FL training the server runs, recording the attacked layer's updates (and, for
        the inversion, keeping each round's backprop basis of the global model it sends);
        ``shadow``: the attacker's simulation of it (:meth:`shadow_config`)."""
        candidates = self.candidates(ctx)
        observe = (partial(backprop_basis, x_ref=self.reference_inputs(ctx))
                   if "inversion" in candidates else None)
        # The inversion alone: the server stores each update inverted as it arrives.
        keep = keep_inverted if candidates == ("inversion",) else None
        cfg = self.shadow_config(ctx) if shadow else self.fl_config(ctx)
        return FLRecipe(cfg, self.recorded, ctx.features,
                        emotion_classes(ctx.target.table["emotion"]), observe=observe, keep=keep)

    def fit(self, ctx: EvalContext) -> None:
        """Shadow training in ``ctx.mode``: every candidate model trains on shadow FL runs and
        is judged on held-out shadow speakers, a third of each gender, so that the attacker is
        tuned, and its model chosen, for speakers it has never seen (never on the target); the
        chosen one is trained again as ``validation`` says (:mod:`attacks.update_selection`).
        The adaptive attacker also has the non-adaptive one's model, and reads each candidate
        with its sign and threshold calibrated on those speakers."""
        if ctx.shadow is None:
            raise SerbenchError(f"attack {self.name!r} needs shadow data: give --shadow")
        strategy = STRATEGIES[self.validation]
        shadow = Shadow(self, ctx, self.candidates(ctx), held_out_speakers(ctx.shadow.table,
                                                                           ctx.seed))
        strategy.select(shadow)
        judged = {name: CANDIDATES[name].select(shadow, strategy)
                  for name in sorted(shadow.tried, key=lambda n: CANDIDATES[n].scored_last)}
        if ctx.mode == "adaptive":
            judged["non-adaptive"] = judge_fitted(shadow, strategy, self.non_adaptive(ctx))
        selection = {name: j.score for name, j in judged.items()}
        best = max(selection, key=selection.get)
        chosen = judged.pop(best)
        del judged
        self.log_choice(ctx, shadow, selection, best, chosen.calibration)
        if strategy.final_runs(shadow):  # only the statistics of the selection set are kept
            shadow.data = shadow.check = None
        fitted = (chosen.state if best == "non-adaptive"
                  else CANDIDATES[best].refit(shadow, strategy, chosen.state))
        self._fitted[ctx.mode] = fitted._replace(
            model=calibrated(fitted.model, chosen.calibration), selection=selection)

    def non_adaptive(self, ctx: EvalContext) -> Fitted:
        """The non-adaptive mode's fitted model (fitted now where a resumed run skipped it)."""
        if "non-adaptive" not in self._fitted:
            self.fit(replace(ctx, mode="non-adaptive",
                             shadow_defense=load_plugin("defense", "none")()))
        return self._fitted["non-adaptive"]

    def log_choice(self, ctx: EvalContext, shadow: Shadow, selection: dict[str, float],
                   best: str, calibration: Calibration) -> None:
        left_out = "" if shadow.weight or self.model != "auto" else (
            f"; weight-space models left out: one shadow run's updates take "
            f"{self.weight_space_bytes(ctx) / 2**30:.1f} GiB > weight_space_gib="
            f"{self.weight_space_gib:g}")
        read = "" if calibration == IDENTITY else (
            f", read with sign {calibration.sign:+d} and threshold {calibration.threshold:.3g}")
        ctx.reporter.log(f"{ctx.mode} attack model: {best}{read} (held-out shadow UAR "
                         + ", ".join(f"{k} {v:.3f}" for k, v in selection.items()) + left_out
                         + ")")

    def evaluate_fold(self, ctx: EvalContext, fold: int, deployed: FLDeployment) -> FoldResult:
        table = ctx.target.table
        test = np.flatnonzero(table["fold"] == fold)
        run = deployed.run
        fitted = self._fitted[ctx.mode]
        x_test = ctx.target.features(ctx.features)[test]
        y_test = emotion_labels(table["emotion"].iloc[test], emotion_classes(table["emotion"]))
        y_pred = predict(run.params, torch.as_tensor(x_test, dtype=torch.float32),
                         self.fl_config(ctx))
        speakers = table["speaker"].iloc[test].to_numpy()
        rows = [pd.DataFrame({"task": "emotion", "group": "", "speaker": speakers,
                              "y_true": y_test, "y_pred": y_pred})]
        speaker_of = dict(zip(run.log.clients, run.log.speakers))
        if fitted.names == INVERTED:
            add_inverted(run.log, deployed.observed)
        for n in self.averaging_sizes():
            key = ("averaged", n, fitted.names)
            if key not in deployed.views:  # shared by the modes, like the run
                deployed.views[key] = average_updates(run.log, fitted.names, n)
            inputs, genders, owners = deployed.views[key]
            if fitted.stats is None:  # transductive: the server sees every client's update
                fitted.model.adapt(inputs)
            else:
                inputs = fitted.model.prepare(*normalise(inputs, fitted.stats))
            proba = predict_proba(fitted.model, inputs).numpy()
            rows.append(pd.DataFrame({"task": "gender", "group": f"n={n or 'all'}",
                                      "speaker": [speaker_of[o] for o in owners],
                                      "y_true": genders, "y_pred": proba.argmax(1),
                                      "score": proba[:, 1], "client": owners}))
        if deployed.own is not None and ctx.mode == "non-adaptive":
            rows.append(own_frame(run.log, deployed.own))
        extras = deployed.privacy | {
            f"shadow held-out UAR ({name})": score for name, score in fitted.selection.items()
        } | {"clients per round (target)": deployed.per_round,
             "clients per round (shadow)": self.shadow_config(ctx).per_round}
        return FoldResult(pd.concat(rows, ignore_index=True), extras, deployed.accounting)


def own_frame(log: UpdateLog, own: list[float]) -> pd.DataFrame:
    """The defense's own attacker (its paper's non-adaptive one, e.g. ``recup``'s zoo) on each
    recorded update of the target's run: group ``own/zoo``."""
    score = np.asarray(own[:len(log)], dtype=float)
    return pd.DataFrame({"task": "gender", "group": "own/zoo", "speaker": log.speakers,
                         "y_true": log.genders, "y_pred": (score > 0.5).astype(int),
                         "score": score, "client": log.clients})


@dataclass
class FedSGDAttack(FLInferenceAttack):
    name: ClassVar[str] = "fedsgd"
    summary: ClassVar[str] = "gender from FedSGD gradients (shadow-trained model on one layer)"
    algorithm: ClassVar[str] = "fedsgd"


@dataclass
class FedAvgAttack(FLInferenceAttack):
    name: ClassVar[str] = "fedavg"
    summary: ClassVar[str] = "gender from FedAvg updates (shadow-trained model on one layer)"
    algorithm: ClassVar[str] = "fedavg"
