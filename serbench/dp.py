"""Differential-privacy parameters and accounting shared by the DP defenses (``udp``, ``dpsgd``).

A core module, so that defense plugins do not import each other. Every ε comes from Opacus'
RDP analysis (``compute_rdp`` / ``get_privacy_spent`` over the orders ``RDPAccountant`` uses),
so serbench's numbers are Opacus' own and can be checked against its accountant.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

from opacus.accountants import RDPAccountant
from opacus.accountants.analysis.rdp import compute_rdp, get_privacy_spent
from opacus.accountants.utils import get_noise_multiplier
from scipy.stats import binom

from serbench.errors import SerbenchError

#: How serbench's FL engines choose each round's clients (``serbench.fl.engine.server_loop``).
SERVER_SAMPLING = "fixed-size without replacement, chosen by the server"


@contextmanager
def _edge_orders_quiet() -> Iterator[None]:
    """Silence Opacus' warning that the best RDP order is the first or last it tries. Its ε is
    then a valid but loose upper bound; that happens only far from the useful range (at sample
    rate 1, ε ≲ 1 or ε ≳ 10³, and at every step of the z search's way there), and the ε must
    stay the one Opacus' accountant reports, so its orders are kept."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Optimal order is the (largest|smallest) alpha")
        yield


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
def rdp_epsilon(noise_multiplier: float, sample_rate: float, steps: int, delta: float) -> float:
    """ε at ``delta`` of ``steps`` Gaussian releases of noise multiplier z, each on a Poisson
    sample at ``sample_rate`` (1: every release sees the data, no amplification). The same
    number as ``RDPAccountant.get_epsilon`` after ``steps`` calls of ``step``."""
    rdp = compute_rdp(q=sample_rate, noise_multiplier=noise_multiplier, steps=steps,
                      orders=RDPAccountant.DEFAULT_ALPHAS)
    with _edge_orders_quiet():
        eps, _ = get_privacy_spent(orders=RDPAccountant.DEFAULT_ALPHAS, rdp=rdp, delta=delta)
    return float(eps)


@cache
def rdp_noise_multiplier(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The z whose :func:`rdp_epsilon` is at most ``epsilon`` (within Opacus' tolerance, 0.01),
    by Opacus' search. Cached: every FL run of an evaluation asks, and each search evaluates
    the accountant ~20 times."""
    with _edge_orders_quiet():
        return get_noise_multiplier(target_epsilon=epsilon, target_delta=delta,
                                    sample_rate=sample_rate, steps=steps, accountant="rdp")


def participations(rounds: int, sample_rate: float, beta: float) -> int:
    """The smallest P with Pr[Binomial(rounds, sample_rate) > P] <= beta: how many rounds one
    client takes part in, except with probability ``beta``, when rounds sample independently."""
    return int(binom.isf(beta, rounds, sample_rate))
