"""Adversarial representation learning through gradient reversal (Ganin and Lempitsky, ICML
2015, "Unsupervised domain adaptation by backpropagation"), with gender as the "domain": T
trains for emotion while a gender adversary reads the transmitted layer h_T through a
gradient-reversal layer, so T's layers up to k learn to keep emotion and hide gender.

The adversary (a 3x3 convolution over h_T, global average pooling and an MLP, trained with
class-balanced cross-entropy) is this defense's own attacker: the one its kind of paper
reports. serbench scores it on the test speakers as the intercept attack's ``own/adversary``
measure (non-adaptive mode), beside its own attackers, which retrain on the defended h_T.

The gradient-reversal weight follows Ganin's schedule, λ·(2/(1+exp(-10p)) - 1) over the
training's progress p in [0, 1]. T's trainer knows its training speakers' genders (SPEC §4a,
``reads_attribute``); test speakers' never reach it.

Not on the update track: an FL client holds one speaker, so its local adversary would see one
gender only, and no faithful client-side variant exists without public data (docs/defenses.md).
In FL training (and for a model that transmits no layer) it leaves training unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F
from torch.optim import Optimizer
from torch.utils.data import DataLoader, TensorDataset

from serbench.errors import SerbenchError
from serbench.plugins import Defense, Private, Surface, Tags


class _Reverse(torch.autograd.Function):
    """Identity forward; the gradient times ``-lam`` backward."""

    @staticmethod
    def forward(ctx, h: torch.Tensor, lam: float) -> torch.Tensor:  # noqa: ANN001
        ctx.lam = lam
        return h.view_as(h)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        return -ctx.lam * grad, None


class _Adversary(nn.Module):
    """Gender logits from a (N, C, H, T) map: conv 3x3, ReLU, global average pool, MLP."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, hidden, 3, padding=1), nn.ReLU(),
                                 nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 2))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class _Proba(nn.Module):
    """The trained adversary as an attacker: gender probabilities (N, 2) from h_T."""

    def __init__(self, adversary: _Adversary) -> None:
        super().__init__()
        self.adversary = adversary

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        self.adversary.eval()
        with torch.no_grad():
            return torch.softmax(self.adversary(h), dim=1)


class _Capturing(nn.Module):
    """T, keeping the output of the ``transmitted`` module of its last forward pass."""

    def __init__(self, model: nn.Module, transmitted: nn.Module) -> None:
        super().__init__()
        self.model, self.transmitted = model, transmitted
        self.h: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        handle = self.transmitted.register_forward_hook(
            lambda _m, _i, out: setattr(self, "h", out))
        try:
            return self.model(x)
        finally:
            handle.remove()


class _AdversarialLoss(nn.Module):
    """T's loss on the emotion column of the labels plus the adversary's balanced gender loss
    on the reversed h_T (the gender column); λ ramps with the steps taken."""

    def __init__(self, base: nn.Module, captured: _Capturing, adversary: _Adversary,
                 lam: float, steps: int, gender_weight: torch.Tensor) -> None:
        super().__init__()
        self.base, self.captured, self.adversary = base, captured, adversary
        self.lam, self.steps, self.taken = lam, max(1, steps), 0
        self.gender_weight = gender_weight
        self.reduction = getattr(base, "reduction", "mean")

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        progress = min(1.0, self.taken / self.steps)
        self.taken += 1
        lam = self.lam * (2 / (1 + math.exp(-10 * progress)) - 1)
        gender = self.adversary(_Reverse.apply(self.captured.h, lam))
        return self.base(logits, labels[:, 0]) + F.cross_entropy(
            gender, labels[:, 1], weight=self.gender_weight)


@dataclass
class GradientReversal(Defense):
    name: ClassVar[str] = "grl"
    summary: ClassVar[str] = ("adversarial representation learning: T trains against a gender "
                              "adversary on the transmitted layer (gradient reversal)")
    tags: ClassVar[Tags] = Tags(surfaces={Surface.REPRESENTATION}, trains=True,
                                reads_attribute=True, strength=(("lam", "λ"),))

    #: λ, the weight of the reversed adversary gradient at the end of Ganin's ramp.
    lam: float = 1.0
    #: Channels of the adversary's convolution and width of its MLP.
    hidden: int = 32

    def validate(self) -> None:
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise SerbenchError(f"defense 'grl': lam must be a number >= 0, got {self.lam}")
        if self.hidden < 1:
            raise SerbenchError(f"defense 'grl': hidden must be >= 1, got {self.hidden}")

    def make_private(self, model: nn.Module, optimizer: Optimizer, criterion: nn.Module,
                     loader: DataLoader, *, epochs: int, generator: torch.Generator,
                     attribute: torch.Tensor | int,
                     transmitted: nn.Module | None = None) -> Private:
        """T with the adversary on ``transmitted`` (its output is h_T): a loader whose labels
        carry each example's gender as a second column, one Adam over T and the adversary
        (the given optimizer's settings), and the adversary as the defense's own attacker.
        Without a transmitted layer (FL clients, models that transmit nothing): unchanged."""
        if transmitted is None:
            return Private(model, optimizer, criterion, loader)
        x, y = loader.dataset.tensors
        attribute = torch.as_tensor(attribute, dtype=torch.long)
        if attribute.shape != y.shape:
            raise SerbenchError(f"defense 'grl': got {tuple(attribute.shape)} attributes for "
                                f"{len(y)} training examples")
        captured = _Capturing(model, transmitted)
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            was = model.training
            captured.eval()(x[:1])
            model.train(was)
        adversary = _Adversary(captured.h.shape[1], self.hidden)
        counts = torch.bincount(attribute, minlength=2).float()
        settings = optimizer.param_groups[0]
        joint = torch.optim.Adam([*model.parameters(), *adversary.parameters()],
                                 lr=settings["lr"], weight_decay=settings["weight_decay"])
        shuffle = torch.Generator().manual_seed(int(torch.randint(2**31, (1,),
                                                                  generator=generator)))
        labelled = DataLoader(TensorDataset(x, torch.stack([y, attribute], 1)),
                              batch_size=loader.batch_size, shuffle=True, generator=shuffle)
        loss = _AdversarialLoss(criterion, captured, adversary, self.lam,
                                epochs * len(labelled),
                                counts.sum() / (2 * counts.clamp(min=1)))
        return Private(captured, joint, loss, labelled, own_attacker=_Proba(adversary))
