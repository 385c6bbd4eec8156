"""The reference's "UDP" (fed-ser-leakage ``mitigation/``), under its own name (SPEC §4), so
that its published trade-off can be reproduced beside serbench's user-level ``udp``.

Mechanism, as the reference's ``update.py`` and ``federated_ser_classifier_udp.py`` do it:

- local training clips each minibatch gradient to whole-model L2 norm ``clip`` (0.25),
  dividing it by max(1, ‖g‖/C), before every optimizer (Adam) step;
- the shared update gets N(0, σ²) on every coordinate, once per participation, with
  σ = 2C/m · √(2 q T ln(1/δ)) / ε: m the client's training utterances over its local epochs
  (the reference's ``num_samples``), q the client sampling rate, T the rounds, δ = 0.5;
- no clip of the update itself.

This is **not** differential privacy at any level (docs/udp.md): 2C/m is the sensitivity of one
record, not of a client; a clip before Adam bounds neither the update nor one record's effect
on it, since Adam's step is about lr per coordinate whatever the gradient's scale; and δ = 0.5
allows publishing half the records. It therefore reports a ``nominal_epsilon``, never an
``epsilon``. On FedSGD (whose UDP path crashes in the reference) the same clip applies to the
shared gradient and the same σ is added to it: an extrapolation.

The noise for a client needs its m, which :meth:`ReferenceUDP.make_private` records from the
loader: FL engines call it for a client's local training before that client's
:meth:`ReferenceUDP.privatize_update`, on the same instance (``serbench.fl.engine.local_update``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from serbench.dp import SERVER_SAMPLING
from serbench.errors import SerbenchError
from serbench.plugins import Defense, Guarantee, Private, Surface, Tags


def reference_sigma(*, clip: float, m: int, sample_rate: float, rounds: int, delta: float,
                    epsilon: float) -> float:
    """σ = 2C/m · √(2 q T ln(1/δ)) / ε (fed-ser-leakage ``privacy_account``)."""
    return 2 * clip / m * math.sqrt(2 * sample_rate * rounds * math.log(1 / delta)) / epsilon


def clip_gradients(optimizer: Optimizer, clip: float) -> None:
    """Scale the gradient of every parameter ``optimizer`` steps by 1/max(1, ‖g‖/C), ‖g‖ the
    L2 norm over all of them together (the reference's ``get_norm`` clip)."""
    grads = [p.grad for group in optimizer.param_groups for p in group["params"]
             if p.grad is not None]
    if not grads:
        return
    norm = float(torch.sqrt(sum(g.pow(2).sum() for g in grads)))
    factor = max(1.0, norm / clip)
    if factor > 1.0:
        for g in grads:
            g.div_(factor)


@dataclass
class ReferenceUDP(Defense):
    name: ClassVar[str] = "udp-ref"
    summary: ClassVar[str] = ("fed-ser-leakage's UDP noise: batch-gradient clip before Adam, "
                              "σ = 2C/m·√(2qT ln(1/δ))/ε on the update (nominal ε; not DP)")
    tags: ClassVar[Tags] = Tags(surfaces={Surface.UPDATE}, randomized=True, trains=True,
                                strength=(("epsilon", "nominal ε"),))

    #: The nominal ε of the reference's formula (not a DP guarantee: docs/udp.md).
    epsilon: float = 10.0
    #: C, the batch-gradient clip before Adam.
    clip: float = 0.25
    #: δ of the reference's formula.
    delta: float = 0.5
    #: (rounds, sample_rate) of the last :meth:`calibrate`.
    _recipe: tuple[int, float] | None = field(default=None, init=False, repr=False)
    #: m of the local training :meth:`make_private` wrapped last (the current client's).
    _m: int | None = field(default=None, init=False, repr=False)

    def validate(self) -> None:
        if self.epsilon <= 0:
            raise SerbenchError(f"defense 'udp-ref': epsilon (nominal) must be > 0, "
                                f"got {self.epsilon}")
        if self.clip <= 0:
            raise SerbenchError(f"defense 'udp-ref': clip must be > 0, got {self.clip}")
        if not 0 < self.delta < 1:
            raise SerbenchError(f"defense 'udp-ref': delta must be in (0, 1), got {self.delta}")

    def sigma(self, *, m: int, rounds: int, sample_rate: float) -> float:
        """The noise std on every coordinate of the update of a client with m utterances."""
        return reference_sigma(clip=self.clip, m=m, sample_rate=sample_rate, rounds=rounds,
                               delta=self.delta, epsilon=self.epsilon)

    def calibrate(self, *, rounds: int, sample_rate: float,
                  participations: int | None = None) -> Guarantee:
        """Keep the recipe σ needs (q, T), and return the nominal parameters: no ``epsilon``,
        since no DP guarantee holds. ``participations`` plays no part: the reference's formula
        has q·T in their place. ``sigma_times_m`` is σ·m (a client of m utterances gets σ =
        sigma_times_m / m)."""
        self._recipe = (rounds, sample_rate)
        numbers = {"nominal_epsilon": self.epsilon, "nominal_delta": self.delta,
                   "clip": self.clip, "rounds": float(rounds), "sample_rate": sample_rate,
                   "sigma_times_m": self.sigma(m=1, rounds=rounds, sample_rate=sample_rate)}
        return Guarantee(numbers, {
            "accountant": "none (nominal: the reference's closed form)",
            "sampling": SERVER_SAMPLING,
            "neighbouring_relation": "one record, as the reference claims (sensitivity 2C/m); "
                                     "not a valid bound: the clip precedes Adam",
            "epsilon_against": "nobody: not a DP guarantee",
        })

    def make_private(self, model: nn.Module, optimizer: Optimizer, criterion: nn.Module,
                     loader: DataLoader, *, epochs: int, generator: torch.Generator) -> Private:
        """Record m (the utterances this training sees over its epochs) and make every
        ``optimizer.step()`` clip the gradient first, as the reference's local trainer does."""
        self._m = len(loader.dataset) * epochs
        clip = self.clip
        optimizer.register_step_pre_hook(lambda opt, args, kwargs: clip_gradients(opt, clip))
        return Private(model, optimizer, criterion, loader)

    def privatize_update(self, update: dict[str, torch.Tensor], *,
                         generator: torch.Generator) -> dict[str, torch.Tensor]:
        if self._recipe is None or self._m is None:
            raise SerbenchError("defense 'udp-ref': its noise needs the FL recipe (calibrate) "
                                "and the client's training size (make_private) first")
        rounds, sample_rate = self._recipe
        std = self.sigma(m=self._m, rounds=rounds, sample_rate=sample_rate)
        return {k: u + std * torch.randn(u.shape, generator=generator)
                for k, u in update.items()}
