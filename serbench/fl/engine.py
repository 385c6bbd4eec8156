"""In-process federated learning: FedSGD and FedAvg (SPEC §3.2) with every update recorded.

:func:`local_update` is a plain function of (global weights, client data, configuration, seed),
so any engine (this loop, a Flower ClientApp) produces bit-identical client updates.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import torch
from torch.func import functional_call
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from serbench.errors import SerbenchError
from serbench.fl.clients import Client, schedule
from serbench.models.mlp import SERMLP
from serbench.plugins import Defense
from serbench.seeds import client_seed

Params = dict[str, torch.Tensor]


@dataclass(frozen=True)
class FLConfig:
    """The FL recipe; defaults are the reference's (fed-ser-leakage)."""

    algorithm: str  # "fedsgd" or "fedavg"
    rounds: int = 200
    client_fraction: float = 0.1
    batch_size: int = 20
    local_epochs: int = 1
    local_lr: float = 5e-4  # FedAvg: Adam
    server_lr: float = 0.05  # FedSGD
    dropout: float = 0.2
    n_classes: int = 4
    #: Clients aggregated per round; 0: ``client_fraction`` of them. An attacker's shadow run
    #: sets the target's count, so that its rounds average as many updates as those it imitates.
    per_round: int = 0

    def clients_per_round(self, n_clients: int) -> int:
        wanted = self.per_round or int(round(self.client_fraction * n_clients))
        return max(1, min(n_clients, wanted))


@cache
def _template(d_in: int, n_classes: int, dropout: float) -> SERMLP:
    """A parameter-free-in-use module: weights are always passed to ``functional_call``."""
    with torch.device("meta"):
        return SERMLP(d_in, n_classes, dropout=dropout)


def init_params(d_in: int, cfg: FLConfig, seed: int) -> Params:
    torch.manual_seed(seed)
    return {k: v.detach() for k, v in SERMLP(d_in, cfg.n_classes, dropout=cfg.dropout).state_dict().items()}


def local_update(global_params: Params, x: torch.Tensor, y: torch.Tensor, cfg: FLConfig,
                 seed: int, defense: Defense | None = None, *, rnd: int = 0,
                 attribute: int | None = None) -> Params:
    """The update a client shares in round ``rnd``: its gradient (FedSGD, on all local training
    data) or ``global - local`` parameters after local Adam epochs (FedAvg), then the defense's
    ``privatize_update``. A defense that ``trains`` wraps the local training
    (:func:`_defended_update`); one that ``reads_attribute`` is given the client's own
    ``attribute`` (its gender, 0 = F, 1 = M) in both."""
    model = _template(x.shape[1], cfg.n_classes, cfg.dropout).train()
    known = attribute_of(defense, attribute)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        if defense is not None and defense.tags.trains:
            update = _defended_update(global_params, x, y, cfg, rnd, gen, defense, known)
        elif cfg.algorithm == "fedsgd":
            params = {k: v.clone().requires_grad_(True) for k, v in global_params.items()}
            loss = F.cross_entropy(functional_call(model, params, (x,)), y)
            grads = torch.autograd.grad(loss, list(params.values()))
            update = {k: g.detach() for k, g in zip(params, grads)}
        elif cfg.algorithm == "fedavg":
            params = {k: v.clone().requires_grad_(True) for k, v in global_params.items()}
            opt = torch.optim.Adam(params.values(), lr=cfg.local_lr, foreach=True)
            for _ in range(cfg.local_epochs):
                for batch in torch.randperm(len(y), generator=gen).split(cfg.batch_size):
                    loss = F.cross_entropy(functional_call(model, params, (x[batch],)), y[batch])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            update = {k: global_params[k] - params[k].detach() for k in params}
        else:
            raise ValueError(f"unknown FL algorithm {cfg.algorithm!r}")
        if defense is not None:
            update = defense.privatize_update(update, generator=gen, **known)
    return update


def attribute_of(defense: Defense | None, attribute: object) -> dict[str, object]:
    """The keyword a hook is given for the sensitive attribute: only a defense that declares
    ``reads_attribute`` receives it (SPEC §4a), and it must then be known."""
    if defense is None or not defense.tags.reads_attribute:
        return {}
    if attribute is None:
        raise SerbenchError(f"defense {defense.name!r} reads the client's sensitive attribute, "
                            f"but this engine does not pass it")
    return {"attribute": attribute}


def _defended_update(global_params: Params, x: torch.Tensor, y: torch.Tensor, cfg: FLConfig,
                     rnd: int, gen: torch.Generator, defense: Defense,
                     known: dict[str, object]) -> Params:
    """The local training of :func:`local_update` on a real module, through the defense's
    ``make_private`` (model, optimizer, loss, loader) and ``training_batch`` (every batch, at step
    ``rnd``). FedSGD: one batch of all local data; the shared gradient is the one the wrapped
    optimizer applies (for DP-SGD, the noisy mean of clipped per-example gradients), so its
    optimizer is SGD with lr 0, which leaves the model as it is. FedAvg: Adam, as above."""
    net = copy.deepcopy(_template(x.shape[1], cfg.n_classes, cfg.dropout))
    net.load_state_dict({k: v.clone() for k, v in global_params.items()}, assign=True)
    if cfg.algorithm == "fedsgd":
        batch_size, epochs = len(y), 1
        opt: torch.optim.Optimizer = torch.optim.SGD(net.parameters(), lr=0.0)
    elif cfg.algorithm == "fedavg":
        batch_size, epochs = cfg.batch_size, cfg.local_epochs
        opt = torch.optim.Adam(net.parameters(), lr=cfg.local_lr, foreach=True)
    else:
        raise ValueError(f"unknown FL algorithm {cfg.algorithm!r}")
    loader = DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=True, generator=gen)
    model, opt, criterion, loader = defense.make_private(
        net, opt, nn.CrossEntropyLoss(), loader, epochs=epochs, generator=gen, **known)[:4]
    model.train()
    for _ in range(epochs):
        for xb, yb in loader:
            xb, yb = defense.training_batch(model, xb, yb, step=rnd, generator=gen)
            loss = criterion(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    if cfg.algorithm == "fedsgd":
        return {k: p.grad.detach() for k, p in net.named_parameters()}
    return {k: global_params[k] - p.detach() for k, p in net.named_parameters()}


def aggregate(global_params: Params, updates: Sequence[Params], weights: Sequence[float],
              cfg: FLConfig) -> Params:
    """Sample-weighted mean of the updates, applied as a server step."""
    w = torch.tensor(weights, dtype=torch.float32)
    w = w / w.sum()
    step = cfg.server_lr if cfg.algorithm == "fedsgd" else 1.0
    return {k: v - step * _weighted_sum([u[k] for u in updates], w)
            for k, v in global_params.items()}


def _weighted_sum(tensors: Sequence[torch.Tensor], w: torch.Tensor) -> torch.Tensor:
    """``sum(wi * t)`` with its roundings (each product rounded, then added in order) in two
    buffers, not two fresh tensors per term: fresh MB-sized tensors cost page faults."""
    total = torch.mul(tensors[0], w[0])
    term = torch.empty_like(total)
    for wi, t in zip(w[1:], tensors[1:]):
        total.add_(torch.mul(t, wi, out=term))
    return total


@dataclass
class UpdateLog:
    """Every shared update, as the honest-but-curious server sees it.

    Row i is one (round, client) update; ``layers[name]`` stacks that parameter's updates.
    """

    rounds: np.ndarray
    clients: list[str]
    speakers: list[str]
    genders: np.ndarray  # 0 = F, 1 = M
    layers: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rounds)

    def head(self, rows: int) -> UpdateLog:
        """The first ``rows`` updates (views, not copies)."""
        return UpdateLog(self.rounds[:rows], self.clients[:rows], self.speakers[:rows],
                         self.genders[:rows], {k: v[:rows] for k, v in self.layers.items()})


@dataclass
class FLRun:
    params: Params
    log: UpdateLog


class Diverged(SerbenchError):
    """FL training diverged (a one-line error); :attr:`run` holds the last finite global model
    and the updates recorded up to then, for a caller that can use them (an attacker's
    simulation, not the deployment it imitates)."""

    def __init__(self, message: str, run: FLRun) -> None:
        super().__init__(message)
        self.run = run


def predict(params: Params, x: torch.Tensor, cfg: FLConfig) -> np.ndarray:
    model = _template(x.shape[1], cfg.n_classes, cfg.dropout).eval()
    with torch.no_grad():
        return functional_call(model, params, (x,)).argmax(1).numpy()


#: What the server stores of one recorded update shared in round ``rnd``: ``keep(rnd, update)``
#: returns the tensors to store, by name, e.g. a small function of the update that an attacker
#: needs instead of the update itself (the memory of a log grows with every update). The
#: default stores the ``record``ed parameters as they are.
Keep = Callable[[int, Params], Params]


#: The updates of clients ``ks`` (indices into the client list) in round ``rnd`` on the
#: global ``params``, in the order of ``ks``: how an engine runs its clients.
ClientUpdates = Callable[[Params, int, Sequence[int]], Sequence[Params]]


#: How an in-process engine computes one round's updates: the clients' training data and
#: seeds, in order, on the global parameters (defense, round). :func:`serial_updates` is the
#: reference; :mod:`serbench.fl.batched` computes the same updates as one batched computation.
#: The updates need only stay valid until the next call (:func:`server_loop` records and
#: aggregates them within the round), so an engine may reuse their storage.
RoundUpdates = Callable[[Params, Sequence[tuple[torch.Tensor, torch.Tensor]], FLConfig,
                         Sequence[int], Defense | None, int], list[Params]]


def serial_updates(params: Params, data: Sequence[tuple[torch.Tensor, torch.Tensor]],
                   cfg: FLConfig, seeds: Sequence[int], defense: Defense | None,
                   rnd: int) -> list[Params]:
    """One :func:`local_update` per client: what a Flower ClientApp computes, bit for bit."""
    return [local_update(params, x, y, cfg, s, defense, rnd=rnd) for (x, y), s in zip(data, seeds)]


def run_in_process(round_updates: RoundUpdates, x: np.ndarray, y: np.ndarray,
                   clients: Sequence[Client], cfg: FLConfig, seed: int, *,
                   init: Params | None = None, defense: Defense | None = None,
                   record: Sequence[str] = (), probe_rounds: Collection[int] = (),
                   on_round: Callable[[int], None] | None = None,
                   on_global: Callable[[int, Params], None] | None = None,
                   keep: Keep | None = None) -> FLRun:
    """Train the global model from ``init`` (default: initialised from ``seed``) with each
    round's updates from ``round_updates``; record the parameters named in ``record`` of every
    shared update.

    In ``probe_rounds`` every client's update on the current global model is recorded, while
    only the sampled clients' updates are aggregated: an attacker simulating shadow clients
    gets more training data without changing the FL recipe it imitates.
    """
    xt, yt = torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.long)
    data = [(xt[c.train], yt[c.train]) for c in clients]

    def updates(params: Params, rnd: int, ks: Sequence[int]) -> list[Params]:
        if defense is not None and defense.tags.reads_attribute:  # each client its own gender
            return [local_update(params, *data[k], cfg, client_seed(seed, rnd, k), defense,
                                 rnd=rnd, attribute=int(clients[k].gender == "M")) for k in ks]
        return round_updates(params, [data[k] for k in ks], cfg,
                             [client_seed(seed, rnd, k) for k in ks], defense, rnd)

    params = init if init is not None else init_params(x.shape[1], cfg, seed)
    with single_thread():
        return server_loop(updates, params, clients, cfg, seed, record=record,
                        probe_rounds=probe_rounds, on_round=on_round, on_global=on_global,
                        keep=keep)


def run_federated(x: np.ndarray, y: np.ndarray, clients: Sequence[Client], cfg: FLConfig,
                  seed: int, **options) -> FLRun:
    """``--engine inprocess-serial``: :func:`run_in_process` with one :func:`local_update` per
    client, the reference the batched and the Flower engines are tested against."""
    return run_in_process(serial_updates, x, y, clients, cfg, seed, **options)


#: Memory left to everything else when a run checks that its data fit (:func:`check_memory`).
MEMORY_MARGIN = 2**30


def available_memory() -> int | None:
    """Bytes this process may still allocate: the kernel's MemAvailable, lowered by a cgroup
    (v2) limit; ``None`` where neither can be read (not Linux)."""
    try:
        with open("/proc/meminfo") as f:
            info = {line.split(":")[0]: line.split()[1] for line in f}
        available = int(info["MemAvailable"]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    try:
        with open("/sys/fs/cgroup/memory.max") as f, open("/sys/fs/cgroup/memory.current") as g:
            available = min(available, int(f.read()) - int(g.read()))
    except (OSError, ValueError):  # no cgroup v2 limit ("max") or no cgroup files
        pass
    return available


def check_memory(nbytes: int, what: str, remedy: str) -> None:
    """Fail early with one line, naming the size and ``remedy``, when ``what`` needs more than
    the available memory less :data:`MEMORY_MARGIN`: the kernel's OOM killer would end the run
    later without a message."""
    available = available_memory()
    if available is not None and nbytes > available - MEMORY_MARGIN:
        raise SerbenchError(f"{what} needs {nbytes / 2**30:.1f} GiB, but only "
                            f"{max(available - MEMORY_MARGIN, 0) / 2**30:.1f} GiB of memory is "
                            f"available (keeping {MEMORY_MARGIN / 2**30:.0f} GiB free); {remedy}")


def finite_rows(log: UpdateLog, rows: int) -> int:
    """How many of the log's first ``rows`` updates come before its first non-finite one."""
    bad = [torch.nonzero(~torch.isfinite(v[:rows].flatten(1)).all(1)) for v in log.layers.values()]
    return min([rows, *(int(b[0, 0]) for b in bad if len(b))])


def recorded_per_round(n_clients: int, cfg: FLConfig, probe_rounds: Collection[int]
                       ) -> list[int]:
    """How many updates the server records in each round: every client's in ``probe_rounds``,
    the sampled clients' in the others."""
    return [n_clients if r in probe_rounds else cfg.clients_per_round(n_clients)
            for r in range(cfg.rounds)]


def check_log_memory(total: int, example: Params) -> None:
    """:func:`check_memory` for a log of ``total`` updates stored like ``example``."""
    per_update = 4 * sum(t.numel() for t in example.values())  # float32
    check_memory(total * per_update,
                 f"recording {total} FL updates of {per_update / 2**20:.2f} MiB "
                 f"({', '.join(example)})",
                 "record fewer: fewer rounds or probe rounds, e.g. --attack-param "
                 "shadow_probe_every=16 or --attack-param rounds=100")


@contextmanager
def single_thread() -> Iterator[None]:
    """Run client updates on one thread: the result then does not depend on the machine's
    thread count (FedAvg's Adam steps differ in the last bits otherwise, so engines would
    disagree), and the tiny MLP runs 15-50x faster without thread hand-offs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def all_finite(params: Params) -> bool:
    """Whether every parameter is finite. A tensor's sum is inf or NaN where any element is, so
    one read of it settles the common case; only a sum that is not finite (a NaN, an inf, or
    finite values summing past float32's range) is checked element by element."""
    return all(math.isfinite(float(v.sum())) or bool(torch.isfinite(v).all())
               for v in params.values())


def server_loop(updates: ClientUpdates, params: Params, clients: Sequence[Client],
                cfg: FLConfig, seed: int, *, record: Sequence[str] = (),
                probe_rounds: Collection[int] = (),
                on_round: Callable[[int], None] | None = None,
                on_global: Callable[[int, Params], None] | None = None,
                keep: Keep | None = None) -> FLRun:
    """The honest-but-curious server's loop, shared by every engine: sample the round's
    clients, collect their ``updates``, record them (``keep``: what of each is stored; default
    the ``record``ed parameters), aggregate the sampled ones.

    ``on_global(rnd, params)`` sees each round's global model before its clients train (what
    the server sends; e.g. an attacker keeping a small function of it). It must not modify
    ``params``."""
    per_round = cfg.clients_per_round(len(clients))
    probe_rounds = set(probe_rounds)
    sizes = recorded_per_round(len(clients), cfg, probe_rounds)
    total = sum(sizes)
    if keep is None:
        keep = lambda rnd, update: {k: update[k] for k in record}  # noqa: E731
    log = UpdateLog(np.repeat(np.arange(cfg.rounds), sizes), [], [],
                    np.zeros(total, dtype=np.int64))
    sampled = schedule(len(clients), per_round, cfg.rounds, seed)
    male = np.array([c.gender == "M" for c in clients], dtype=np.int64)
    row = 0
    for rnd in range(cfg.rounds):
        round_start = row
        chosen = [int(k) for k in sampled[rnd]]
        ks = range(len(clients)) if rnd in probe_rounds else chosen
        if on_global:
            on_global(rnd, params)
        shared = dict(zip(ks, updates(params, rnd, ks)))
        stored = [keep(rnd, update) for update in shared.values()]
        if row == 0 and stored[0]:  # the log's size is known from the first update
            check_log_memory(total, stored[0])
            log.layers = {name: torch.empty((total, *v.shape)) for name, v in stored[0].items()}
        row += len(stored)
        for name, layer in log.layers.items():  # the round's updates, copied at once
            torch.stack([s[name] for s in stored], out=layer[round_start:row])
        log.clients += [clients[k].cid for k in shared]
        log.speakers += [clients[k].speaker for k in shared]
        log.genders[round_start:row] = male[list(shared)]
        stepped = aggregate(params, [shared[k] for k in chosen],
                            [clients[k].n_train for k in chosen], cfg)
        if not all_finite(stepped):
            # Every later update, and any statistic of them, would be inf or NaN.
            raise Diverged(
                f"FL training diverged: the global model is not finite after round {rnd + 1} "
                f"of {cfg.rounds} ({cfg.algorithm}): the defense adds more noise than this "
                f"recipe can train through", FLRun(params, log.head(finite_rows(log, round_start))))
        params = stepped
        if on_round:
            on_round(1)
    return FLRun(params, log)
