"""User-level differential privacy for FL (SPEC §4; Feng et al.'s UDP).

Each client clips its whole update to L2 norm ``clip`` and adds N(0, (z·clip)²) to every
coordinate before sharing. ε at ``delta`` comes from Opacus' RDP accountant over the rounds,
with the client sampling rate as the sample rate; given ``epsilon``, Opacus finds z.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from functools import cache
from typing import ClassVar

import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from serbench.errors import SerbenchError
from serbench.plugins import Defense, Surface


def check_dp_parameters(name: str, epsilon: float | None, noise_multiplier: float | None,
                        delta: float) -> None:
    """The (ε or z, δ) parameters every DP defense takes: one-line errors for bad values."""
    if (epsilon is None) == (noise_multiplier is None):
        raise SerbenchError(f"defense {name!r}: give exactly one of epsilon or noise_multiplier "
                            "(e.g. --param epsilon=10, or --param epsilon=none "
                            "--param noise_multiplier=1.0)")
    if epsilon is not None and epsilon <= 0:
        raise SerbenchError(f"defense {name!r}: epsilon must be > 0, got {epsilon}")
    if noise_multiplier is not None and noise_multiplier < 0:
        raise SerbenchError(f"defense {name!r}: noise_multiplier must be >= 0, "
                            f"got {noise_multiplier}")
    if not 0 < delta < 1:
        raise SerbenchError(f"defense {name!r}: delta must be in (0, 1), got {delta}")


@cache
def udp_noise_multiplier(epsilon: float, delta: float, sample_rate: float, rounds: int) -> float:
    """z for ``rounds`` sampled Gaussian releases to meet (ε, δ), by Opacus' search (cached:
    every FL run of an evaluation asks, and each search evaluates the accountant ~20 times)."""
    # The search evaluates ε at tiny noise levels on its way, where Opacus warns that its
    # orders are too small; the ε it settles on is computed without that problem.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Optimal order is the largest alpha")
        return get_noise_multiplier(target_epsilon=epsilon, target_delta=delta,
                                    sample_rate=sample_rate, steps=rounds, accountant="rdp")


@cache
def udp_epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """ε of ``rounds`` sampled Gaussian releases, by Opacus' RDP accountant."""
    accountant = RDPAccountant()
    accountant.history = [(noise_multiplier, sample_rate, rounds)]
    return float(accountant.get_epsilon(delta))


@dataclass
class UserLevelDP(Defense):
    name: ClassVar[str] = "udp"
    summary: ClassVar[str] = "user-level DP: clip each client update to C, add Gaussian noise (ε via Opacus RDP)"
    surfaces: ClassVar[frozenset[Surface]] = frozenset({Surface.UPDATE})
    randomized: ClassVar[bool] = True

    epsilon: float | None = 10.0
    noise_multiplier: float | None = None
    clip: float = 1.0
    delta: float = 1e-5
    _z: float = field(default=0.0, init=False, repr=False)

    def validate(self) -> None:
        check_dp_parameters(self.name, self.epsilon, self.noise_multiplier, self.delta)
        if self.clip <= 0:
            raise SerbenchError(f"defense 'udp': clip must be > 0, got {self.clip}")
        self._z = self.noise_multiplier or 0.0

    def calibrate(self, *, rounds: int, sample_rate: float) -> None:
        if self.epsilon is not None:
            self._z = udp_noise_multiplier(self.epsilon, self.delta, sample_rate, rounds)

    def privatize_update(self, update: dict[str, torch.Tensor], *,
                         generator: torch.Generator) -> dict[str, torch.Tensor]:
        norm = torch.sqrt(sum(u.pow(2).sum() for u in update.values()))
        scale = min(1.0, self.clip / (float(norm) + 1e-12))
        std = self._z * self.clip
        return {k: u * scale + std * torch.randn(u.shape, generator=generator)
                for k, u in update.items()}

    def privacy(self, *, rounds: int, sample_rate: float) -> dict[str, float]:
        self.calibrate(rounds=rounds, sample_rate=sample_rate)
        return {"epsilon": udp_epsilon(self._z, sample_rate, rounds, self.delta),
                "noise_multiplier": self._z, "delta": self.delta}
