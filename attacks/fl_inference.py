"""FL attribute inference from shared updates (SPEC §3.2; Feng et al., fed-ser-leakage).

The honest-but-curious server records every client's update. The attacker runs the same FL
recipe on shadow speakers whose gender it knows, trains a CNN on one layer's updates (the weight
update as a one-channel image plus the bias update, z-normalised with shadow statistics), and
classifies each private client's update, alone or averaged over n of that client's updates.

Candidates (``model``): the reference CNN, a logistic regression on the flattened update, and,
on the first layer, the input-space inversion (:mod:`attacks.update_inversion`): the server
keeps, of each round's global model it sends, the backprop basis on its own reference inputs,
maps every first-layer update into class x input-feature space, and classifies there, each side
standardised with its own statistics. ``auto`` picks the best on held-out shadow speakers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, ClassVar, NamedTuple

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.nn import functional as F

from serbench.attacks.update_inversion import InputSpaceModel, backprop_basis, invert, invert_log
from serbench.context import Attack, EvalContext
from serbench.deploy.federated import SERVER_ELSEWHERE, FLDeployment, FLRecipe, federate
from serbench.errors import SerbenchError
from serbench.fl.clients import make_clients
from serbench.fl.engine import (FLConfig, Params, UpdateLog, check_memory, predict,
                                recorded_per_round)
from serbench.metrics import emotion_classes, emotion_labels
from serbench.models.mlp import SERMLP
from serbench.models.train import Validation, fit_classifier, predict_proba
from serbench.plugins import Surface
from serbench.results import FoldResult
from serbench.scoring import uar
from serbench.seeds import shadow_run_seeds


class UpdateAttackModel(nn.Module):
    """The reference attack model: three conv5x5 + max-pool blocks (16/32/64 channels) on the
    weight update, its output concatenated with the bias update, then FC 256 -> 128 -> 2.

    ``input_pool`` average-pools the weight image first: a CPU-cost setting whose effect on
    leakage is measured in benchmarks/attack_models.py. The pooling has no parameters, so
    :meth:`prepare` applies it once to a data set instead of in every epoch's forward pass
    (same numbers, a third less time in the default run). Adaptive pooling at the end lets one
    model serve every layer's shape.
    """

    def __init__(self, bias_dim: int, input_pool: int = 1, dropout: float = 0.2) -> None:
        super().__init__()
        self.input_pool = input_pool
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(4, ceil_mode=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(32, 64, 5, padding=2), nn.BatchNorm2d(64), nn.ReLU(),
            nn.AdaptiveMaxPool2d((4, 8)), nn.Dropout2d(dropout), nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(64 * 4 * 8 + bias_dim, 256), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(256, 128), nn.ReLU(), nn.Dropout(dropout), nn.Linear(128, 2),
        )

    def prepare(self, weight: torch.Tensor, bias: torch.Tensor) -> list[torch.Tensor]:
        """The model's inputs for (normalised) updates: the pooled weight image and the bias."""
        if self.input_pool == 1:
            return [weight.unsqueeze(1).contiguous(), bias]
        chunk = 256  # a strided view of the training set is pooled without copying it whole
        return [torch.cat([F.avg_pool2d(weight[i:i + chunk].unsqueeze(1), self.input_pool,
                                        ceil_mode=True) for i in range(0, len(weight), chunk)]),
                bias]

    def forward(self, image: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.conv(image), bias], dim=1))


class LinearUpdateModel(nn.Module):
    """L2-regularised logistic regression on the whole flattened update.

    With the few hundred shadow updates a CPU-sized study produces, the reference CNN memorises
    its shadow speakers; this model generalises better there, so the attack may choose it.
    It never pools: neighbouring hidden units and features are unrelated, and averaging them
    erased the signal (benchmarks/attack_models.py: RAVDESS UAR 0.66 unpooled, 0.49 pooled 8x8).
    """

    def __init__(self, c: float = 1e-3) -> None:
        super().__init__()
        self.c = c

    @staticmethod
    def _flat(*tensors: torch.Tensor) -> np.ndarray:
        """The rows the regression reads: the update's tensors flattened and concatenated, or
        one tensor already laid out so (the attack's training set: no copy)."""
        if len(tensors) == 1:
            return tensors[0].flatten(1).numpy()
        return torch.cat([t.flatten(1) for t in tensors], 1).numpy()

    def prepare(self, weight: torch.Tensor, bias: torch.Tensor) -> list[torch.Tensor]:
        """The model's inputs for (normalised) updates: the updates themselves."""
        return [weight, bias]

    def fit(self, inputs: list[torch.Tensor], labels: torch.Tensor) -> LinearUpdateModel:
        self.clf = LogisticRegression(C=self.c, max_iter=500, tol=1e-3, class_weight="balanced")
        self.clf.fit(self._flat(*inputs), labels.numpy())
        return self

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Logits (0, d) whose softmax is the model's probabilities: unlike its log-probabilities
        they stay finite (and warning-free) for confidently classified updates."""
        d = torch.as_tensor(self.clf.decision_function(self._flat(*inputs)))
        return torch.stack([torch.zeros_like(d), d], dim=1)


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


def client_chunks(log: UpdateLog, n: int | None) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Each client's consecutive chunks of ``n`` of its updates (``None`` = all): a (count, n)
    array of log rows per client, with each chunk's gender and client.

    A client with fewer than ``n`` updates contributes one chunk of all it has; a last
    incomplete chunk is dropped.
    """
    clients = np.asarray(log.clients)
    chunks: list[np.ndarray] = []
    genders, owners = [], []
    for cid in dict.fromkeys(log.clients):
        rows = np.flatnonzero(clients == cid)
        size = len(rows) if n is None else min(n, len(rows))
        count = len(rows) // size
        chunks.append(rows[:count * size].reshape(count, size))
        genders += [log.genders[rows[0]]] * count
        owners += [cid] * count
    return chunks, np.asarray(genders), owners


def mean_chunks(layer: torch.Tensor, chunks: list[np.ndarray], out: torch.Tensor) -> torch.Tensor:
    """``out[i]`` = the mean of ``layer``'s rows in the i-th chunk (over all chunk arrays in
    order), one client at a time: no copy of the whole layer."""
    start = 0
    for c in chunks:
        rows = layer[torch.as_tensor(c.ravel())].view(*c.shape, *layer.shape[1:])
        torch.mean(rows, 1, out=out[start:start + len(c)])
        start += len(c)
    return out


def average_updates(log: UpdateLog, names: tuple[str, str], n: int | None
                    ) -> tuple[list[torch.Tensor], np.ndarray, list[str]]:
    """Average each client's updates over consecutive chunks of ``n`` rounds (``None`` = all):
    see :func:`client_chunks`."""
    chunks, genders, owners = client_chunks(log, n)
    total = sum(len(c) for c in chunks)
    stacks = [mean_chunks(log.layers[name], chunks,
                          torch.empty(total, *log.layers[name].shape[1:])) for name in names]
    return stacks, genders, owners


#: Pseudo-layers of an :class:`UpdateLog` holding the inverted first-layer updates (``phi``,
#: ``psi`` of :func:`attacks.update_inversion.invert`), so :func:`average_updates` averages them.
INVERTED = ("inversion.phi", "inversion.psi")
#: Reference inputs (attacker's shadow inputs) for each round's backprop basis.
REFERENCE_INPUTS = 400
#: The inversion candidate's grid, searched on held-out shadow speakers: (C, row scaling).
INVERSION_GRID = tuple((c, scale) for scale in ("class", "update")
                       for c in (1e-3, 1e-2, 1e-1, 1.0))


def add_inverted(run_log: UpdateLog, bases: dict[int, torch.Tensor]) -> None:
    """Add :data:`INVERTED` to ``run_log``: each first-layer update mapped with its round's
    basis (once per log; deployments are shared by the attack modes)."""
    if INVERTED[0] not in run_log.layers:
        phi, psi = invert_log(run_log.layers["first.weight"], run_log.layers["first.bias"],
                              run_log.rounds, bases)
        run_log.layers[INVERTED[0]], run_log.layers[INVERTED[1]] = phi, psi


def keep_inverted(update: Params, basis: torch.Tensor) -> Params:
    """What the server stores of a first-layer update when the inversion is the only candidate:
    :data:`INVERTED`, 4 x D numbers instead of 256 x D (an :attr:`FLRecipe.keep`)."""
    phi, psi = invert(update["first.weight"][None], update["first.bias"][None], basis)
    return {INVERTED[0]: phi[0], INVERTED[1]: psi[0]}


class _TrainingSet(NamedTuple):
    """An attack model's training rows (:meth:`FLInferenceAttack._training_set`)."""

    #: (rows, features): each row the update's tensors flattened and concatenated, as
    #: :class:`LinearUpdateModel` reads it
    flat: torch.Tensor
    inputs: list[torch.Tensor]  #: views of ``flat``, one per recorded tensor, in its shape
    genders: np.ndarray
    speakers: np.ndarray
    groups: np.ndarray  #: index of the row's averaging size (0: single updates)


class _Fitted(NamedTuple):
    """What :meth:`FLInferenceAttack.fit` learns in one attack mode."""

    #: shadow mean and std of weight and bias (``None``: the model standardises itself)
    stats: list[tuple[torch.Tensor, torch.Tensor]] | None
    model: nn.Module
    selection: dict[str, float]  #: held-out shadow UAR of each candidate model
    names: tuple[str, str]  #: the update log's layers the model reads


@dataclass
class FLInferenceAttack(Attack):
    """Shared by ``fedsgd`` and ``fedavg``; only the FL algorithm differs."""

    surface: ClassVar[Surface] = Surface.UPDATE
    default_features: ClassVar[str] = "emobase"
    feature_kinds: ClassVar[tuple[str, ...]] = ("functionals",)
    algorithm: ClassVar[str]
    shadow_trains_with_defense: ClassVar[bool] = True  # the shadow FL clients train defended

    #: The layer whose updates the attacker reads: first, second or last.
    layer: str = "first"
    #: FL rounds of the target's and the shadow's runs (the reference: 200).
    rounds: int = 200
    #: Share of the clients sampled each round.
    client_fraction: float = 0.1
    #: Sizes n of the per-client averages of n consecutive updates attacked ("all": every
    #: update of a client).
    averaging: str = "1,5,10,all"
    #: The attack model: auto (the best on held-out shadow speakers), cnn, linear or inversion.
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
    #: ``model=auto`` leaves out the weight-space candidates (linear, cnn) when one shadow FL
    #: run's recorded updates of the attacked layer take more than this many GiB: they need
    #: every update whole in memory, the shadow's and the target's, while the inversion keeps
    #: 4 x D numbers of each update, computed as it arrives (docs/performance.md). At the
    #: default it keeps them on synth's 40 speakers, not on CREMA-D's 91; raise it where
    #: memory allows.
    weight_space_gib: float = 1.5

    MODELS: ClassVar[tuple[str, ...]] = ("auto", "cnn", "linear", "inversion")
    VALIDATIONS: ClassVar[tuple[str, ...]] = ("run", "same-run")
    #: (every run recorded before weight_space_gib existed fitted within its default)
    added_params: ClassVar[dict[str, Any]] = {"validation": "same-run", "weight_space_gib": 1.5}
    _fitted: dict[str, _Fitted] = field(default_factory=dict, init=False, repr=False)

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
        with torch.device("meta"):
            layer = SERMLP(d_in, self.fl_config(ctx).n_classes).state_dict()
        clients = make_clients(shadow.table.reset_index(drop=True), shadow.clients_per_speaker,
                               ctx.seed)
        updates = sum(recorded_per_round(len(clients), self.fl_config(ctx), self.probe_rounds))
        return updates * 4 * sum(layer[name].numel() for name in self.recorded)

    def candidates(self, ctx: EvalContext) -> tuple[str, ...]:
        """The attack models tried: ``model``, or for ``auto`` the weight-space ones where one
        shadow run's updates fit :attr:`weight_space_gib` and the inversion where it can run."""
        if self.model != "auto":
            return (self.model,)
        size = self.weight_space_bytes(ctx) if ctx.shadow is not None else 0
        found = (("linear", "cnn") if size <= self.weight_space_gib * 2**30 else ()) + (
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

    def recipe(self, ctx: EvalContext) -> FLRecipe:
        """The FL training the server runs, recording the attacked layer's updates (and, for
        the inversion, keeping each round's backprop basis of the global model it sends)."""
        candidates = self.candidates(ctx)
        observe = (partial(backprop_basis, x_ref=self.reference_inputs(ctx))
                   if "inversion" in candidates else None)
        # The inversion alone: the server stores each update inverted as it arrives.
        keep = keep_inverted if candidates == ("inversion",) else None
        return FLRecipe(self.fl_config(ctx), self.recorded, ctx.features,
                        emotion_classes(ctx.target.table["emotion"]), observe=observe, keep=keep)

    def fit(self, ctx: EvalContext) -> None:
        if ctx.shadow is None:
            raise SerbenchError(f"attack {self.name!r} needs shadow data: give --shadow")
        shadow = ctx.shadow
        tried = self.candidates(ctx)
        weight = [name for name in tried if name != "inversion"]  # the weight-space ones
        # Validate on held-out shadow speakers (a third of each gender) so the attacker is
        # tuned, and its model chosen, for speakers it has never seen; with validation=run in
        # an FL run of their own, as the target's speakers are.
        held = held_out_speakers(shadow.table, ctx.seed)
        separate = self.validation == "run"
        everyone = np.arange(len(shadow.table))
        in_held = shadow.table["speaker"].isin(held).to_numpy()
        trained = everyone[~in_held] if separate else everyone

        def shadow_run(k: int, rows: np.ndarray, what: str, init_run: int | None = None
                       ) -> UpdateLog:
            """Shadow FL run ``k`` on ``rows`` (initialised like run ``init_run``, default
            ``k``), its first-layer updates inverted where the inversion is a candidate."""
            run_seed, init_seed = shadow_run_seeds(ctx.seed, k)
            if init_run is not None:
                init_seed = shadow_run_seeds(ctx.seed, init_run)[1]
            deployed = federate(self.recipe(ctx), shadow, rows, ctx.shadow_defense,
                                seed=run_seed, init_seed=init_seed, engine=ctx.engine,
                                reporter=ctx.reporter, probe_rounds=self.probe_rounds,
                                description=f"shadow {self.algorithm}{what} ({ctx.mode})",
                                partial=True)
            if "inversion" in tried:  # from the raw first-layer updates, dropped once copied
                add_inverted(deployed.run.log, deployed.observed)
            return deployed.run.log

        def weight_space(log: UpdateLog, stats: list[tuple[torch.Tensor, torch.Tensor]] | None
                         = None) -> tuple[_TrainingSet, list[tuple[torch.Tensor, torch.Tensor]]]:
            """The log's recorded layers as a training set standardised with ``stats`` (its
            own by default); the raw layers are dropped once copied."""
            stats = stats or [(t.mean(0), t.std(0) + 1e-8)
                              for t in (log.layers[n] for n in self.recorded)]
            data = self._training_set(log, self.recorded, stats)
            for name in self.recorded:
                del log.layers[name]
            return data, stats

        log = shadow_run(0, trained, " selection run" if separate else "")
        # Train on the averages the attack will classify too (chunks of n of one client's
        # updates): a model that saw only single updates collapses on averaged ones.
        if weight:
            data, stats = weight_space(log)
            labels = torch.as_tensor(data.genders)
        if separate:  # the held-out speakers' run starts where the target's does
            check_log = shadow_run(self.shadow_runs, everyone[in_held], " validation run",
                                   init_run=0)
        held_out = None
        if weight and separate:
            check = weight_space(check_log, stats)[0]
            held_out = (check.inputs, torch.as_tensor(check.genders))
            fit_rows = slice(None)
        elif weight:
            val = torch.as_tensor(np.isin(data.speakers, held))
            held_out = ([t[val] for t in data.inputs], labels[val])
            fit_rows = ~val
        training = log.genders if separate else log.genders[~np.isin(log.speakers, held)]
        for genders, what in ((training, "training"),
                              *([(check_log.genders, "held-out")] if separate else [])):
            if len(np.unique(genders)) < 2:
                raise SerbenchError(
                    f"attack {self.name!r}: the shadow's {what} updates hold one gender only "
                    f"({len(genders)} updates); record more of them (--attack-param "
                    f"shadow_probe_every=N probes every shadow client each N rounds, or more "
                    f"rounds)")
        candidates: dict[str, nn.Module] = {}
        selection: dict[str, float] = {}
        if "linear" in tried:
            candidates["linear"] = LinearUpdateModel().fit([data.flat[fit_rows]],
                                                           labels[fit_rows])
        if "cnn" in tried:
            model = UpdateAttackModel(data.inputs[1].shape[1], self.input_pool)
            if separate:
                fit_x, val_x = model.prepare(*data.inputs), model.prepare(*held_out[0])
            else:
                images = model.prepare(*data.inputs)
                fit_x, val_x = [t[~val] for t in images], [t[val] for t in images]
            with ctx.reporter.track(f"attack CNN on {self.layer}-layer updates", self.epochs) as adv:
                candidates["cnn"] = fit_classifier(
                    model, fit_x, labels[fit_rows], val=Validation(val_x, held_out[1], patience=3),
                    epochs=self.epochs, lr=1e-3, weight_decay=1e-4, seed=ctx.seed,
                    advance=adv)
            del fit_x, val_x
        # The inversion after the CNN: its extra shadow runs reseed torch's global RNG, from
        # which the CNN is initialised, so the weight-space candidates stay as they were.
        if "inversion" in tried:
            parts = [self._training_set(log, INVERTED)]
            for k in range(1, self.shadow_runs):  # more runs: other init and sampling
                parts.append(self._training_set(shadow_run(k, trained, f" run {k + 1}"),
                                                INVERTED))
            if separate:
                parts.append(self._training_set(check_log, INVERTED))
                inv_val = np.repeat([False] * (len(parts) - 1) + [True],
                                    [len(p.genders) for p in parts])
            else:
                inv_val = np.concatenate([np.isin(p.speakers, held) for p in parts])
            inputs, inv_labels = _stacked(parts)
            chosen_grid, selection["inversion"] = self._inversion_grid(
                inputs, inv_labels, torch.as_tensor(inv_val),
                np.concatenate([p.groups for p in parts]))
            if not separate:  # held-out run: trained below, on full runs, if chosen
                candidates["inversion"] = InputSpaceModel(*chosen_grid).fit(inputs, inv_labels)
            ctx.reporter.log(f"{ctx.mode} inversion candidate: C={chosen_grid[0]:g}, "
                             f"rows scaled per {chosen_grid[1]}")
        # The stronger model on held-out shadow speakers attacks the target (never chosen on it).
        selection |= {name: uar(held_out[1].numpy(),
                                predict_proba(m, m.prepare(*held_out[0])).argmax(1).numpy())
                      for name, m in candidates.items() if name not in selection}
        chosen = max(selection, key=selection.get)
        left_out = "" if weight or self.model != "auto" else (
            f"; weight-space models left out: one shadow run's updates take "
            f"{self.weight_space_bytes(ctx) / 2**30:.1f} GiB > weight_space_gib="
            f"{self.weight_space_gib:g}")
        ctx.reporter.log(f"{ctx.mode} attack model: {chosen} (held-out shadow UAR "
                         + ", ".join(f"{k} {v:.3f}" for k, v in selection.items()) + left_out
                         + ")")
        model = candidates.get(chosen)
        del held_out, candidates
        if separate:  # trained again on runs of every shadow speaker, as same-run trains
            if weight:
                del data, check
            if chosen == "linear":
                data, stats = weight_space(shadow_run(0, everyone, " (all speakers)"))
            elif chosen == "inversion":  # not the validation run: its few clients take part
                parts = []               # unusually often
                for k in range(self.shadow_runs):
                    log = shadow_run(k, everyone, f" run {k + 1} (all speakers)")
                    for name in self.recorded:  # only its inverted updates are needed
                        log.layers.pop(name, None)
                    parts.append(self._training_set(log, INVERTED))
                model = InputSpaceModel(*chosen_grid).fit(*_stacked(parts))
            # the CNN keeps its early-stopped fit on the selection run
        if chosen == "linear":  # cheap to refit: use every shadow speaker
            model = LinearUpdateModel().fit([data.flat], torch.as_tensor(data.genders))
        self._fitted[ctx.mode] = (_Fitted(None, model, selection, INVERTED)
                                  if chosen == "inversion" else
                                  _Fitted(stats, model, selection, self.recorded))

    def _training_set(self, log: UpdateLog, names: tuple[str, str],
                      stats: list[tuple[torch.Tensor, torch.Tensor]] | None = None
                      ) -> _TrainingSet:
        """``names``' single updates plus their averages over each averaging size n != 1,
        standardised with ``stats`` where given, with each row's gender, speaker and group (the
        index of its averaging size; 0 = single). Built in one buffer, client by client: the
        memory of the set itself plus one client's updates."""
        speaker_of = dict(zip(log.clients, log.speakers))
        parts = [([], log.genders, np.asarray(log.speakers))]  # the single updates
        for n in self.averaging_sizes():
            if n != 1:
                chunks, genders, owners = client_chunks(log, n)
                parts.append((chunks, genders, np.asarray([speaker_of[o] for o in owners])))
        total = sum(len(p[1]) for p in parts)
        shapes = [log.layers[name].shape[1:] for name in names]
        width = sum(math.prod(shape) for shape in shapes)
        if stats is not None:  # the weight-space set: its fits copy the training rows once more
            check_memory(total * width * 4 * 2,
                         f"the attack's training set ({total} rows of {width * 4 / 2**20:.2f} MiB, "
                         f"and a copy of its training rows)",
                         "record fewer shadow updates (--attack-param shadow_probe_every=16 or "
                         "rounds=100) or average fewer sizes (--attack-param averaging=1,all)")
        flat = torch.empty(total, width)
        inputs, offset = [], 0
        for name, shape, stat in zip(names, shapes, stats or [None] * len(names)):
            size = math.prod(shape)
            view = flat[:, offset:offset + size].view(total, *shape)
            offset += size
            layer = log.layers[name]
            view[:len(layer)] = layer
            start = len(layer)
            for chunks, genders, _ in parts[1:]:
                mean_chunks(layer, chunks, view[start:start + len(genders)])
                start += len(genders)
            if stat is not None:
                view.sub_(stat[0]).div_(stat[1])
            inputs.append(view)
        groups = np.concatenate([np.full(len(p[1]), i) for i, p in enumerate(parts)])
        return _TrainingSet(flat, inputs, np.concatenate([p[1] for p in parts]),
                            np.concatenate([p[2] for p in parts]), groups)

    @staticmethod
    def _inversion_grid(inputs: list[torch.Tensor], labels: torch.Tensor, val: torch.Tensor,
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
                inputs = fitted.model.prepare(*_normalise(inputs, fitted.stats))
            proba = predict_proba(fitted.model, inputs).numpy()
            rows.append(pd.DataFrame({"task": "gender", "group": f"n={n or 'all'}",
                                      "speaker": [speaker_of[o] for o in owners],
                                      "y_true": genders, "y_pred": proba.argmax(1),
                                      "score": proba[:, 1], "client": owners}))
        extras = deployed.privacy | {
            f"shadow held-out UAR ({name})": score for name, score in fitted.selection.items()}
        return FoldResult(pd.concat(rows, ignore_index=True), extras, deployed.accounting)


def _stacked(parts: list[_TrainingSet]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Several training sets' inputs, tensor by tensor, and their genders, in order."""
    return ([torch.cat(t) for t in zip(*(p.inputs for p in parts))],
            torch.as_tensor(np.concatenate([p.genders for p in parts])))


def _normalise(tensors: list[torch.Tensor], stats: list[tuple[torch.Tensor, torch.Tensor]]
               ) -> list[torch.Tensor]:
    return [(t - m) / s for t, (m, s) in zip(tensors, stats)]


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
