"""Speaker linkability of the intercepted layer (SPEC §3.4 on surface 1): can an eavesdropper
who reads h_T link two transmissions to one speaker? An extra measure of ``intercept``
(``speaker@layer``), beside its gender leakage, at the layer it attacks.

The same trials as ``asv`` (:func:`serbench.linkability.assign_roles`, same-gender, seeded):
every target utterance is transmitted through the fold's deployed T and its defense, averaged
over time into one vector, and projected by an LDA backend trained on the shadow speakers'
transmissions (through the defense the mode simulates); trials are scored by cosine. A fold
scores the trials whose trial utterance is its own (every enrolment model takes part), so the
folds partition the trials and the pooled EER covers them all.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from serbench import linkability as L
from serbench.context import EvalContext
from serbench.corpora.data import CorpusData
from serbench.deploy.split import Target, transmit
from serbench.plugins import Defense
from serbench.seeds import stable_seed


def transmitted_vectors(data: CorpusData, rows: np.ndarray, target: Target, layer: str,
                        frames: int, defense: Defense, seed: int) -> np.ndarray:
    """h_T at ``layer`` of ``rows``' utterances as the device transmits them, averaged over
    time: one (channels x height) vector each."""
    x, mask = data.padded(target.features, frames)
    h = target.hidden(target.inputs(x[rows], mask[rows]), layer)
    h = transmit(defense, h, torch.Generator().manual_seed(seed))
    return h.mean(dim=-1).flatten(1).numpy().astype(np.float64)


def layer_trials(ctx: EvalContext, fold: int, target: Target, layer: str, frames: int,
                 enrol: int = 3) -> pd.DataFrame:
    """Prediction rows of the fold's trials scored from the intercepted ``layer``: the
    enrolled speaker, the score, and the decision at the EER threshold of these trials."""
    table = ctx.target.table
    roles = L.assign_roles(table, seed=ctx.seed, enrol=enrol)
    trials = L.make_trials(roles)
    trials = trials[trials["utt_id"].isin(set(table.loc[table["fold"] == fold, "utt_id"]))]
    if trials.empty or trials["target"].all() or not trials["target"].any():
        return pd.DataFrame()
    used = np.flatnonzero(table["utt_id"].isin(set(roles.loc[roles["role"] == L.ENROL, "utt_id"])
                                               | set(trials["utt_id"])).to_numpy())
    seed = stable_seed(ctx.seed, fold, "linkability", layer)
    vectors = dict(zip(table["utt_id"].iloc[used], transmitted_vectors(
        ctx.target, used, target, layer, frames, ctx.defense, seed)))
    shadow = ctx.shadow
    backend = L.fit_lda(transmitted_vectors(shadow, np.arange(len(shadow.table)), target, layer,
                                            frames, ctx.shadow_defense, seed + 1),
                        shadow.table["speaker"].to_numpy())
    scores = L.score_trials(roles, trials, vectors, backend=backend)
    truth = trials["target"].to_numpy(bool)
    return pd.DataFrame({
        "task": "speaker", "group": "layer", "speaker": trials["speaker"].to_numpy(),
        "enrolled": trials["model"].to_numpy(), "gender": trials["gender"].to_numpy(),
        "y_true": truth.astype(int),
        "y_pred": (scores >= L.eer_threshold(truth, scores)).astype(int), "score": scores})
