"""Speaker linkability (SPEC §3.4, §6): VoicePrivacy-style verification trials, their scores,
and the equal error rate with a speaker-cluster bootstrap CI.

Design, as in the VoicePrivacy evaluation: each speaker's utterances are split (seeded, per
speaker) into enrolment and trial utterances; a speaker's *enrolment model* is the mean of its
enrolment embeddings; every trial utterance is scored against every enrolment model of the
same gender (same-gender trials), a *target* trial when model and utterance share the speaker.
Scores are cosine similarities, optionally after an LDA backend trained on shadow speakers.

EER direction: 0.5 means the attacker cannot link utterances to speakers; lower is more
leakage (worse for the defense).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd

from serbench.errors import SerbenchError
from serbench.seeds import stable_seed

ENROL, TRIAL = "enrol", "trial"
#: Two-sided level of the EER's CI (serbench.scoring's, which imports this module).
LEVEL = 0.95
#: Bootstrap resamples of the EER's CI (each rebuilds the trials from resampled speakers).
RESAMPLES = 1000
#: Embeddings by utterance id.
Embeddings = Mapping[str, np.ndarray]
#: A backend: (N, D) embeddings to (N, D') vectors compared by cosine.
Backend = Callable[[np.ndarray], np.ndarray]


def assign_roles(table: pd.DataFrame, *, seed: int, enrol: int = 3,
                 max_trials: int | None = None) -> pd.DataFrame:
    """Each speaker's utterances split into ``enrol`` enrolment and (up to ``max_trials``) trial
    utterances: columns ``utt_id``, ``speaker``, ``gender``, ``role``.

    Seeded per speaker (by ``seed`` and the speaker's name), so a speaker's split does not
    depend on which other speakers the table holds. Speakers with no utterance left for a
    trial are dropped. Record the result: it and :func:`make_trials` define the trials.
    """
    parts = []
    for speaker, group in table.sort_values("utt_id").groupby("speaker", sort=True):
        if len(group) <= enrol:
            continue
        rng = np.random.default_rng(stable_seed(seed, "linkability", speaker))
        order = group.iloc[rng.permutation(len(group))]
        trials = order.iloc[enrol:] if max_trials is None else order.iloc[enrol:enrol + max_trials]
        parts += [order.iloc[:enrol].assign(role=ENROL), trials.assign(role=TRIAL)]
    if not parts:
        raise SerbenchError(f"linkability: no speaker has more than {enrol} utterances")
    roles = pd.concat(parts)[["utt_id", "speaker", "gender", "role"]]
    return roles.sort_values(["speaker", "role", "utt_id"]).reset_index(drop=True)


def make_trials(roles: pd.DataFrame) -> pd.DataFrame:
    """Every trial utterance against every enrolment model of its gender: columns ``model``
    (the enrolled speaker), ``utt_id``, ``speaker``, ``gender``, ``target``."""
    models = roles.loc[roles["role"] == ENROL, ["speaker", "gender"]].drop_duplicates()
    tests = roles.loc[roles["role"] == TRIAL, ["utt_id", "speaker", "gender"]]
    trials = models.rename(columns={"speaker": "model"}).merge(tests, on="gender")
    trials["target"] = trials["model"] == trials["speaker"]
    if trials["target"].all():
        raise SerbenchError("linkability: no gender has two speakers, so no non-target trial")
    return trials[["model", "utt_id", "speaker", "gender", "target"]].sort_values(
        ["model", "utt_id"]).reset_index(drop=True)


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def score_trials(roles: pd.DataFrame, trials: pd.DataFrame, enrolment: Embeddings,
                 tests: Embeddings | None = None, backend: Backend | None = None) -> np.ndarray:
    """Cosine score of each trial: its utterance's embedding (from ``tests``, by default
    ``enrolment``) against its model, the mean of the model's enrolment embeddings, both
    after ``backend`` when given. Enrolment and trial embeddings differ in VoicePrivacy's
    *ignorant* attacker (original enrolment, anonymised trials)."""
    tests = enrolment if tests is None else tests
    project = backend or (lambda x: x)
    enrolled = roles[roles["role"] == ENROL]
    means = {spk: project(np.stack([enrolment[u] for u in grp["utt_id"]])).mean(axis=0)
             for spk, grp in enrolled.groupby("speaker")}
    utt = _unit(project(np.stack([tests[u] for u in trials["utt_id"]])))
    model = _unit(np.stack([means[m] for m in trials["model"]]))
    return np.einsum("ij,ij->i", utt, model)


@dataclass(frozen=True)
class LdaBackend:
    """LDA trained on shadow speakers' embeddings: centred by their mean, projected onto the
    directions that separate them (scikit-learn's eigen solver, with shrinkage because a few
    dozen speakers' embeddings do not determine a 256-d within-speaker covariance)."""

    mean: np.ndarray
    scalings: np.ndarray

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x) - self.mean) @ self.scalings


def fit_lda(embeddings: np.ndarray, speakers: np.ndarray, *, dims: int | None = None,
            shrinkage: float | str | None = "auto") -> LdaBackend:
    """The LDA backend fitted on shadow ``embeddings`` labelled by ``speakers`` (at most
    speakers - 1 dimensions; ``dims`` fewer)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    if len(np.unique(speakers)) < 2:
        raise SerbenchError("LDA backend: needs at least two shadow speakers")
    embeddings = np.asarray(embeddings, dtype=np.float64)
    lda = LinearDiscriminantAnalysis(solver="eigen", shrinkage=shrinkage)
    lda.fit(embeddings, np.asarray(speakers).astype(str))
    keep = min(len(lda.classes_) - 1, dims or embeddings.shape[1])
    return LdaBackend(embeddings.mean(axis=0), lda.scalings_[:, :keep])


def equal_error_rate(target: np.ndarray, scores: np.ndarray,
                     weights: np.ndarray | None = None) -> tuple[float, np.ndarray, np.ndarray]:
    """EER and the ROC (false-positive and true-positive rates) it lies on: the point where
    the false-acceptance and false-rejection rates cross, interpolated linearly along the ROC
    segment that crosses (exact for a piecewise-linear ROC). Higher scores mean same speaker."""
    from sklearn.metrics import roc_curve

    fpr, tpr, _ = roc_curve(target, scores, sample_weight=weights)
    gap = (1 - tpr) - fpr  # false rejections less false acceptances: 1 at the start, -1 at end
    i = int(np.argmax(gap <= 0))
    step = gap[i - 1] / (gap[i - 1] - gap[i])
    return float(fpr[i - 1] + step * (fpr[i] - fpr[i - 1])), fpr, tpr


def eer_threshold(target: np.ndarray, scores: np.ndarray) -> float:
    """The score threshold at which false acceptances and false rejections are closest: the
    verifier's decision at its EER (recorded with scored trials as their ``y_pred``)."""
    from sklearn.metrics import roc_curve

    fpr, tpr, thresholds = roc_curve(target, scores)
    return float(thresholds[np.argmin(np.abs((1 - tpr) - fpr))])


@dataclass(frozen=True)
class Linkability:
    """An EER with its speaker-bootstrap CI, the trial counts behind it and its ROC."""

    eer: float
    ci: tuple[float, float]
    speakers: int
    targets: int
    non_targets: int
    fpr: np.ndarray
    tpr: np.ndarray


def linkability(trials: pd.DataFrame, scores: np.ndarray, *, seed: int = 0,
                resamples: int = RESAMPLES, level: float = LEVEL) -> Linkability:
    """The EER of scored ``trials`` (from :func:`make_trials`) and its percentile CI from a
    cluster bootstrap over the trials' speakers (see :func:`bootstrap_eers`)."""
    target = trials["target"].to_numpy(bool)
    point, fpr, tpr = equal_error_rate(target, scores)
    eers = bootstrap_eers(trials, scores, seed=seed, resamples=resamples)
    lo, hi = np.nanquantile(eers, [(1 - level) / 2, (1 + level) / 2])
    speakers = len(set(trials["model"]) | set(trials["speaker"]))
    return Linkability(point, (float(lo), float(hi)), speakers, int(target.sum()),
                       int((~target).sum()), fpr, tpr)


def bootstrap_eers(trials: pd.DataFrame, scores: np.ndarray, *, seed: int = 0,
                   resamples: int = RESAMPLES) -> np.ndarray:
    """EERs of ``resamples`` trial sets rebuilt from speakers drawn with replacement within
    their gender (each resample keeps the numbers of female and male speakers), as
    :func:`trial_weights` rebuilds them. NaN where a resample has no non-target trial."""
    genders = (dict(zip(trials["model"], trials["gender"]))
               | dict(zip(trials["speaker"], trials["gender"])))
    names = sorted(genders)
    code = {name: i for i, name in enumerate(names)}
    model = trials["model"].map(code).to_numpy(int)
    speaker = trials["speaker"].map(code).to_numpy(int)
    strata = [np.array([code[n] for n in names if genders[n] == g])
              for g in sorted(set(genders.values()))]
    target = trials["target"].to_numpy(bool)
    rng = np.random.default_rng(seed)
    counts = np.zeros((resamples, len(names)))
    for r in range(resamples):
        for members in strata:
            np.add.at(counts[r], rng.choice(members, len(members)), 1)
    scores = np.asarray(scores, dtype=np.float64)
    return np.concatenate([
        weighted_eers(target, scores, trial_weights(c[:, model], c[:, speaker], target))
        for c in np.array_split(counts, max(1, resamples * len(target) // CHUNK))])


#: Trial weights per block of :func:`weighted_eers` (about 40 MB of float64 at a time).
CHUNK = 5_000_000


def weighted_eers(target: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """:func:`equal_error_rate` of the same scored trials under each row of ``weights``, at
    once: the trials are sorted by score once, and each row's ROC is its cumulative weights
    at the end of each run of tied scores (the points scikit-learn's ROC keeps, but the
    collinear ones it drops, which do not move the crossing). NaN for a row that weights no
    non-target trial. Equal to the one-at-a-time EER to rounding (a test)."""
    order = np.argsort(-scores, kind="stable")
    sorted_scores, hit = scores[order], target[order]
    ends = np.r_[np.flatnonzero(np.diff(sorted_scores)), len(order) - 1]
    w = weights[:, order]
    zero = np.zeros((len(w), 1))
    tps = np.hstack([zero, np.cumsum(w * hit, axis=1)[:, ends]])
    fps = np.hstack([zero, np.cumsum(w * ~hit, axis=1)[:, ends]])
    with np.errstate(invalid="ignore", divide="ignore"):
        fpr, tpr = fps / fps[:, -1:], tps / tps[:, -1:]
        gap = (1 - tpr) - fpr  # 1 at the start, -1 at the end
        i = np.argmax(gap <= 0, axis=1)
        rows = np.arange(len(w))
        step = gap[rows, i - 1] / (gap[rows, i - 1] - gap[rows, i])
        eers = fpr[rows, i - 1] + step * (fpr[rows, i] - fpr[rows, i - 1])
    return np.where(fps[:, -1] > 0, eers, np.nan)


def trial_weights(model_draws: np.ndarray, speaker_draws: np.ndarray,
                  target: np.ndarray) -> np.ndarray:
    """How often each trial occurs in the trials rebuilt from a bootstrap draw, given how many
    times its model's speaker and its utterance's speaker were drawn.

    Duplicates: a speaker drawn k times is k distinct speakers, each with its own enrolment
    model and trial utterances (copies of the originals). So its target trials count k times,
    a non-target pair of speakers drawn k and m times counts k * m times, and pairs between
    two copies of one speaker are left out: they are same-speaker scores, neither a new
    target trial nor a valid non-target one. Rebuilding is thus weighting the original trials
    by these counts, exactly (scikit-learn's ROC takes weights)."""
    return np.where(target, model_draws, model_draws * speaker_draws)
