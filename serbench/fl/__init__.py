"""Federated learning engines. Each is a function with the signature of
:func:`serbench.fl.engine.run_in_process` (less its first argument), so attacks never depend on
which one runs. ``inprocess`` batches a round's clients (:mod:`serbench.fl.batched`);
``inprocess-serial`` runs them one by one through ``local_update``, as the Flower engines'
clients do, bit for bit."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

from serbench.errors import unknown_name

#: engine name -> "module:function"; imported on use so optional engines cost nothing.
ENGINES = {
    "inprocess": "serbench.fl.batched:run_federated",
    "inprocess-serial": "serbench.fl.engine:run_federated",
    "flower": "serbench.fl.flower:run_federated",
    "flower-deployment": "serbench.fl.flower_deploy:run_federated",
}


def get_engine(name: str) -> Callable:
    if name not in ENGINES:
        raise unknown_name("engine", name, ENGINES)
    module, _, func = ENGINES[name].partition(":")
    return getattr(import_module(module), func)
