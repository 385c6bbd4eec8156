"""The dpsgd defense: its ε is Opacus' accountant's, it clips every example's gradient, its
fast clipping equals Opacus' reference per-example gradients, and it runs end to end."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset
from typer.testing import CliRunner

from serbench.cli import app
from serbench.errors import SerbenchError
from serbench.fl.engine import FLConfig, init_params, local_update
from serbench.models.mlp import SERMLP
from serbench.models.train import BalancedCrossEntropy, fit_classifier, fit_defended
from serbench.registry import load_plugin

DPSGD = load_plugin("defense", "dpsgd")


def rdp_epsilon(z: float, q: float, steps: int, delta: float) -> float:
    accountant = RDPAccountant()
    for _ in range(steps):
        accountant.step(noise_multiplier=z, sample_rate=q)
    return accountant.get_epsilon(delta)


@pytest.mark.parametrize("z, rounds, p, delta", [(1.5, 200, 0.1, 1e-5), (0.8, 40, 0.25, 1e-3),
                                                 (2.0, 10, 1.0, 1e-5)])
def test_fl_epsilon_is_opacus_rdp_accountants(z, rounds, p, delta) -> None:
    """FL: P full-batch Gaussian steps at δ/2, P the participations exceeded w.p. <= δ/2."""
    def tail(k: int) -> float:  # Pr[Binomial(rounds, p) > k]
        return sum(math.comb(rounds, i) * p ** i * (1 - p) ** (rounds - i)
                   for i in range(k + 1, rounds + 1))
    steps = next(k for k in range(rounds + 1) if tail(k) <= delta / 2)
    reported = DPSGD(epsilon=None, noise_multiplier=z, delta=delta).calibrate(
        rounds=rounds, sample_rate=p).numbers
    assert reported["participations"] == steps
    assert reported["epsilon"] == pytest.approx(rdp_epsilon(z, 1.0, steps, delta / 2), rel=1e-9)


def test_fl_finds_the_noise_for_a_target_epsilon() -> None:
    loose, tight = (DPSGD(epsilon=e).calibrate(rounds=200, sample_rate=0.1).numbers
                    for e in (10.0, 2.0))
    assert 9.9 <= loose["epsilon"] <= 10.0 and 1.98 <= tight["epsilon"] <= 2.0
    assert tight["noise_multiplier"] > loose["noise_multiplier"] > 0


def separable(n: int = 128, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Four well-separated Gaussian clusters in 8 dimensions."""
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 4
    return 4 * torch.eye(8)[y] + torch.randn(n, 8, generator=gen), y


@pytest.mark.parametrize("params", [{"epsilon": None, "noise_multiplier": 1.0},
                                    {"epsilon": 3.0}])
def test_fit_classifier_trains_under_dp_and_reports_opacus_epsilon(params) -> None:
    """Central training (T): a plain module, Adam and fit_classifier's loader. 128 examples in
    batches of 16: sampling rate 1/8, 8 steps an epoch, 4 epochs (no early stopping)."""
    x, y = separable()
    dp = DPSGD(**params)
    torch.manual_seed(0)
    model, guarantee, _ = fit_defended(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)),
                                    [x], y, epochs=4, batch_size=16, lr=1e-2, seed=0, defense=dp)
    with torch.no_grad():
        assert (model(x).argmax(1) == y).float().mean() > 0.8
    privacy = guarantee.numbers
    z = privacy["noise_multiplier"]
    assert privacy["epsilon"] == pytest.approx(rdp_epsilon(z, 1 / 8, 32, 1e-5), rel=1e-9)
    if params.get("epsilon"):
        assert 2.9 <= privacy["epsilon"] <= 3.0


def test_fedsgd_update_is_the_mean_of_clipped_per_example_gradients() -> None:
    """Without noise, a FedSGD client shares the mean of its examples' gradients, each clipped
    to max_grad_norm (computed here independently, with torch.func)."""
    gen = torch.Generator().manual_seed(1)
    x, y = 3 * torch.randn(24, 12, generator=gen), torch.arange(24) % 4
    cfg = FLConfig("fedsgd", dropout=0.0)
    params = init_params(12, cfg, 0)
    clip = 0.2
    dp = DPSGD(epsilon=None, noise_multiplier=0.0, max_grad_norm=clip)
    dp.calibrate(rounds=10, sample_rate=0.5)
    update = local_update(params, x, y, cfg, 3, dp)

    model = SERMLP(12, 4, dropout=0.0)
    loss = lambda p, xi, yi: F.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])
    per_example = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    norms = torch.sqrt(sum(g.flatten(1).pow(2).sum(1) for g in per_example.values()))
    assert (norms > clip).sum() >= len(y) // 2  # clipping is exercised
    factor = (clip / (norms + 1e-6)).clamp(max=1.0)
    for name, g in per_example.items():
        expected = (g * factor.view(-1, *[1] * (g.dim() - 1))).mean(0)
        torch.testing.assert_close(update[name], expected, rtol=1e-5, atol=1e-7)
    assert torch.sqrt(sum(u.pow(2).sum() for u in update.values())) <= clip + 1e-6


def test_fast_clipping_equals_opacus_per_example_gradients() -> None:
    """dpsgd's ghost clipping (Opacus' own, through the loss make_private returns) gives the
    parameters Opacus' standard DP-SGD (materialised per-example gradients) gives: same noise,
    class-weighted per-example loss, two epochs of Poisson batches."""
    x, y = separable(40)
    weight = torch.tensor([1.0, 2.0, 0.5, 1.0])

    def train(reference: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        loader = DataLoader(TensorDataset(x, y), batch_size=10,
                            generator=torch.Generator().manual_seed(2))
        noise = torch.Generator().manual_seed(1)
        if reference:
            model, opt, loader = PrivacyEngine(accountant="rdp").make_private(
                module=net, optimizer=opt, data_loader=loader, noise_multiplier=1.0,
                max_grad_norm=0.5, noise_generator=noise)
            criterion = BalancedCrossEntropy(weight)
        else:
            model, opt, criterion, loader = DPSGD(
                epsilon=None, noise_multiplier=1.0, max_grad_norm=0.5
            ).make_private(net, opt, BalancedCrossEntropy(weight), loader, epochs=2,
                           generator=noise)[:4]
        model.train()
        for _ in range(2):
            for xb, yb in loader:
                loss = criterion(model(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
        return copy.deepcopy(net.state_dict())

    reference, fast = train(True), train(False)
    for name in reference:
        torch.testing.assert_close(fast[name], reference[name], rtol=1e-5, atol=1e-6)


def test_fl_noise_is_seeded() -> None:
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(30, 12, generator=gen), torch.arange(30) % 4
    cfg = FLConfig("fedavg")
    params = init_params(12, cfg, 0)
    dp = DPSGD(epsilon=None, noise_multiplier=1.0)
    dp.calibrate(rounds=10, sample_rate=0.5)
    a, b, c = (local_update(params, x, y, cfg, seed, dp, rnd=1) for seed in (5, 5, 6))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["first.weight"], c["first.weight"])


@pytest.mark.parametrize("params, fragment", [
    ({"epsilon": "0"}, "epsilon must be > 0"),
    ({"epsilon": "none"}, "give exactly one of epsilon or noise_multiplier"),
    ({"noise_multiplier": "1"}, "give exactly one of epsilon or noise_multiplier"),
    ({"epsilon": "none", "noise_multiplier": "-1"}, "noise_multiplier must be >= 0"),
    ({"max_grad_norm": "0"}, "max_grad_norm must be > 0"),
    ({"delta": "1"}, "delta must be in (0, 1)"),
    ({"clip": "1"}, "valid parameters: epsilon, noise_multiplier, max_grad_norm, delta"),
])
def test_invalid_dpsgd_parameters(params, fragment) -> None:
    with pytest.raises(SerbenchError) as err:
        DPSGD.from_params(params)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_batchnorm_models_get_groupnorm_in_place_and_bad_recipes_are_one_line_errors() -> None:
    """T's CNNs use BatchNorm, which mixes examples: DP-SGD swaps in GroupNorm inside the
    caller's own model object, which is the one that trains (and is deployed)."""
    x, y = separable(32)
    net = nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.Linear(8, 4))
    before = net[0].weight.detach().clone()
    fit_classifier(net, [x], y, epochs=2, batch_size=8, defense=DPSGD(epsilon=None, noise_multiplier=0.5))
    assert isinstance(net[1], nn.GroupNorm) and not torch.equal(net[0].weight, before)
    dp = DPSGD()
    dp.calibrate(rounds=10, sample_rate=0.5)
    cfg = FLConfig("fedavg", local_epochs=2)
    with pytest.raises(SerbenchError, match="one local epoch"):
        local_update(init_params(8, cfg, 0), x, y, cfg, 0, dp)


def test_cli_fedavg_against_dpsgd_reports_epsilon_and_repeats(tmp_path: Path) -> None:
    runs = []
    for name in ("a", "b"):
        out = tmp_path / name
        result = CliRunner().invoke(app, [
            "eval", "--attack", "fedavg", "--defense", "dpsgd", "--folds", "1",
            "--dataset-option", "speakers=10", "--dataset-option", "utterances_per_emotion=2",
            "--attack-param", "rounds=10", "--attack-param", "layer=last",
            "--attack-param", "model=linear", "--attack-param", "averaging=1,all",
            "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert "epsilon = " in result.output
        runs.append(out)
    headline = json.loads((runs[0] / "summary.json").read_text())["stronger_mode"]
    assert 9.9 <= headline["epsilon"] <= 10.0 and headline["delta"] == 1e-5
    assert (runs[0] / "metrics.csv").read_text() == (runs[1] / "metrics.csv").read_text()
