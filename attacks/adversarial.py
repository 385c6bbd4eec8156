"""Adversarial examples against the SER model's input (SPEC §2 surface 3, §3.3): FGSM, PGD and
EOT-PGD, L∞ perturbations of T's log-mel input that flip its emotion prediction (Chang et al.,
"Robust federated learning against adversarial attacks for SER").

The attacker is white-box: it knows T's weights and front end, so it needs no shadow data.
Per fold, T is trained as the intercept attack trains it (same helpers, same seeds), through
the deployed defense's training hooks (adversarial training), then the fold's held-out
utterances are perturbed and T's defended prediction scored. The attack's gradient goes
through ``ctx.shadow_defense``'s ``transform_input``: nothing in the non-adaptive mode (the
reference repo's evaluation: attack T, randomise afterwards), the deployed randomisation in the
adaptive mode (one draw per step for FGSM and PGD, ``eot_samples`` draws averaged for EOT-PGD).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import pandas as pd
import torch
from torch import nn
from torch.nn import functional as F

from serbench.adversarial import linf_perturb
from serbench.attacks.sides import FoldSides
from serbench.context import Attack, EvalContext
from serbench.deploy.split import SplitDeployment, SplitRecipe, defended_proba, through_input
from serbench.errors import SerbenchError, unknown_name
from serbench.metrics import emotion_labels
from serbench.models.targets import FAMILIES, SIZES
from serbench.plugins import Defense, Surface
from serbench.results import FoldResult
from serbench.scoring import Role
from serbench.seeds import stable_seed


def randomises_input(defense: Defense) -> bool:
    """Whether the defense draws a random transformation of the model input (SPEC §3.3: such a
    defense is scored only against EOT-PGD)."""
    return defense.tags.randomized and Surface.INPUT in defense.surfaces


class Schedule(NamedTuple):
    """The L∞ iteration: number of signed-gradient steps, their size, random start or not."""

    steps: int
    step_size: float
    random_start: bool


@dataclass
class InputAttack(Attack, ABC):
    """Shared protocol of the L∞ input attacks. Parameters: ``eps`` (in T's input units,
    z-scored log-mel), T (``target`` family, ``size``, ``frames``, ``target_epochs``, ``lr``)
    and ``batch_size`` (utterances attacked at once). T is deployed per fold as the intercept
    attack's is (:mod:`serbench.deploy.split`), transmitting no layer."""

    surface: ClassVar[Surface] = Surface.INPUT
    default_features: ClassVar[str] = "logmel"
    feature_kinds: ClassVar[tuple[str, ...]] = ("sequence",)
    #: Averages its gradient over the defense's randomness: the only attack that scores a
    #: randomised defense (SPEC §3.3).
    averages_randomness: ClassVar[bool] = False

    #: The L∞ budget, in T's input units (z-scored log-mel).
    eps: float = 0.05
    #: T's model family (e.g. vgg, resnet, lstm).
    target: str = "vgg"
    #: T's width: "cpu" (scaled to run here) or "paper".
    size: str = "cpu"
    #: Log-mel frames per utterance (cropped or padded).
    frames: int = 200
    #: Training epochs of T, once per fold (its clean emotion UAR is the utility).
    target_epochs: int = 20
    #: T's learning rate (Adam).
    lr: float = 1e-3
    #: Utterances attacked at once.
    batch_size: int = 128

    def validate(self) -> None:
        if self.target not in FAMILIES:
            raise unknown_name(f"{self.name} target model", self.target, FAMILIES)
        if self.size not in SIZES:
            raise unknown_name(f"{self.name} model size", self.size, SIZES)
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise SerbenchError(f"attack {self.name!r}: eps must be a number > 0, got {self.eps}")
        if self.frames < 8 or self.target_epochs < 1 or self.lr <= 0 or self.batch_size < 1:
            raise SerbenchError(f"attack {self.name!r}: need frames >= 8, target_epochs >= 1, "
                                f"lr > 0, batch_size >= 1")

    @abstractmethod
    def schedule(self) -> Schedule:
        """The attack's iteration."""

    def gradient_samples(self) -> int:
        """Draws of a randomised defense's transformation averaged per gradient step."""
        return 1

    def group(self, defense: Defense) -> str:
        """The prediction group of the attacked rows: "robust/<attack>", or "unscored/<attack>"
        when the deployed defense is randomised and this attack does not average over it."""
        scored = self.averages_randomness or not randomises_input(defense)
        return f"{'robust' if scored else 'unscored'}/{self.name}"

    def role(self, task: str, group: str) -> Role:
        """Robust UAR (lower is worse) under this attack; "unscored/" rows are reported only."""
        if task == "emotion" and group.startswith("robust/"):
            return Role.ROBUST
        if task == "emotion" and group.startswith("unscored/"):
            return Role.UNSCORED
        return super().role(task, group)

    def fit(self, ctx: EvalContext) -> None:
        """Nothing to learn before the folds (white-box: T is the attacker's model); say once
        which number a randomised defense is scored by."""
        if self.group(ctx.defense).startswith("unscored"):
            ctx.reporter.log(f"defense {ctx.defense.name!r} randomises the input: {self.name}'s "
                             f"robust UAR is reported as unscored/{self.name}; run --attack "
                             f"eot-pgd for its score (SPEC §3.3)")

    def perturb(self, shadow: Defense, net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        """``x`` attacked, its gradient taken through ``shadow``'s input transformation (the
        defense the attacker simulates), averaged over :meth:`gradient_samples` draws of it
        where it is random."""
        schedule = self.schedule()
        samples = self.gradient_samples() if randomises_input(shadow) else 1
        net.eval()
        out = []
        for i in range(0, len(x), self.batch_size):
            target = y[i:i + self.batch_size]

            def loss(z: torch.Tensor) -> torch.Tensor:
                return sum(F.cross_entropy(net(through_input(shadow, z, generator)), target,
                                           reduction="sum") for _ in range(samples))

            out.append(linf_perturb(loss, x[i:i + self.batch_size], eps=self.eps,
                                    steps=schedule.steps, step_size=schedule.step_size,
                                    random_start=schedule.random_start, generator=generator))
        return torch.cat(out)

    def recipe(self, ctx: EvalContext) -> SplitRecipe:
        return SplitRecipe(self.target, self.size, ctx.features, self.frames,
                           self.target_epochs, self.lr)

    def evaluate_fold(self, ctx: EvalContext, fold: int,
                      deployed: SplitDeployment) -> FoldResult:
        """Clean and attacked emotion predictions of the fold's speakers, both through the
        deployed defense with the same draws of its randomness."""
        target, privacy = deployed.target, deployed.privacy
        run = FoldSides(ctx, fold)
        _, rows, _ = run.sides["test"]
        x, mask = ctx.target.padded(target.features, self.frames)
        inputs = target.inputs(x[rows], mask[rows])
        table = run.table("test")
        y = emotion_labels(table["emotion"], run.classes)
        attacked = self.perturb(ctx.shadow_defense, target.net, inputs, torch.tensor(y),
                                torch.Generator().manual_seed(
                                    stable_seed(ctx.seed, fold, "attack")))
        deployed_seed = stable_seed(ctx.seed, fold, "deployed")
        clean, robust = (defended_proba(ctx.defense, target.net, z, torch.Generator()
                                        .manual_seed(deployed_seed)).argmax(1).numpy()
                         for z in (inputs, attacked))
        group = self.group(ctx.defense)
        info = {"speaker": table["speaker"].to_numpy(), "emotion": table["emotion"].to_numpy()}
        preds = pd.concat([pd.DataFrame({"task": "emotion", "group": g, "y_true": y,
                                         "y_pred": p, **info})
                           for g, p in (("", clean), (group, robust))], ignore_index=True)
        return FoldResult(preds, privacy | {"linf": float((attacked - inputs).abs().max())},
                          deployed.accounting)


@dataclass
class FGSMAttack(InputAttack):
    """One signed-gradient step of size ``eps`` (Goodfellow et al.)."""

    name: ClassVar[str] = "fgsm"
    summary: ClassVar[str] = "FGSM: one L∞ signed-gradient step on T's log-mel input (robust UAR)"

    def schedule(self) -> Schedule:
        return Schedule(1, self.eps, False)


@dataclass
class PGDAttack(InputAttack):
    """``steps`` projected signed-gradient steps of 2.5·eps/steps from a random start in the
    ball (Madry et al.)."""

    name: ClassVar[str] = "pgd"
    summary: ClassVar[str] = "PGD: iterated L∞ steps from a random start on T's input (robust UAR)"

    #: Projected signed-gradient steps, each of 2.5·eps/steps.
    steps: int = 10
    #: Start from a uniform draw in the ball (Madry et al.), not the clean input.
    random_start: bool = True

    def validate(self) -> None:
        super().validate()
        if self.steps < 1:
            raise SerbenchError(f"attack {self.name!r}: steps must be >= 1, got {self.steps}")

    def schedule(self) -> Schedule:
        return Schedule(self.steps, 2.5 * self.eps / self.steps, self.random_start)


@dataclass
class EOTPGDAttack(PGDAttack):
    """PGD whose every gradient averages ``eot_samples`` draws of the defense's randomisation
    (Athalye et al.'s expectation over transformation)."""

    name: ClassVar[str] = "eot-pgd"
    summary: ClassVar[str] = ("EOT-PGD: PGD with gradients averaged over the defense's random "
                              "input transformations (scores randomised defenses)")
    averages_randomness: ClassVar[bool] = True

    #: Draws of the defense's randomisation averaged in every gradient.
    eot_samples: int = 10

    def validate(self) -> None:
        super().validate()
        if self.eot_samples < 1:
            raise SerbenchError(f"attack {self.name!r}: eot_samples must be >= 1, "
                                f"got {self.eot_samples}")

    def gradient_samples(self) -> int:
        return self.eot_samples
