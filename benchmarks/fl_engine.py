"""FL client-update throughput of the engines on the reference workload (issue 13).

The workload is fed-ser-leakage's recipe at CREMA-D's size: MLP 988 -> 256 -> 128 -> 4 (ReLU,
dropout 0.2), 80 clients of 44 training utterances, 10 % (8) of them per round, FedAvg with
one local Adam epoch at batch 20, or FedSGD on all local data. Features and labels are random:
throughput does not depend on their values. Every variant runs in this one process, on one
thread (the in-process engines' setting), so their ratios are measured under the same load:

- ``batched``: the default ``inprocess`` engine (:mod:`serbench.fl.batched`);
- ``per-client``: ``inprocess-serial``, one ``local_update`` per client;
- ``plain loop``: the reference's structure, an ``nn.Module`` per client loaded with the
  global weights and trained by its own optimizer over a ``DataLoader``;
- ``flower``: Flower's simulation engine, at ``--flower-rounds`` rounds, run once after a
  one-round warm-up (each run starts Ray anew, so its rate includes that start-up, as every
  ``--engine flower`` run's does), skipped with ``--flower-rounds 0``.

Each variant runs ``--repeats`` times, the variants taking turns, and its fastest run counts:
on a shared machine that is the run least slowed by others' load.

A client step is one client's update in one round. Run: ``python benchmarks/fl_engine.py``
(``--rounds 20`` for a quick look).
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import time
from dataclasses import replace
from collections.abc import Callable

import numpy as np
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from serbench.fl import get_engine
from serbench.fl.clients import Client, schedule
from serbench.fl.engine import FLConfig, Params, aggregate, init_params, single_thread
from serbench.models.mlp import SERMLP

D, CLIENTS, TRAIN = 988, 80, 44


def workload(seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[Client]]:
    """Random features and labels for ``CLIENTS`` clients of ``TRAIN`` training rows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(CLIENTS * TRAIN, D)).astype(np.float32)
    y = rng.integers(0, 4, len(x))
    clients = [Client(f"c{k}", f"s{k}", "FM"[k % 2], np.arange(k * TRAIN, (k + 1) * TRAIN),
                      np.arange(0)) for k in range(CLIENTS)]
    return x, y, clients


def plain_loop(x: np.ndarray, y: np.ndarray, clients: list[Client], cfg: FLConfig,
               seed: int, init: Params) -> None:
    """fed-ser-leakage's per-client structure: copy the global module, train the copy with
    its own optimizer over a shuffled ``DataLoader``, collect its weights (FedAvg) or its
    gradient on all local data (FedSGD); aggregate as the engines do."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    net = SERMLP(D, cfg.n_classes, dropout=cfg.dropout)
    net.load_state_dict(init)
    params = {k: v.clone() for k, v in init.items()}
    for chosen in schedule(len(clients), cfg.clients_per_round(len(clients)), cfg.rounds, seed):
        updates = []
        for k in chosen:
            model = copy.deepcopy(net).train()
            xs, ys = xt[clients[k].train], yt[clients[k].train]
            if cfg.algorithm == "fedavg":
                opt = torch.optim.Adam(model.parameters(), lr=cfg.local_lr)
                for xb, yb in DataLoader(TensorDataset(xs, ys), batch_size=cfg.batch_size,
                                         shuffle=True):
                    opt.zero_grad()
                    F.cross_entropy(model(xb), yb).backward()
                    opt.step()
                updates.append({n: params[n] - p.detach() for n, p in model.named_parameters()})
            else:
                F.cross_entropy(model(xs), ys).backward()
                updates.append({n: p.grad for n, p in model.named_parameters()})
        params = aggregate(params, updates, [clients[k].n_train for k in chosen], cfg)
        net.load_state_dict(params)


def best_rates(variants: dict[str, Callable[[FLConfig], object]], cfg: FLConfig,
               repeats: int) -> dict[str, float]:
    """Client steps per second of each variant on ``cfg``, from its fastest of ``repeats``
    runs after a one-round warm-up (first calls import and initialise lazily); the variants
    take turns, so a change in the machine's load hits them alike."""
    for run in variants.values():
        run(replace(cfg, rounds=1))
    best = dict.fromkeys(variants, float("inf"))
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            run(cfg)
            best[name] = min(best[name], time.perf_counter() - start)
    steps = cfg.rounds * cfg.clients_per_round(CLIENTS)
    return {name: steps / seconds for name, seconds in best.items()}


def measure(algorithm: str, rounds: int, flower_rounds: int, repeats: int) -> dict[str, float]:
    """Client steps per second of each variant."""
    x, y, clients = workload()
    init = init_params(D, FLConfig(algorithm), 0)

    def engine(name: str) -> Callable[[FLConfig], object]:
        return lambda cfg: get_engine(name)(x, y, clients, cfg, 0, init=init)

    def plain(cfg: FLConfig) -> None:
        with single_thread():
            plain_loop(x, y, clients, cfg, 0, init)

    rates = best_rates({"batched": engine("inprocess"), "per-client": engine("inprocess-serial"),
                        "plain loop": plain}, FLConfig(algorithm, rounds=rounds), repeats)
    if flower_rounds:
        rates |= best_rates({"flower": engine("flower")},
                            FLConfig(algorithm, rounds=flower_rounds), 1)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--flower-rounds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs per variant, taking turns; the fastest counts")
    parser.add_argument("--algorithms", default="fedavg,fedsgd")
    args = parser.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                            text=True).stdout.strip()
    print(f"commit {commit}, torch {torch.__version__}, load average at start "
          f"{os.getloadavg()[0]:.2f}; best of {args.repeats}; "
          f"{args.rounds} rounds (flower {args.flower_rounds}), {CLIENTS} clients x {TRAIN} "
          f"utterances, 8 per round")
    print(f"{'algorithm':<9} {'variant':<11} {'client-steps/s':>14} {'batched is':>11}")
    for algorithm in args.algorithms.split(","):
        rates = measure(algorithm, args.rounds, args.flower_rounds, args.repeats)
        for name, rate in rates.items():
            print(f"{algorithm:<9} {name:<11} {rate:>14.0f} "
                  f"{rates['batched'] / rate:>10.2f}x")


if __name__ == "__main__":
    main()
