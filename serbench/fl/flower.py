"""``--engine flower``: federated training on Flower's simulation engine (Ray), one machine.

A drop-in for :func:`serbench.fl.engine.run_federated`. The ServerApp runs in this process (a
thread of ``run_simulation``) around :func:`serbench.fl.engine.server_loop`, so it records every
update and returns the run directly. Clients run in Ray actors, one per CPU: the features go to
one temporary partition file that every virtual SuperNode reads (one node per client), and the
ClientApp is the one SuperNodes run in a deployment (:mod:`serbench.fl.flower_apps`).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable, Collection, Sequence
from pathlib import Path

import numpy as np

from serbench.fl.clients import Client
from serbench.fl.engine import FLConfig, FLRun, Keep, Params
from serbench.fl.flower_apps import client_app, make_job, serve, write_partition
from serbench.plugins import Defense

os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")  # Ray's warning: no GPUs here

from flwr.app import Context  # noqa: E402  (after flower_apps has set flwr's environment)
from flwr.serverapp import Grid, ServerApp  # noqa: E402
from flwr.simulation import run_simulation  # noqa: E402


def _backend() -> dict:
    """One Ray actor per CPU (each client is single-threaded); quiet; a small object store,
    since messages are a few MB and the machine may be shared."""
    cpus = os.cpu_count() or 1
    return {"client_resources": {"num_cpus": 1, "num_gpus": 0.0},
            "init_args": {"num_cpus": cpus, "num_gpus": 0, "logging_level": "ERROR",
                          "log_to_driver": False, "object_store_memory": 256 * 2**20}}


def run_federated(x: np.ndarray, y: np.ndarray, clients: Sequence[Client], cfg: FLConfig,
                  seed: int, *, init: Params | None = None, defense: Defense | None = None,
                  record: Sequence[str] = (), probe_rounds: Collection[int] = (),
                  on_round: Callable[[int], None] | None = None,
                  on_global: Callable[[int, Params], None] | None = None,
                  keep: Keep | None = None) -> FLRun:
    """:func:`serbench.fl.engine.run_federated` on Flower's simulation engine."""
    result: list[FLRun] = []
    with tempfile.TemporaryDirectory(prefix="serbench-flower-") as tmp:
        data = Path(tmp) / "partition.npz"
        write_partition(data, x)
        job = make_job(x, y, clients, cfg, seed, init=init, defense=defense, record=record,
                       probe_rounds=probe_rounds, data=str(data), nodes=len(clients))
        server = ServerApp()

        @server.main()
        def main(grid: Grid, context: Context) -> None:
            result.append(serve(grid, job, on_round, on_global, keep))

        flwr_log = logging.getLogger("flwr")
        level = flwr_log.level
        flwr_log.setLevel(logging.ERROR)  # keep the progress display clean
        try:
            run_simulation(server, client_app, num_supernodes=len(clients),
                           backend_config=_backend())
        finally:
            flwr_log.setLevel(level)
    return result[0]
