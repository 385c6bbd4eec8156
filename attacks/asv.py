"""Speaker linkability of released speech (SPEC §3.4, surface 4), VoicePrivacy-style, with the
release track's other measures: gender from the released audio, and emotion from it.

The device releases its speech, possibly anonymised by an AUDIO-surface defense (the runner
hands the attack the released target, ``ctx.target``). The attacker embeds utterances with a
pretrained speaker encoder (:mod:`serbench.features.speaker`, cached), enrols each target
speaker on a few utterances and scores every same-gender trial utterance against every
enrolment model by cosine, optionally after an LDA backend trained on shadow speakers
(:mod:`serbench.linkability`). Its knowledge, as VoicePrivacy's attacker levels:

- *ignorant* (the non-adaptive mode): enrolment on the original speech, trials released;
- *lazy-informed* (adaptive): the attacker runs the public defense on its enrolment speech,
  with its own random draws, so enrolment and trials are both anonymised;
- *semi-informed* (adaptive): as lazy-informed, with an LDA backend trained on shadow speakers
  the attacker anonymised itself. Where nothing transforms the audio, the run attacks in one
  mode and scores this level there too (LDA on the original shadow speakers).

Every level is a ``speaker@LEVEL`` measure of role linkability, scored as an EER with a CI
that rebuilds the trials from resampled speakers (:func:`serbench.scoring.ci`); the board's
worst case is the lowest EER over levels and modes. ``gender@released`` is a gender classifier
on the speaker embeddings (trained on the shadow speakers as the mode has them), and the
utility is the emotion UAR of a SER model retrained on released speech (``emotion``, the
deployed model) and of one trained on the original speech and tested on the released speech
(``emotion@clean-model``, VoicePrivacy 2024's utility).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
from sklearn.linear_model import LogisticRegression

from serbench import linkability as L
from serbench.context import Attack, EvalContext
from serbench.corpora.base import GENDERS
from serbench.corpora.data import CorpusData
from serbench.defenses.none import NoDefense
from serbench.deploy.split import SplitDeployment, SplitRecipe, Target, deploy_split
from serbench.errors import SerbenchError, unknown_name
from serbench.features.release import Release
from serbench.metrics import emotion_classes, emotion_labels
from serbench.models.targets import FAMILIES, SIZES
from serbench.models.train import predict_proba
from serbench.plugins import Surface
from serbench.results import FoldResult
from serbench.scoring import Role
from serbench.seeds import release_seed

#: The attacker levels each mode runs (VoicePrivacy's names).
LEVELS = {"non-adaptive": ("ignorant",), "adaptive": ("lazy-informed", "semi-informed")}
BACKENDS = ("cosine", "lda")


@dataclass
class ASVAttack(Attack):
    """Parameters: the trials (``enrol``, ``max_trials``), the ignorant and lazy-informed
    attackers' ``backend``, and the SER models of the utility (``target``, ``size``,
    ``frames``, ``epochs``, ``lr``)."""

    name: ClassVar[str] = "asv"
    summary: ClassVar[str] = ("speaker verification on released speech (VoicePrivacy's ignorant, "
                              "lazy- and semi-informed attackers; EER), gender and emotion UAR")
    surface: ClassVar[Surface] = Surface.AUDIO
    default_features: ClassVar[str] = "logmel"
    feature_kinds: ClassVar[tuple[str, ...]] = ("sequence",)

    #: Enrolment utterances per target speaker (the rest are its trial utterances).
    enrol: int = 3
    #: Trial utterances per speaker at most (0: every one left after enrolment).
    max_trials: int = 0
    #: Scoring of the ignorant and lazy-informed attackers: "cosine", or "lda" (a backend
    #: trained on the original shadow speakers); the semi-informed one always trains LDA on
    #: anonymised shadow speakers.
    backend: str = "cosine"
    #: The SER models' family (T of the release track).
    target: str = "vgg"
    #: Their width: "cpu" or "paper".
    size: str = "cpu"
    #: Log-mel frames per utterance (cropped or padded).
    frames: int = 200
    #: Training epochs of each SER model.
    epochs: int = 20
    #: Learning rate (Adam) of the SER models.
    lr: float = 1e-3
    _scored: dict[str, pd.DataFrame] = field(default_factory=dict, init=False, repr=False)
    _clean: dict[int, Target] = field(default_factory=dict, init=False, repr=False)

    def validate(self) -> None:
        if self.backend not in BACKENDS:
            raise unknown_name("asv backend", self.backend, BACKENDS)
        if self.target not in FAMILIES:
            raise unknown_name("asv model family", self.target, FAMILIES)
        if self.size not in SIZES:
            raise unknown_name("asv model size", self.size, SIZES)
        if self.enrol < 1 or self.max_trials < 0 or self.frames < 8 or self.epochs < 1 \
                or self.lr <= 0:
            raise SerbenchError("asv: need enrol >= 1, max_trials >= 0, frames >= 8, "
                                "epochs >= 1 and lr > 0")

    def role(self, task: str, group: str) -> Role:
        if task == "speaker":
            return Role.LINKABILITY
        if task == "emotion" and group == "clean-model":
            return Role.UTILITY
        return super().role(task, group)

    def recipe(self, ctx: EvalContext) -> SplitRecipe:
        """The deployed SER model: trained on the released speech of the fold's others."""
        return SplitRecipe(self.target, self.size, ctx.features, self.frames, self.epochs,
                           self.lr)

    def fit(self, ctx: EvalContext) -> None:
        """Score every level's trials of this mode (they do not depend on the fold)."""
        if ctx.shadow is None and ctx.mode == "adaptive":
            raise SerbenchError("asv: the semi-informed attacker needs shadow speakers "
                                "(--shadow disjoint or a shadow corpus)")
        levels = LEVELS[ctx.mode]
        if ctx.mode == "non-adaptive" and ctx.target.release is None and ctx.shadow is not None:
            # Nothing transforms the audio: the undefended run meets every attacker a defended
            # one does (cosine alone understates its linkability where LDA links better).
            levels = (*levels, "semi-informed")
        self._scored[ctx.mode] = pd.concat(
            [self.scored_trials(ctx, level) for level in levels], ignore_index=True)

    def scored_trials(self, ctx: EvalContext, level: str) -> pd.DataFrame:
        """One attacker level's trials over all target speakers: prediction rows with the
        enrolled speaker, the score and the decision at the EER threshold."""
        table = ctx.target.table
        roles = L.assign_roles(table, seed=ctx.seed, enrol=self.enrol,
                               max_trials=self.max_trials or None)
        trials = L.make_trials(roles)
        tests = dict(zip(table["utt_id"], ctx.target.speaker_embeddings()))
        enrolment = tests if ctx.target.release is None else dict(zip(
            table["utt_id"], self.enrolment_data(ctx, level).speaker_embeddings()))
        scores = L.score_trials(roles, trials, enrolment, tests, self.backend_for(ctx, level))
        target = trials["target"].to_numpy(bool)
        return pd.DataFrame({
            "task": "speaker", "group": level, "speaker": trials["speaker"].to_numpy(),
            "enrolled": trials["model"].to_numpy(), "gender": trials["gender"].to_numpy(),
            "utt_id": trials["utt_id"].to_numpy(), "y_true": target.astype(int),
            "y_pred": (scores >= L.eer_threshold(target, scores)).astype(int), "score": scores})

    def enrolment_data(self, ctx: EvalContext, level: str) -> CorpusData:
        """The target speakers' enrolment audio as the attacker has it: the original speech
        (ignorant), or anonymised by the attacker with the public defense (informed)."""
        if level == "ignorant":
            return ctx.target.released(None)
        return ctx.target.released(Release(ctx.shadow_defense, release_seed(ctx.seed,
                                                                            "attacker")))

    def backend_for(self, ctx: EvalContext, level: str) -> L.Backend | None:
        """LDA on the shadow speakers as this level's attacker has them, or plain cosine."""
        if ctx.shadow is None or (level != "semi-informed" and self.backend == "cosine"):
            return None
        shadow = ctx.shadow if level == "semi-informed" else ctx.shadow.released(None)
        return L.fit_lda(shadow.speaker_embeddings(), shadow.table["speaker"].to_numpy())

    def evaluate_fold(self, ctx: EvalContext, fold: int,
                      deployed: SplitDeployment) -> FoldResult:
        table = ctx.target.table
        in_fold = (table["fold"] == fold).to_numpy()
        trials = self._scored[ctx.mode]
        trials = trials[trials["utt_id"].isin(set(table.loc[in_fold, "utt_id"]))]
        parts = [self.emotion_rows(ctx, fold, deployed.target, ""),
                 self.emotion_rows(ctx, fold, self.clean_model(ctx, fold, deployed), "clean-model"),
                 self.gender_rows(ctx, in_fold), trials]
        return FoldResult(pd.concat(parts, ignore_index=True).fillna({"enrolled": ""}),
                          deployed.privacy, deployed.accounting)

    def clean_model(self, ctx: EvalContext, fold: int, deployed: SplitDeployment) -> Target:
        """The SER model trained on the original speech of the fold's others (the deployed
        one where nothing transforms the audio); trained once per fold for both modes."""
        if ctx.target.release is None:
            return deployed.target
        if fold not in self._clean:
            clean = ctx.target.released(None)
            rows = np.flatnonzero(clean.table["fold"].to_numpy() != fold)
            self._clean[fold] = deploy_split(self.recipe(ctx), clean, rows, NoDefense(),
                                             seed=ctx.seed, fold=fold).target
        return self._clean[fold]

    def emotion_rows(self, ctx: EvalContext, fold: int, model: Target,
                     group: str) -> pd.DataFrame:
        """``model``'s emotion predictions on the fold's released speech."""
        table = ctx.target.table
        rows = np.flatnonzero((table["fold"] == fold).to_numpy())
        x, mask = ctx.target.padded(model.features, self.frames)
        proba = predict_proba(model.net, [model.inputs(x[rows], mask[rows])]).numpy()
        classes = emotion_classes(table["emotion"])
        return pd.DataFrame({"task": "emotion", "group": group,
                             "speaker": table["speaker"].iloc[rows].to_numpy(),
                             "y_true": emotion_labels(table["emotion"].iloc[rows], classes),
                             "y_pred": proba.argmax(1)})

    def gender_rows(self, ctx: EvalContext, in_fold: np.ndarray) -> pd.DataFrame:
        """Gender from the released audio: a logistic regression on speaker embeddings,
        trained on the shadow speakers as this mode's attacker has them."""
        if ctx.shadow is None:
            return pd.DataFrame()
        shadow = ctx.shadow.speaker_embeddings()
        model = LogisticRegression(C=1.0, max_iter=2000).fit(
            shadow, ctx.shadow.table["gender"].map(GENDERS.index).to_numpy())
        table = ctx.target.table[in_fold]
        proba = model.predict_proba(ctx.target.speaker_embeddings()[in_fold])
        return pd.DataFrame({"task": "gender", "group": "released",
                             "speaker": table["speaker"].to_numpy(),
                             "y_true": table["gender"].map(GENDERS.index).to_numpy(),
                             "y_pred": proba.argmax(1), "score": proba[:, 1]})
