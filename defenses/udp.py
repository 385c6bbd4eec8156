"""User-level differential privacy for FL (SPEC §4; Feng et al.'s UDP).

Each client clips its whole update to L2 norm ``clip`` and adds N(0, (z·clip)²) to every
coordinate before sharing: one Gaussian release of noise multiplier z per participation.

Which ε (docs/udp.md). The attacker is the honest-but-curious server, and the server chose
which clients took part in which round, so client sampling amplifies nothing against it. The
headline ``epsilon`` therefore composes a client's participations at sample rate 1 (Opacus' RDP
accountant): the most participations any client has in the run's seeded schedule, which the
caller passes (``participations``), or every round when it does not (the bound that holds for
any schedule). ``epsilon`` is that ε and ``--param epsilon=E`` solves z for it. The amplified ε
(``rounds`` releases at the client sampling rate) is reported beside it as
``epsilon_outside_observer``: the guarantee against an outside observer of the final model only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from serbench.dp import SERVER_SAMPLING, check_dp_parameters, rdp_epsilon, rdp_noise_multiplier
from serbench.errors import SerbenchError
from serbench.plugins import Defense, Guarantee, Surface, Tags


def server_steps(rounds: int, participations: int | None) -> int:
    """The releases of one client the server sees: ``participations`` (the most any client has
    in the schedule) or, unknown, ``rounds`` (a client in every round: safe for any schedule)."""
    if participations is None:
        return rounds
    if not 1 <= participations <= rounds:
        raise ValueError(f"participations must be in [1, rounds={rounds}], got {participations}")
    return int(participations)


@dataclass
class UserLevelDP(Defense):
    name: ClassVar[str] = "udp"
    summary: ClassVar[str] = ("user-level DP: clip each client update to C, add Gaussian noise "
                              "(ε against the server, Opacus RDP)")
    tags: ClassVar[Tags] = Tags(surfaces={Surface.UPDATE}, randomized=True,
                                strength=(("epsilon", "ε"), ("noise_multiplier", "z")))

    #: The user-level ε against the server, for the run's client schedule (docs/udp.md).
    epsilon: float | None = 10.0
    #: z, the noise's std over the clip, instead of epsilon (ε is then accounted for it).
    noise_multiplier: float | None = None
    #: C, the L2 norm each client update is clipped to.
    clip: float = 1.0
    #: δ of the (ε, δ) guarantee.
    delta: float = 1e-5
    #: z for the recipe of the last :meth:`calibrate` (what the clients' noise uses).
    _z: float | None = field(default=None, init=False, repr=False)

    def validate(self) -> None:
        check_dp_parameters(self.name, self.epsilon, self.noise_multiplier, self.delta)
        if self.clip <= 0:
            raise SerbenchError(f"defense 'udp': clip must be > 0, got {self.clip}")

    def noise_for(self, *, rounds: int, participations: int | None = None) -> float:
        """z for a recipe: the given ``noise_multiplier``, or the z whose ε against the server
        is ``epsilon``. A pure function of the parameters and the recipe (cached in serbench.dp),
        so queries need no calibration."""
        if self.noise_multiplier is not None:
            return self.noise_multiplier
        return rdp_noise_multiplier(self.epsilon, self.delta, 1.0,
                                    server_steps(rounds, participations))

    def calibrate(self, *, rounds: int, sample_rate: float,
                  participations: int | None = None) -> Guarantee:
        """Set the clients' z for this FL run (see :meth:`noise_for`; ``sample_rate`` plays no
        part in it, since the headline ε takes no amplification) and return its guarantee."""
        self._z = self.noise_for(rounds=rounds, participations=participations)
        return self.guarantee(rounds=rounds, sample_rate=sample_rate,
                              participations=participations)

    def privatize_update(self, update: dict[str, torch.Tensor], *,
                         generator: torch.Generator) -> dict[str, torch.Tensor]:
        z = self.noise_multiplier if self.noise_multiplier is not None else self._z
        if z is None:
            raise SerbenchError("defense 'udp': epsilon needs the FL recipe; call calibrate("
                                "rounds=..., sample_rate=..., participations=...) first")
        norm = torch.sqrt(sum(u.pow(2).sum() for u in update.values()))
        scale = min(1.0, self.clip / (float(norm) + 1e-12))
        std = z * self.clip
        return {k: u * scale + std * torch.randn(u.shape, generator=generator)
                for k, u in update.items()}

    def guarantee(self, *, rounds: int, sample_rate: float,
                  participations: int | None = None) -> Guarantee:
        """Every client's (ε, δ) against the server over an FL run of this recipe, the amplified
        ε against an outside observer beside it, the numbers they were accounted from, and the
        accounting context in words. A pure function of the parameters and the recipe."""
        z = self.noise_for(rounds=rounds, participations=participations)
        steps = server_steps(rounds, participations)
        numbers = {"epsilon": rdp_epsilon(z, 1.0, steps, self.delta),
                   "epsilon_outside_observer": rdp_epsilon(z, sample_rate, rounds, self.delta),
                   "delta": self.delta, "noise_multiplier": z, "clip": self.clip,
                   "rounds": float(rounds), "sample_rate": sample_rate,
                   "participations": float(steps)}
        return Guarantee(numbers, {
            "accountant": "rdp",
            "accountant_implementation": "opacus compute_rdp/get_privacy_spent",
            "sampling": SERVER_SAMPLING,
            "neighbouring_relation": "user-level add/remove",
            "epsilon_against": "the server: a client's participations composed at sample rate "
                               "1, no sampling amplification",
            "epsilon_outside_observer_against": "an outside observer of the final model only: "
                                                "amplified by the client sampling rate "
                                                "(Poisson-sampling analysis)",
            "participations_from": ("the run's seeded schedule (most participations of any "
                                    "client)" if participations is not None else
                                    "upper bound: every round"),
        })
