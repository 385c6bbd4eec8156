"""The FL surface deployed: the target's FL training with the defense on every client, every
shared update recorded as the honest-but-curious server sees it (SPEC §3.2), and the defense's
guarantee accounted for the run's own client schedule."""

from __future__ import annotations

import copy
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import torch

from serbench.corpora.data import CorpusData
from serbench.errors import SerbenchError
from serbench.fl import get_engine
from serbench.fl.clients import make_clients, most_participations, schedule
from serbench.fl.engine import Diverged, FLConfig, FLRun, Params, init_params
from serbench.metrics import emotion_labels
from serbench.plugins import Defense, PublicData
from serbench.progress import Reporter


#: Engines whose server loop runs outside this process: no ``on_global`` or ``keep`` hook, so
#: no :attr:`FLRecipe.observe` or :attr:`FLRecipe.keep`.
SERVER_ELSEWHERE = frozenset({"flower-deployment"})


@dataclass(frozen=True)
class FLRecipe:
    """What an FL attack needs deployed: the FL recipe, the parameters whose updates the
    server records, and the feature set the clients train on."""

    cfg: FLConfig
    record: tuple[str, ...]
    features: str
    #: The target corpus's emotion classes: the model's outputs on every side.
    classes: tuple[str, ...]
    #: What the server keeps of each round's global model (a small function of it, e.g. an
    #: attack's inversion basis), in :attr:`FLDeployment.observed`; ``None``: nothing.
    observe: Callable[[Params], Any] | None = field(default=None, compare=False)
    #: What the server stores of each recorded update, from the update and what ``observe``
    #: kept of that round's global model (e.g. the inverted update instead of the update: a
    #: log in the memory of its use); ``None``: the ``record``ed parameters.
    keep: Callable[[Params, Any], Params] | None = field(default=None, compare=False)


class Accounted(NamedTuple):
    """What a DP defense is calibrated and accounted for: the FL run's rounds, its client
    sampling rate and the most participations of any client in its seeded schedule."""

    rounds: int
    sample_rate: float
    participations: int


@dataclass
class FLDeployment:
    """One FL run with the defense: its final model, every recorded update, and the defense's
    guarantee (numbers and accounting context) for this run."""

    run: FLRun
    accounted: Accounted
    privacy: dict[str, float]
    accounting: dict[str, Any]
    #: Attack-side views of the updates (e.g. averages over n rounds), computed once and shared
    #: by the attack modes that read this deployment.
    views: dict[Any, Any] = field(default_factory=dict)
    #: round -> ``recipe.observe`` of that round's global model (empty without ``observe``).
    observed: dict[int, Any] = field(default_factory=dict)
    #: Clients aggregated in each round.
    per_round: int = 0
    #: The defense's own attacker's P(male) per recorded update, in the log's order
    #: (:meth:`Defense.own_scores`); ``None``: it has none.
    own: list[float] | None = None


def public_data(data: CorpusData, features: str, classes: tuple[str, ...]) -> PublicData:
    """``data`` (public speakers only) as a ``public_data`` defense receives it."""
    table = data.table
    return PublicData(torch.tensor(data.features(features), dtype=torch.float32),
                      tuple(table["speaker"].astype(str)),
                      torch.tensor((table["gender"] == "M").to_numpy(), dtype=torch.long),
                      torch.tensor(emotion_labels(table["emotion"], classes, deal_others=True)))


def federate(recipe: FLRecipe, data: CorpusData, rows: np.ndarray, defense: Defense, *,
             seed: int, init_seed: int, engine: str, reporter: Reporter, description: str,
             probe_rounds: Collection[int] = (), partial: bool = False,
             public: CorpusData | None = None) -> FLDeployment:
    """Train ``recipe``'s FL model on ``data``'s ``rows`` with ``defense`` on every client.

    The server initialises the global model from ``init_seed`` (the attacker shadows from the
    same start) and samples clients with ``seed``. In ``probe_rounds`` every client's update is
    recorded (an attacker simulating shadow clients), so they count as participations too.
    Labels outside the target's classes (a shadow corpus's own) are dealt over its outputs.
    The defense is calibrated for this run on a copy, so the caller's instance never changes.
    With ``partial`` (an attacker's simulation, never the deployment it imitates) a run that
    diverges ends there, with the updates recorded until then, instead of failing.
    A ``public_data`` defense is calibrated with ``public`` (public speakers only, SPEC §4a).
    """
    defense = copy.deepcopy(defense)
    table = data.table.iloc[rows].reset_index(drop=True)
    x = data.features(recipe.features)[rows]
    y = emotion_labels(table["emotion"], recipe.classes, deal_others=True)
    clients = make_clients(table, data.clients_per_speaker, seed)
    cfg = recipe.cfg
    per_round = cfg.clients_per_round(len(clients))
    # The server draws the schedule, so DP accounting against it counts each client's
    # participations in it.
    chosen = schedule(len(clients), per_round, cfg.rounds, seed)
    accounted = Accounted(cfg.rounds, per_round / len(clients),
                          most_participations(chosen, len(clients), len(probe_rounds)))
    given = {}
    if defense.tags.public_data:
        if public is None:
            raise SerbenchError(f"defense {defense.name!r} trains on public data: give the run "
                                f"public speakers (--shadow disjoint or other datasets)")
        given["public"] = public_data(public, recipe.features, recipe.classes)
    if defense.tags.reads_attribute and engine.startswith("flower"):
        raise SerbenchError(f"defense {defense.name!r} reads each client's own attribute, "
                            f"which the Flower engines do not pass yet; use --engine inprocess")
    guarantee = defense.calibrate(**accounted._asdict(), **given)
    init = init_params(x.shape[1], cfg, init_seed)
    observed: dict[int, Any] = {}
    hook = {}
    if (recipe.observe or recipe.keep) and engine in SERVER_ELSEWHERE:
        raise SerbenchError(f"engine {engine!r} runs the server in another process, so it "
                            f"cannot show this process each round's global model and updates")
    if recipe.observe is not None:
        hook["on_global"] = lambda rnd, params: observed.__setitem__(rnd, recipe.observe(params))
    if recipe.keep is not None:
        hook["keep"] = lambda rnd, update: recipe.keep(update, observed.get(rnd))
    with reporter.track(description, cfg.rounds) as advance:
        try:
            run = get_engine(engine)(x, y, clients, cfg, seed, init=init, defense=defense,
                                     record=recipe.record, probe_rounds=probe_rounds,
                                     on_round=advance, **hook)
        except Diverged as diverged:
            if not partial:
                raise
            run = diverged.run
            reporter.log(f"{description}: {diverged}; its {len(run.log)} updates until then "
                         f"are used")
    return FLDeployment(run, accounted, dict(guarantee.numbers), guarantee.accounting(),
                        observed=observed, per_round=per_round, own=defense.own_scores())
