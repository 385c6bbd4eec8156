"""The deployment stage: the system under test, a model trained with a defense, built once per
(corpus, fold, defense, engine, seed) and handed to the attacks by the runner.

Data flows corpus → features → **deployment** → attack → scoring → results. Only this stage,
the FL engine and the trainer call a defense's hooks, so an attack never has to know which hook
to call when: :mod:`serbench.deploy.federated` runs the FL training with the defense (every
shared update recorded), :mod:`serbench.deploy.split` trains T through the defense's training
hooks and applies its transforms at the transmitted layer and the input. An attack says what it
needs deployed (:class:`Recipe`), and the runner builds it once per fold for every attack mode.
"""

from __future__ import annotations

from typing import Union

import numpy as np

from serbench.corpora.data import CorpusData
from serbench.deploy.federated import FLDeployment, FLRecipe, federate
from serbench.deploy.split import SplitDeployment, SplitRecipe, deploy_split
from serbench.plugins import Defense
from serbench.progress import Reporter
from serbench.seeds import target_run_seed

Recipe = Union[FLRecipe, SplitRecipe]
Deployment = Union[FLDeployment, SplitDeployment]


def deploy(recipe: Recipe, data: CorpusData, fold: int, defense: Defense, *, seed: int,
           engine: str, reporter: Reporter, public: CorpusData | None = None) -> Deployment:
    """The target as deployed on ``fold``: trained on the other folds' speakers with
    ``defense`` (given the ``public`` speakers where it trains on public data)."""
    train = np.flatnonzero(data.table["fold"].to_numpy() != fold)
    if isinstance(recipe, FLRecipe):
        return federate(recipe, data, train, defense, seed=target_run_seed(seed, fold), init_seed=seed,
                        engine=engine, reporter=reporter, public=public,
                        description=f"fold {fold}: target {recipe.cfg.algorithm}")
    return deploy_split(recipe, data, train, defense, seed=seed, fold=fold)
