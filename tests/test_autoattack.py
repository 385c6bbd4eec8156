"""AutoAttack (ART) on T's input (SPEC §3.3, §5; issue 15 item 5), end to end through the
runner on a tiny configuration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from serbench.attacks.autoattack import AutoAttackAttack
from serbench.defenses.adv import AdversarialTraining
from serbench.defenses.none import NoDefense
from serbench.errors import SerbenchError
from serbench.registry import load_plugin
from serbench.runner import EvalConfig, run_eval

# The adversarial tests' small corpus (fold 1: 96 held-out utterances), short inputs, few
# epochs; the library's iterations cut to what the test needs.
SMALL = {"utterances_per_emotion": 4}
FAST = {"frames": 100, "target_epochs": 10}
CHEAP = {"iterations": 10, "square_queries": 50, "eot_samples": 4}


def run(tmp_path, name: str, attack: str, defense: str = "none", seed: int = 0, **params):
    return run_eval(EvalConfig(attack=attack, defense=defense, folds=[1], seed=seed,
                               dataset_options=SMALL, attack_params={**FAST, **params}),
                    out=tmp_path / name)


def robust(result, attack: str, mode: str | None = None) -> float:
    (m,) = [m for m in result.modes if mode is None or m.mode == mode]
    return m.summary[f"emotion@robust/{attack}.uar"]["mean"]


def test_autoattack_is_at_least_as_strong_as_pgd_and_deterministic(tmp_path) -> None:
    """Undefended T: AutoAttack lowers the clean UAR, at least as far as PGD on the same T
    (same seed, same config), every change within eps, and the same seed repeats it."""
    auto = run(tmp_path, "auto", "autoattack", **CHEAP)
    pgd = run(tmp_path, "pgd", "pgd")
    (mode,) = auto.modes
    clean = mode.summary["emotion.uar"]["mean"]
    assert clean == pgd.modes[0].summary["emotion.uar"]["mean"]  # the same T
    assert robust(auto, "autoattack") < clean
    assert robust(auto, "autoattack") <= robust(pgd, "pgd"), (robust(auto, "autoattack"),
                                                              robust(pgd, "pgd"))
    assert mode.extras["linf"] <= 0.05 + 1e-6
    again = run(tmp_path, "again", "autoattack", **CHEAP)
    assert (again.modes[0].predictions()["y_pred"].to_numpy()
            == mode.predictions()["y_pred"].to_numpy()).all()


def test_randomised_defense_is_scored_by_the_rand_version(tmp_path) -> None:
    """Against `adv` (randomised input), AutoAttack's numbers count (robust/autoattack) in both
    modes; the adaptive mode, where the rand version averages over the resize-and-pad, is at
    least as strong as the non-adaptive one, and at least as strong as EOT-PGD with the same
    steps and draws (its fallback)."""
    eot = {"steps": 5, "eot_samples": 3}
    result = run(tmp_path, "adv", "autoattack", "adv", iterations=5, square_queries=0, **eot)
    pgd = run(tmp_path, "eot", "eot-pgd", "adv", **eot)
    assert (robust(result, "autoattack", "adaptive")
            <= robust(pgd, "eot-pgd", "adaptive")), (robust(result, "autoattack", "adaptive"),
                                                     robust(pgd, "eot-pgd", "adaptive"))
    assert {m.mode for m in result.modes} == {"non-adaptive", "adaptive"}
    for m in result.modes:
        groups = set(m.predictions()["group"])
        assert groups == {"", "robust/autoattack"}, groups
        assert m.extras["linf"] <= 0.05 + 1e-6
    assert robust(result, "autoattack", "adaptive") <= robust(result, "autoattack",
                                                              "non-adaptive")


def test_versions_groups_and_parameters() -> None:
    attack, adv, none = AutoAttackAttack(), AdversarialTraining(), NoDefense()
    assert attack.group(adv) == "robust/autoattack" and attack.group(none) == "robust/autoattack"
    assert attack.resolved_version(adv) == "rand" and attack.resolved_version(none) == "standard"
    assert AutoAttackAttack(version="standard").resolved_version(adv) == "standard"
    assert load_plugin("attack", "autoattack") is AutoAttackAttack
    for bad in ({"version": "plus"}, {"iterations": 0}, {"square_queries": -1},
                {"eot_samples": 0}, {"steps": 0}, {"eps": 0}):
        with pytest.raises(SerbenchError):
            AutoAttackAttack.from_params(bad)


def test_global_generators_untouched() -> None:
    """ART draws from NumPy's global generator: the attack seeds it for the call only."""
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(8 * 12, 4))
    x = torch.randn(6, 1, 8, 12, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    np.random.seed(123)
    expected = np.random.rand()
    np.random.seed(123)
    attack = AutoAttackAttack(iterations=3, square_queries=5, eps=0.1)
    out = [attack.perturb(NoDefense(), net, x, y, torch.Generator().manual_seed(1))
           for _ in range(2)]
    assert np.random.rand() == expected
    assert torch.equal(out[0], out[1])
    assert (out[0] - x).abs().max() <= 0.1 + 1e-6
    assert all(p.requires_grad and p.grad is None for p in net.parameters())
    # With the fallback every input is perturbed (EOT-PGD's where AutoAttack broke nothing);
    # ART alone returns the clean input where it broke nothing.
    assert ((out[0] - x).flatten(1).abs().amax(1) > 0).all()
    alone = AutoAttackAttack(iterations=3, square_queries=5, eps=0.1, fallback=False).perturb(
        NoDefense(), net, x, y, torch.Generator().manual_seed(1))
    kept = (alone == x).flatten(1).all(1)
    with torch.no_grad():
        assert (net(alone).argmax(1)[~kept] != y[~kept]).all()
