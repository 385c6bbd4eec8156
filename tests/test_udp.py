"""`udp` (user-level DP, ε against the server) and `udp-ref` (the reference's nominal-ε noise):
their noise is the one they claim, their ε is Opacus' accountant's, queries do not calibrate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from serbench.dp import rdp_noise_multiplier
from serbench.errors import SerbenchError
from serbench.fl.engine import FLConfig, init_params, local_update
from serbench.registry import load_plugin

UDP = load_plugin("defense", "udp")
UDPRef = load_plugin("defense", "udp-ref")


def opacus_epsilon(z: float, sample_rate: float, steps: int, delta: float) -> float:
    """Opacus' RDP accountant after ``steps`` releases, step by step."""
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=z, sample_rate=sample_rate)
    return accountant.get_epsilon(delta)


def most_participations(n_clients: int, per_round: int, rounds: int, seed: int) -> int:
    """The schedule as ``serbench.fl.engine.server_loop`` draws it: ``rng =
    np.random.default_rng(seed)``, then each round ``rng.choice(n_clients, per_round,
    replace=False)``. The server draws it, so it knows every client's participations; the
    most any client has is the count the headline ε composes."""
    rng = np.random.default_rng(seed)
    counts = np.zeros(n_clients, dtype=int)
    for _ in range(rounds):
        counts[rng.choice(n_clients, per_round, replace=False)] += 1
    return int(counts.max())


def noise_of(shared: dict[str, torch.Tensor], expected: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([(shared[k] - expected[k]).flatten() for k in shared])


# --- udp ------------------------------------------------------------------------------------

def test_udp_noise_std_is_z_times_clip_on_the_shared_update() -> None:
    udp = UDP(epsilon=10.0, clip=0.5)
    z = udp.calibrate(rounds=200, sample_rate=0.1, participations=41).numbers["noise_multiplier"]
    gen = torch.Generator().manual_seed(0)
    update = {"w": 10 * torch.randn(1000, 1000, generator=gen),
              "b": 10 * torch.randn(1000, generator=gen)}
    norm = torch.sqrt(sum(u.pow(2).sum() for u in update.values()))
    clipped = {k: u * 0.5 / norm for k, u in update.items()}
    noise = noise_of(udp.privatize_update(update, generator=gen), clipped)
    assert z > 3  # ε = 10 against the server over 41 participations
    assert float(noise.std()) == pytest.approx(z * 0.5, rel=0.005)
    assert abs(float(noise.mean())) < 5 * z * 0.5 / math.sqrt(noise.numel())


@pytest.mark.parametrize("n_clients, per_round, seed", [(10, 1, 0), (20, 2, 3)])
def test_udp_headline_epsilon_is_opacus_over_the_most_participations(n_clients, per_round,
                                                                      seed) -> None:
    """z = 1.05, q = 0.1, T = 200, δ = 1e-5: the headline ε is Opacus' accountant at sample
    rate 1 over the most participations of any client in the seeded schedule; the amplified
    ε (sample rate q over T rounds) is only the outside observer's."""
    z, q, rounds, delta = 1.05, per_round / n_clients, 200, 1e-5
    assert q == 0.1
    steps = most_participations(n_clients, per_round, rounds, seed)
    assert 20 < steps < rounds  # about qT, and not every round
    reported = UDP(epsilon=None, noise_multiplier=z, delta=delta).guarantee(
        rounds=rounds, sample_rate=q, participations=steps).numbers
    assert reported["participations"] == steps
    assert reported["epsilon"] == pytest.approx(opacus_epsilon(z, 1.0, steps, delta), rel=1e-9)
    assert reported["epsilon_outside_observer"] == pytest.approx(
        opacus_epsilon(z, q, rounds, delta), rel=1e-9)
    assert reported["epsilon"] > 2 * reported["epsilon_outside_observer"]


def test_udp_epsilon_solves_z_against_the_server() -> None:
    """RAVDESS-like: ε = 10 at P = 41 needs z ≈ 3.39. docs/udp-analysis.md's table has 3.47
    because its P = 41 is a Binomial tail bound that spends δ/2; the schedule gives P exactly,
    so the accountant gets all of δ. At δ/2 Opacus' search gives the table's 3.47."""
    reported = UDP(epsilon=10.0).guarantee(rounds=200, sample_rate=0.1, participations=41).numbers
    assert 9.9 <= reported["epsilon"] <= 10.0
    assert reported["noise_multiplier"] == pytest.approx(3.39, abs=0.01)
    assert rdp_noise_multiplier(10.0, 0.5e-5, 1.0, 41) == pytest.approx(3.47, abs=0.01)
    # Unknown participations: a client in every round, the bound that holds for any schedule.
    unknown = UDP(epsilon=10.0).guarantee(rounds=200, sample_rate=0.1).numbers
    assert unknown["participations"] == 200
    assert unknown["noise_multiplier"] > reported["noise_multiplier"]


def test_udp_queries_do_not_recalibrate() -> None:
    """The noise follows the last calibrate, not the last guarantee() query."""
    udp = UDP(epsilon=10.0)
    udp.calibrate(rounds=200, sample_rate=0.1, participations=41)
    update = {"w": torch.zeros(100)}
    before = udp.privatize_update(update, generator=torch.Generator().manual_seed(1))
    udp.guarantee(rounds=10, sample_rate=1.0, participations=10)
    after = udp.privatize_update(update, generator=torch.Generator().manual_seed(1))
    assert torch.equal(before["w"], after["w"])


def test_udp_with_epsilon_refuses_to_share_before_calibration() -> None:
    with pytest.raises(SerbenchError, match="calibrate"):
        UDP(epsilon=10.0).privatize_update({"w": torch.zeros(3)},
                                           generator=torch.Generator().manual_seed(0))


def test_udp_records_its_accounting_context() -> None:
    context = UDP(epsilon=10.0, clip=0.5).guarantee(rounds=200, sample_rate=0.1,
                                                    participations=41).accounting()
    assert context["accountant"] == "rdp"
    assert context["sampling"] == "fixed-size without replacement, chosen by the server"
    assert context["neighbouring_relation"] == "user-level add/remove"
    assert (context["delta"], context["rounds"], context["sample_rate"], context["clip"],
            context["participations"]) == (1e-5, 200, 0.1, 0.5, 41)
    assert "schedule" in context["participations_from"]


@pytest.mark.parametrize("participations", [0, 201])
def test_udp_participations_outside_the_rounds_are_a_bug(participations) -> None:
    with pytest.raises(ValueError, match="participations"):
        UDP(epsilon=10.0).guarantee(rounds=200, sample_rate=0.1, participations=participations)


# --- udp-ref --------------------------------------------------------------------------------

def calibrated_ref(m: int, q: float, rounds: int, epochs: int = 1, **params) -> object:
    """udp-ref as an FL engine leaves it before a client's share: calibrated, then its local
    training of ``m`` examples wrapped."""
    ref = UDPRef(**params)
    ref.calibrate(rounds=rounds, sample_rate=q)
    net = nn.Linear(4, 2)
    loader = DataLoader(TensorDataset(torch.zeros(m, 4), torch.zeros(m, dtype=torch.long)))
    ref.make_private(net, torch.optim.Adam(net.parameters()), nn.CrossEntropyLoss(), loader,
                     epochs=epochs, generator=torch.Generator().manual_seed(0))
    return ref


@pytest.mark.parametrize("m, q, rounds, delta, epsilon", [
    (22, 0.1, 200, 0.5, 10.0), (44, 0.1, 200, 0.5, 50.0), (30, 0.25, 50, 1e-5, 5.0)])
def test_udp_ref_sigma_is_the_reference_formula(m, q, rounds, delta, epsilon) -> None:
    """fed-ser-leakage: noise_scale = 2·C/m · sqrt(2·q·T·ln(1/δ)) / ε with C = 0.25, measured
    on the shared update."""
    expected = 2 * 0.25 / m * np.sqrt(2 * q * rounds * np.log(1 / delta)) / epsilon
    ref = calibrated_ref(m, q, rounds, epsilon=epsilon, delta=delta)
    update = {"w": torch.ones(1000, 1000), "b": torch.ones(1000)}
    noise = noise_of(ref.privatize_update(update, generator=torch.Generator().manual_seed(0)),
                     update)  # no update clip: the reference has none
    assert float(noise.std()) == pytest.approx(expected, rel=0.005)
    assert ref.sigma(m=m, rounds=rounds, sample_rate=q) == pytest.approx(expected, rel=1e-12)


def test_udp_ref_sigma_at_ravdess_size() -> None:
    """docs/udp-analysis.md §1.2: σ ≈ 0.01197 for m = 22 at nominal ε = 10 (δ = 0.5,
    q = 0.1, T = 200), and the reference counts m over the local epochs."""
    assert UDPRef().sigma(m=22, rounds=200, sample_rate=0.1) == pytest.approx(0.01197, abs=1e-5)
    assert calibrated_ref(11, 0.1, 200, epochs=2)._m == 22


def test_udp_ref_clips_the_batch_gradient_before_each_step() -> None:
    """Through the optimizer make_private returns: SGD with lr 1 moves the parameters by the
    gradient it was given, so the move is the clipped gradient."""
    ref = UDPRef(clip=0.25)
    for scale, moved_norm in ((100.0, 0.25), (1e-3, None)):
        net = nn.Linear(8, 2)
        start = [p.detach().clone() for p in net.parameters()]
        loader = DataLoader(TensorDataset(torch.zeros(4, 8), torch.zeros(4, dtype=torch.long)))
        opt = ref.make_private(net, torch.optim.SGD(net.parameters(), lr=1.0),
                               nn.CrossEntropyLoss(), loader, epochs=1,
                               generator=torch.Generator().manual_seed(0)).optimizer
        x = torch.randn(4, 8, generator=torch.Generator().manual_seed(1))
        (scale * net(x).pow(2).sum()).backward()
        raw = torch.sqrt(sum(p.grad.pow(2).sum() for p in net.parameters()))
        opt.step()
        moved = torch.sqrt(sum((s - p.detach()).pow(2).sum()
                               for s, p in zip(start, net.parameters())))
        assert float(moved) == pytest.approx(moved_norm or float(raw), rel=1e-5)
        assert (float(raw) > 0.25) == (moved_norm is not None)


def test_udp_ref_reports_a_nominal_epsilon_only() -> None:
    privacy = UDPRef(epsilon=25.0).calibrate(rounds=200, sample_rate=0.1).numbers
    assert "epsilon" not in privacy and privacy["nominal_epsilon"] == 25.0
    assert privacy["nominal_delta"] == 0.5
    context = UDPRef().calibrate(rounds=200, sample_rate=0.1).accounting()
    assert "epsilon" not in context and context["accountant"].startswith("none")


@pytest.mark.parametrize("algorithm", ["fedavg", "fedsgd"])
def test_udp_ref_in_the_fl_engine(algorithm) -> None:
    """local_update wraps the client's training and noises its share: seeded (the same seed,
    the same update), and on FedSGD the shared gradient is clipped before σ is added."""
    gen = torch.Generator().manual_seed(0)
    x, y = torch.randn(22, 16, generator=gen), torch.randint(0, 4, (22,), generator=gen)
    cfg = FLConfig(algorithm, rounds=200)
    params = init_params(16, cfg, seed=0)
    ref = UDPRef(epsilon=1e12)  # σ ≈ 1e-13: the clip's effect alone
    ref.calibrate(rounds=200, sample_rate=0.1)
    first, again = (local_update(params, x, y, cfg, 5, ref) for _ in range(2))
    assert all(torch.equal(first[k], again[k]) for k in first)
    if algorithm == "fedsgd":
        norm = torch.sqrt(sum(u.pow(2).sum() for u in first.values()))
        plain = local_update(params, x, y, cfg, 5)
        assert float(torch.sqrt(sum(u.pow(2).sum() for u in plain.values()))) > 0.25
        assert float(norm) == pytest.approx(0.25, rel=1e-4)
    noisy = UDPRef(epsilon=10.0)
    noisy.calibrate(rounds=200, sample_rate=0.1)
    shared = local_update(params, x, y, cfg, 5, noisy)
    diff = noise_of(shared, first)
    assert float(diff.std()) == pytest.approx(noisy.sigma(m=22, rounds=200, sample_rate=0.1),
                                              rel=0.05)


@pytest.mark.parametrize("params, fragment", [
    ({"epsilon": "0"}, "epsilon (nominal) must be > 0"),
    ({"clip": "-1"}, "clip must be > 0"),
    ({"delta": "1"}, "delta must be in (0, 1)"),
    ({"noise_multiplier": "1"}, "valid parameters: epsilon, clip, delta"),
])
def test_invalid_udp_ref_parameters(params, fragment) -> None:
    with pytest.raises(SerbenchError) as err:
        UDPRef.from_params(params)
    assert fragment in str(err.value) and "\n" not in str(err.value)
