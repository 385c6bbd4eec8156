"""One fold of the intercept attack (:mod:`attacks.intercept`): the attacker knowledge
scenarios, the transmitted h_T each side yields through its defense, the attackers trained on
it (in worker processes: :mod:`attacks.intercept_fit`) and the prediction rows they give."""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from serbench.attacks.intercept_fit import Fit, Out, Score
from serbench.attacks.sides import FoldSides
from serbench.context import EvalContext
from serbench.corpora.base import GENDERS
from serbench.deploy.split import SplitDeployment, Target, transmit
from serbench.metrics import emotion_labels
from serbench.models.targets import JointHead, build
from serbench.models.train import predict_proba
from serbench.seeds import stable_seed
from serbench.workers import process_map


class Settings(Protocol):
    """What a fold reads of the attack (:class:`attacks.intercept.InterceptAttack`'s
    parameters; a protocol, so this module does not import the attack that imports it)."""

    size: str
    other: str
    frames: int
    epochs: int
    lr: float
    workers: int
    validation: float
    max_epochs: int
    patience: int
    worst_selects: bool

    @property
    def k(self) -> str: ...


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


class Leakage(NamedTuple):
    """One attacked layer: gender probabilities per (scenario, attacker),
    and T's emotion predictions from the same (defended) transmission."""

    gender: dict[tuple[str, str], np.ndarray]
    emotion: np.ndarray
    #: Per (scenario, attacker): the scenario whose model gave the predictions (``worst``'s
    #: pick) and its score on the held-out training-side speakers.
    picked: dict[tuple[str, str], str]
    val: dict[tuple[str, str], Score | None]


class FoldRun(FoldSides):
    """One fold of the intercept attack: T trained without the fold's speakers (the sides of
    :class:`FoldSides`), attacked at one or more layers."""

    def __init__(self, attack: Settings, ctx: EvalContext, fold: int) -> None:
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
                known: Leakage | None = None) -> Leakage:
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
        return Leakage(gender, emotion, picked, scores)

    def map(self, fits: list[Fit]) -> Iterator[Out]:
        """Each fit's results, in order, from worker processes (:mod:`serbench.workers`)."""
        return process_map(Fit.run, fits, workers=self.attack.workers or self.ctx.workers)

    def emotion(self, result: Leakage) -> tuple[np.ndarray, np.ndarray]:
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

    def frame(self, result: Leakage, jobs: list[tuple[str, str]] | None = None) -> pd.DataFrame:
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
