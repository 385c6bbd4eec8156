"""The FL attacker's shadow simulations as work for the one worker pool
(:func:`serbench.workers.process_map`): each run is a pure function of its spec and the run
seed (:func:`serbench.seeds.shadow_run_seeds`), computed on the run's thread policy, so the
logs are the same bytes whether one process runs them in turn or several at once."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np

from serbench.attacks.update_sets import add_inverted
from serbench.corpora.data import CorpusData
from serbench.deploy.federated import FLRecipe, federate
from serbench.fl.engine import UpdateLog
from serbench.plugins import Defense
from serbench.progress import NullReporter, Reporter
from serbench.seeds import shadow_run_seeds
from serbench.threads import fixed_threads


class RunSpec(NamedTuple):
    """Shadow FL run number ``k`` (its seeds) on ``rows``, started from run ``init_run``'s
    initialisation (default: its own); ``raw``: its recorded layers are kept, not only their
    inversion (which the inversion candidate reads)."""

    k: int
    rows: np.ndarray
    what: str
    init_run: int | None = None
    raw: bool = True


@dataclass
class ShadowRuns:
    """What every shadow run of one attack mode shares: the recipe, the shadow corpus, the
    simulated defense, and whether the first-layer updates are inverted."""

    recipe: FLRecipe
    data: CorpusData
    defense: Defense
    seed: int
    engine: str
    probe_rounds: range
    invert: bool
    label: str  #: e.g. "shadow fedavg ... (adaptive)", around each run's ``what``
    reporter: Reporter

    def quiet(self) -> ShadowRuns:
        """These runs reporting nothing: picklable, for worker processes."""
        return replace(self, data=self.data.quiet(), reporter=NullReporter())

    def __call__(self, spec: RunSpec) -> UpdateLog:
        run_seed, init_seed = shadow_run_seeds(self.seed, spec.k)
        if spec.init_run is not None:
            init_seed = shadow_run_seeds(self.seed, spec.init_run)[1]
        with fixed_threads():
            deployed = federate(self.recipe, self.data, spec.rows, self.defense, seed=run_seed,
                                init_seed=init_seed, engine=self.engine, reporter=self.reporter,
                                probe_rounds=self.probe_rounds, partial=True, public=self.data,
                                description=self.label.format(what=spec.what))
            log = deployed.run.log
            if self.invert:  # from the raw first-layer updates
                add_inverted(log, deployed.observed)
        if not spec.raw:
            for name in self.recipe.record:
                log.layers.pop(name, None)
        return log
