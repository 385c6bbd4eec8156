"""The FL attacker's simulations imitate the deployment they attack, and it keeps a signal it
can calibrate on shadow speakers (issue 28): every shadow FL run aggregates as many clients per
round as the target's runs, in both attack modes, and the adaptive attacker reads each candidate
with its sign and threshold calibrated on held-out shadow speakers, which leaves a null at
chance."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import corpus_fixtures as cf
from serbench.attacks.update_calibration import IDENTITY, Calibrated, Calibration, calibrate
from serbench import runner
from serbench.corpora.data import CorpusData
from serbench.deploy import federated
from serbench.protocol import load_corpus
from serbench.runner import EvalConfig, run_eval
from serbench.seeds import SHADOW_OFFSET

#: A few rounds of everything: the test counts clients, not leakage.
TINY = {"rounds": "4", "averaging": "1", "shadow_runs": "2", "shadow_probe_every": "2"}


def ravdess_like(base: Path) -> CorpusData:
    """RAVDESS's 24 actors in its file names and EmoBox folds, two clips per class, with random
    features in place of extracted ones."""
    actors = base / "RAVDESS" / "Audio_Speech_Actors_01-24"
    for actor in range(1, 25):
        for emotion in ("01", "03", "04", "05"):
            for take in ("01", "02"):
                cf.write_audio(actors / f"Actor_{actor:02d}"
                               / f"03-01-{emotion}-01-01-{take}-{actor:02d}.wav")
    data = load_corpus("ravdess", base / "RAVDESS")
    data._features["emobase"] = np.random.default_rng(0).standard_normal((len(data.table), 16))
    return data


def per_round_counts(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    """(run seed, clients per round) of every FL run a run deploys or simulates."""
    calls: list[tuple[int, int]] = []
    schedule = federated.schedule

    def recorded(n_clients: int, per_round: int, rounds: int, seed: int) -> np.ndarray:
        calls.append((seed, per_round))
        return schedule(n_clients, per_round, rounds, seed)

    monkeypatch.setattr(federated, "schedule", recorded)
    return calls


@pytest.mark.parametrize("corpus", ["synth", "ravdess-like"])
def test_shadow_runs_aggregate_the_targets_clients_per_round(
        corpus: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    if corpus == "ravdess-like":
        data = ravdess_like(tmp_path)
        monkeypatch.setattr(runner, "load_corpus", lambda *args, **kwargs: data)
    calls = per_round_counts(monkeypatch)
    # Synth's fold 1 trains on 14 clients (1 per round); its other folds, 15 to 19 (2): the
    # shadow takes the count of most folds, so these folds' targets and shadows agree.
    result = run_eval(EvalConfig(attack="fedavg", defense="noise", folds=[2, 3],
                                 attack_params=TINY, workers=1), tmp_path / "run")
    assert [m.mode for m in result.modes] == ["non-adaptive", "adaptive"]
    target = {n for seed, n in calls if seed < SHADOW_OFFSET}
    shadow = [n for seed, n in calls if seed >= SHADOW_OFFSET]
    # selection, validation, one more training run and two final runs, in each mode
    assert len(shadow) == 2 * 5 and len(target) == 1 and set(shadow) == target
    expected = 2 if corpus == "synth" else 1  # RAVDESS: about 10 training clients
    assert target == {expected}
    for mode in result.modes:  # recorded beside the results
        for fold in mode.folds.values():
            assert fold.extras["clients per round (shadow)"] == expected
            assert fold.extras["clients per round (target)"] == expected


def test_calibration_reads_a_signal_the_way_shadow_speakers_show_it() -> None:
    """A mis-signed margin is flipped, a shifted one re-thresholded, a right one kept as it is,
    and one without signal stays at chance (the model as it is)."""
    truth = np.array([0, 0, 0, 1, 1, 1])
    assert calibrate(np.array([3.0, 2, 1, -1, -2, -3]), truth) == (1.0, Calibration(-1, 0.0))
    uar_, shifted = calibrate(np.array([1.0, 2, 3, 5, 6, 7]), truth)
    assert uar_ == 1.0 and shifted == Calibration(1, 4.0)
    assert calibrate(np.array([-1.0, -2, -3, 1, 2, 3]), truth) == (1.0, IDENTITY)
    assert calibrate(np.zeros(6), truth) == (0.5, IDENTITY)
    model = Calibrated(LinearLogits(), shifted)
    logits = model(torch.tensor([[1.0], [7.0]]))
    assert logits.argmax(1).tolist() == [0, 1]


class LinearLogits(torch.nn.Module):
    """Logits (0, x): the margin is the input."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.zeros_like(x), x], dim=1)


def test_calibrated_adaptive_attacker_leaks_nothing_on_the_null_corpus(tmp_path: Path) -> None:
    """SPEC §8 with the calibration: on the null corpus under ``udp`` the adaptive attacker
    picks a sign and threshold on shadow speakers by chance, and the target stays at chance."""
    cfg = EvalConfig(attack="fedavg", defense="udp", dataset_options={"null": True},
                     attack_params={"rounds": 100, "averaging": "1", "shadow_runs": 1})
    result = run_eval(cfg, tmp_path / "run")
    adaptive = result.modes[1]
    assert adaptive.mode == "adaptive" and "shadow held-out UAR (non-adaptive)" in adaptive.extras
    single = adaptive.pooled.query("task == 'gender' and group == 'n=1'").iloc[0]
    assert abs(single["uar"] - 0.5) <= 0.05 and single["ci_low"] <= 0.5 <= single["ci_high"]
    worst = result.worst()
    assert worst.ci_low <= 0.5 <= worst.ci_high
