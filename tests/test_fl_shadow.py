"""The FL attacker's simulations imitate the deployment they attack (issue 28): every shadow
FL run aggregates as many clients per round as the target's runs, in both attack modes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import corpus_fixtures as cf
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
                                 attack_params=TINY), tmp_path / "run")
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
