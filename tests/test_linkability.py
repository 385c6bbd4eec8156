"""Speaker linkability: trials, EER, its speaker bootstrap, the LDA backend, and the offline
speaker encoder (serbench/linkability.py, serbench/features/speaker.py)."""

from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from serbench import linkability as L
from serbench.corpora import synth
from serbench.corpora.audio import SAMPLE_RATE
from serbench.errors import SerbenchError
from serbench.features import speaker


def corpus(speakers: int = 24, utterances: int = 10, spread: float = 1.5,
           nuisance: float = 0.0, seed: int = 0) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """A table of ``speakers`` (alternately F and M) and synthetic embeddings: a random centre
    per speaker plus within-speaker noise, and optionally a strong within-speaker nuisance
    along the first axis (what an LDA backend should learn to ignore)."""
    rng = np.random.default_rng(seed)
    rows, embeddings = [], {}
    for s in range(speakers):
        centre = rng.standard_normal(32)
        for u in range(utterances):
            utt = f"s{s:02d}-{u}"
            rows.append((utt, f"s{s:02d}", "FM"[s % 2]))
            vector = centre + spread * rng.standard_normal(32)
            vector[0] += nuisance * rng.standard_normal()
            embeddings[utt] = vector
    return pd.DataFrame(rows, columns=["utt_id", "speaker", "gender"]), embeddings


def scored(table: pd.DataFrame, embeddings: dict[str, np.ndarray], seed: int = 0,
           backend: L.Backend | None = None) -> tuple[pd.DataFrame, np.ndarray]:
    roles = L.assign_roles(table, seed=seed)
    trials = L.make_trials(roles)
    return trials, L.score_trials(roles, trials, embeddings, backend=backend)


def test_eer_of_separable_scores_is_zero_and_of_random_scores_one_half() -> None:
    target = np.array([True] * 5 + [False] * 20)
    assert L.equal_error_rate(target, np.where(target, 1.0, 0.0) + np.arange(25) / 100)[0] == 0
    rng = np.random.default_rng(0)
    random_target = rng.random(4000) < 0.2
    assert L.equal_error_rate(random_target, rng.random(4000))[0] == pytest.approx(0.5, abs=0.03)


def test_eer_interpolates_where_the_error_rates_cross() -> None:
    # Gaussian scores one standard deviation either side of 0: EER = Phi(-1) = 0.159.
    rng = np.random.default_rng(1)
    target = np.r_[np.ones(20000, bool), np.zeros(20000, bool)]
    scores = np.where(target, 1.0, -1.0) + rng.standard_normal(40000)
    assert L.equal_error_rate(target, scores)[0] == pytest.approx(norm.cdf(-1), abs=0.006)
    # One target above one non-target above one target: the crossing is mid-segment.
    assert L.equal_error_rate(np.array([True, False, True]), np.array([3.0, 2.0, 1.0]))[0] == 0.5


def test_trials_are_same_gender_complete_and_seeded() -> None:
    table, _ = corpus(speakers=6, utterances=5)
    roles = L.assign_roles(table, seed=0, enrol=2)
    trials = L.make_trials(roles)
    gender = dict(zip(table["speaker"], table["gender"]))
    assert (trials["model"].map(gender) == trials["gender"]).all()
    assert (trials["speaker"].map(gender) == trials["gender"]).all()
    assert (trials["target"] == (trials["model"] == trials["speaker"])).all()
    assert len(trials) == 2 * 3 * (3 * 3) and trials["target"].sum() == 6 * 3  # 3 per gender
    assert roles.equals(L.assign_roles(table, seed=0, enrol=2))
    assert not roles.equals(L.assign_roles(table, seed=1, enrol=2))
    # A speaker's split does not depend on the other speakers in the table.
    alone = L.assign_roles(table[table["speaker"] == "s00"], seed=0, enrol=2)
    assert alone.equals(roles[roles["speaker"] == "s00"].reset_index(drop=True))


def test_trials_need_two_speakers_of_a_gender() -> None:
    table, _ = corpus(speakers=2)
    with pytest.raises(SerbenchError, match="non-target"):
        L.make_trials(L.assign_roles(table, seed=0))


def test_bootstrap_weights_equal_explicitly_rebuilt_trials() -> None:
    table, embeddings = corpus(speakers=6, utterances=4, spread=3.0)
    trials, scores = scored(table, embeddings)
    draws = pd.Series({"s00": 2, "s02": 1, "s01": 1, "s03": 2, "s05": 0, "s04": 0})
    # Rebuild by hand: copy c of speaker s is the new speaker "s#c"; all same-gender pairs of
    # new speakers, except those between two copies of one original speaker.
    rows = [(f"{m}#{a}", f"{s}#{b}", score, target)
            for m, s, score, target in zip(trials["model"], trials["speaker"], scores,
                                           trials["target"])
            for a in range(draws[m]) for b in range(draws[s]) if (m != s) or (a == b)]
    rebuilt = pd.DataFrame(rows, columns=["model", "speaker", "score", "target"])
    expected = L.equal_error_rate(rebuilt["target"], rebuilt["score"])[0]
    weights = L.trial_weights(trials["model"].map(draws).to_numpy(),
                              trials["speaker"].map(draws).to_numpy(), trials["target"])
    assert L.equal_error_rate(trials["target"], scores, weights)[0] == pytest.approx(expected)


def test_bootstrap_ci_covers_the_eer_and_widens_with_fewer_speakers() -> None:
    table, embeddings = corpus(spread=3.0)
    many = L.linkability(*scored(table, embeddings), seed=0, resamples=300)
    few_table = table[table["speaker"] < "s08"]
    few = L.linkability(*scored(few_table, embeddings), seed=0, resamples=300)
    assert (many.speakers, few.speakers) == (24, 8)
    for result in (many, few):
        assert result.ci[0] <= result.eer <= result.ci[1]
        assert 0 < result.eer < 0.5
    assert few.ci[1] - few.ci[0] > many.ci[1] - many.ci[0]
    again = L.linkability(*scored(table, embeddings), seed=0, resamples=300)
    assert again.ci == many.ci
    assert many.targets == 24 * 7 and many.non_targets == 2 * 12 * 11 * 7


def test_shuffled_speaker_labels_leave_no_linkability() -> None:
    """SPEC §8 sanity check: speaker labels shuffled across utterances (within gender, so
    every speaker keeps one gender) break the link, and the CI contains 0.5."""
    table, embeddings = corpus(spread=1.0)
    trials, scores = scored(table, embeddings)
    assert L.equal_error_rate(trials["target"], scores)[0] < 0.05
    rng = np.random.default_rng(0)
    shuffled = table.copy()
    for _, rows in table.groupby("gender"):
        shuffled.loc[rows.index, "speaker"] = rng.permutation(rows["speaker"].to_numpy())
    result = L.linkability(*scored(shuffled, embeddings), seed=0, resamples=300)
    assert result.ci[0] <= 0.5 <= result.ci[1]


def test_lda_backend_trained_on_shadow_speakers_removes_a_nuisance() -> None:
    table, embeddings = corpus(speakers=48, spread=0.5, nuisance=30.0)
    target_table = table[table["speaker"] < "s24"]
    shadow = table[table["speaker"] >= "s24"]
    backend = L.fit_lda(np.stack([embeddings[u] for u in shadow["utt_id"]]),
                        shadow["speaker"].to_numpy())
    assert backend(np.zeros((3, 32))).shape == (3, 23)
    trials, cosine = scored(target_table, embeddings)
    _, lda = scored(target_table, embeddings, backend=backend)
    assert (L.equal_error_rate(trials["target"], lda)[0] + 0.1
            < L.equal_error_rate(trials["target"], cosine)[0])


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """No network: any connection attempt fails the test; the encoder loads afresh."""
    def refuse(*_args: object) -> None:
        raise AssertionError("the speaker encoder tried to reach the network")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    speaker.load_encoder.cache_clear()


def test_encoder_embeds_synth_audio_offline(offline: None, tmp_path: Path) -> None:
    voices = synth.speaker_voices(2)
    waves = [synth.generate_utterance(voice, "neutral", synth.utterance_rng(0, i, "neutral", 0))
             for i, (_, voice) in enumerate(voices)]
    loads = []

    def load(i: int) -> tuple[np.ndarray, int]:
        loads.append(i)
        return waves[i], SAMPLE_RATE

    digests = [speaker.wave_digest(w, SAMPLE_RATE) for w in waves]
    first = speaker.embed_cached(digests, load, release="test-release", cache_dir=tmp_path)
    again = speaker.embed_cached(digests, load, release="test-release", cache_dir=tmp_path)
    assert first.shape == (2, speaker.EMBEDDING_DIM) and np.array_equal(first, again)
    assert np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5)
    assert loads == [0, 1]  # the second call read the cache
    other = speaker.embed_cached(digests[:1], load, release="other", cache_dir=tmp_path)
    assert loads == [0, 1, 0] and np.allclose(other[0], first[0])
    # 8 kHz input is resampled to the encoder's 16 kHz.
    assert speaker.embed(waves[0][::2], SAMPLE_RATE // 2).shape == (speaker.EMBEDDING_DIM,)
    with pytest.raises(SerbenchError, match="silent"):
        speaker.embed(np.zeros(SAMPLE_RATE), SAMPLE_RATE)


def test_encoder_links_ravdess_actors_offline(offline: None, ravdess_root: Path,
                                              tmp_path: Path) -> None:
    paths = [sorted((ravdess_root / f"Actor_{a:02d}").glob("*.*"))[:3] for a in (1, 3)]
    embeddings = speaker.embed_files([p for actor in paths for p in actor], cache_dir=tmp_path)
    similarity = embeddings @ embeddings.T
    pairs = np.triu_indices(3, 1)
    same = np.r_[similarity[:3, :3][pairs], similarity[3:, 3:][pairs]]
    assert same.min() > similarity[:3, 3:].max()


def test_the_bootstraps_eers_at_once_equal_the_eer_one_resample_at_a_time() -> None:
    """The CI's resamples are scored together (:func:`weighted_eers`); each equals
    :func:`equal_error_rate` under its weights, tied scores and unweighted trials included,
    and a resample that weights no non-target trial has no EER."""
    rng = np.random.default_rng(3)
    for _ in range(20):
        n = int(rng.integers(20, 300))
        target = rng.random(n) < 0.2
        target[:2] = True, False
        scores = np.round(rng.normal(size=n) + target, int(rng.integers(1, 4)))  # ties
        weights = rng.integers(0, 3, size=(40, n)).astype(float)
        weights[:, :2] = 1
        weights[0, ~target] = 0
        one_by_one = [L.equal_error_rate(target, scores, w)[0] if w[~target].any() else np.nan
                      for w in weights]
        np.testing.assert_allclose(L.weighted_eers(target, scores, weights), one_by_one,
                                   atol=1e-12)
