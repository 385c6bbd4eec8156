"""One attacker of the intercept attack (:mod:`attacks.intercept`), trained and applied in a
worker process: what it is given, how its epochs are chosen on held-out speakers (the
trainer's one early-stopping policy, :class:`serbench.models.train.Validation`), and what it
returns."""

from __future__ import annotations

import copy
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from serbench.models.train import Validation, fit_classifier, predict_proba
from serbench.scoring import uar

Score = tuple[float, float]


def score(proba: np.ndarray, gender: np.ndarray) -> Score:
    """How well gender probabilities fit held-out speakers: (UAR, mean probability of the
    true gender averaged over genders). The second, smooth, breaks UAR's ties."""
    soft = float(np.mean([proba[gender == g, g].mean() for g in np.unique(gender)]))
    return uar(gender, proba.argmax(1)), soft


class Out(NamedTuple):
    """A fit's gender probabilities on the test speakers, its score on the validation
    speakers (``None``: none held out) and the epochs of its final training."""

    test: np.ndarray
    val: Score | None
    epochs: int


class Fit(NamedTuple):
    """One classifier to train and apply to ``test``: picklable, so a worker process can run
    it. ``n_gender`` marginalises a joint (gender, emotion) softmax to gender.

    ``val`` holds out speakers of T's training side (their h_T and gender codes), never a
    test speaker. With ``fit_rows`` (the rows of ``x`` that are not theirs: a scenario that
    trains on T's training side), the model first trains on those rows only, for at least
    ``epochs`` and at most ``max_epochs``, scored on ``val`` after every epoch and stopped
    after ``patience`` epochs without a better score; a fresh copy of the same initial model
    is then refit on all of ``x`` for the best epoch count. Without ``fit_rows`` (a
    shadow-trained attacker, which never saw the held-out speakers) it trains on ``x`` for
    ``epochs`` and is scored on ``val`` once, so the ``worst`` attacker can compare every
    candidate on the same held-out speakers.

    Early stopping on the *final* model was dropped once (docs/intercept.md): with 12-16
    speakers the validation UAR jumped between epochs. Refitting on every training speaker
    for the chosen number of epochs keeps all the data in the final model; only the epoch
    count comes from validation.
    """

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    epochs: int
    lr: float
    seed: int
    test: torch.Tensor | None = None
    n_gender: int = 0
    val: tuple[torch.Tensor, np.ndarray] | None = None
    fit_rows: torch.Tensor | None = None
    max_epochs: int = 0
    patience: int = 0

    def gender(self, model: nn.Module, x: torch.Tensor) -> np.ndarray:
        proba = predict_proba(model, [x])
        if self.n_gender:
            proba = proba.view(len(proba), self.n_gender, -1).sum(2)
        return proba.numpy()

    def train(self, model: nn.Module, rows: torch.Tensor | None = None, epochs: int | None = None,
              val: Validation | None = None) -> nn.Module:
        x, y = (self.x, self.y) if rows is None else (self.x[rows], self.y[rows])
        return fit_classifier(model, [x], y, epochs=epochs or self.epochs, lr=self.lr,
                              weight_decay=1e-4, seed=self.seed, val=val, restore_best=False)

    def run(self) -> Out:
        """The attacker's gender probabilities on the test speakers (rows: utterances;
        columns: codes), with its validation score."""
        torch.set_num_threads(1)  # a worker process does not inherit the setting
        if self.val is None:
            return Out(self.gender(self.train(self.model), self.test), None, self.epochs)
        held_x, held_gender = self.val
        if self.fit_rows is None:
            model = self.train(self.model)
            return Out(self.gender(model, self.test),
                       score(self.gender(model, held_x), held_gender), self.epochs)
        validation = Validation([held_x], held_gender, patience=self.patience,
                                min_epochs=self.epochs,
                                score=lambda m: score(self.gender(m, held_x), held_gender))
        self.train(copy.deepcopy(self.model), self.fit_rows,
                   epochs=max(self.epochs, self.max_epochs), val=validation)
        best = validation.best()
        model = self.train(self.model, epochs=best + 1)
        return Out(self.gender(model, self.test), validation.curve[best], best + 1)
