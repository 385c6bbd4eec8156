"""Federated learning engines. Each is a function with the signature of
:func:`serbench.fl.engine.run_federated`, so attacks never depend on which one runs."""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module

from serbench.errors import unknown_name

#: engine name -> "module:function"; imported on use so optional engines cost nothing.
ENGINES = {
    "inprocess": "serbench.fl.engine:run_federated",
    "flower": "serbench.fl.flower:run_federated",
    "flower-deployment": "serbench.fl.flower_deploy:run_federated",
}


def get_engine(name: str) -> Callable:
    if name not in ENGINES:
        raise unknown_name("engine", name, ENGINES)
    module, _, func = ENGINES[name].partition(":")
    return getattr(import_module(module), func)
