"""The Flower ServerApp and ClientApp (flwr 1.41 Message API) behind both Flower engines.

One protocol serves the simulation engine (:mod:`serbench.fl.flower`) and the deployment engine
(:mod:`serbench.fl.flower_deploy`):

- A node holds a *partition*: feature rows and their fingerprints (:func:`write_partition`). The
  server never sends features. A ``query`` handshake returns each node's fingerprints, and the
  server places every client on a node that holds all of its training rows.
- Each round the server sends a client's node the global parameters, the positions of the
  client's rows in that node's partition, their labels, the client's seed, the round and the
  (pickled) defense. The ClientApp runs :func:`serbench.fl.engine.local_update` on them: the
  function the in-process engine runs, defense included, so updates are bit-identical.
- The server's loop is :func:`serbench.fl.engine.server_loop`, with a Flower round trip as the way
  clients are run: the honest-but-curious server records every update there, exactly as
  in-process.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import sys
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np
import torch

from serbench.errors import SerbenchError
from serbench.fl.clients import Client
from serbench.fl.engine import (FLConfig, FLRun, Keep, Params, server_loop, init_params,
                                local_update)
from serbench.plugins import Defense
from serbench.seeds import client_seed

# A benchmark phones nowhere: no telemetry, no update check (read when flwr is imported).
os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")

try:
    import cloudpickle
    from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MessageType, \
        RecordDict
    from flwr.clientapp import ClientApp
    from flwr.serverapp import Grid, ServerApp
except ImportError as exc:
    raise SerbenchError(f"the Flower engines need {exc.name}: pip install 'serbench[flower]'") \
        from None

#: Seconds between polls of the SuperLink for replies and for nodes that went away.
POLL = 0.05


def row_keys(features: np.ndarray) -> np.ndarray:
    """A 64-bit fingerprint of each float32 row: how server and nodes name rows without
    exchanging them (a row's identity is its exact feature values)."""
    rows = np.ascontiguousarray(features, dtype=np.float32)
    return np.array([int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "little")
                     for r in rows], dtype=np.uint64)


def write_partition(path: Path, features: np.ndarray) -> None:
    """What one node holds: its feature rows and their fingerprints."""
    features = np.asarray(features, dtype=np.float32)
    np.savez(path, features=features, keys=row_keys(features))


@cache
def _partition(path: str) -> tuple[np.ndarray, np.ndarray]:
    """A node's partition, loaded once per process (Ray actors serve many messages)."""
    if not Path(path).is_file():
        raise SerbenchError(f"partition file {path} does not exist on this SuperNode")
    with np.load(path) as data:
        return data["features"], data["keys"]


def _partition_path(message: Message, context: Context) -> str:
    """Simulation: the server names the file every virtual node shares; deployment: the
    SuperNode's own ``--node-config data=...``."""
    named = str(message.content["config"]["data"])
    if named:
        return named
    if "data" not in context.node_config:
        raise SerbenchError("SuperNode started without --node-config \"data='PARTITION.npz'\"")
    return str(context.node_config["data"])


client_app = ClientApp()


@client_app.query()
def describe(message: Message, context: Context) -> Message:
    """Handshake: the fingerprints of the rows this node holds."""
    _, keys = _partition(_partition_path(message, context))
    return Message(RecordDict({"rows": ArrayRecord({"keys": Array(keys)})}), reply_to=message)


@client_app.train()
def train(message: Message, context: Context) -> Message:
    """One client's shared update: ``local_update`` on the rows the server names."""
    # One thread per client (one client per CPU): multi-threaded matmuls reorder float sums,
    # which Adam amplifies, so single-threaded updates are the reproducible ones.
    torch.set_num_threads(1)
    features, _ = _partition(_partition_path(message, context))
    content = message.content
    rows = content["rows"]
    x = torch.from_numpy(features[rows["positions"].numpy()])
    y = torch.from_numpy(rows["labels"].numpy())
    config = content["config"]
    update = local_update(dict(content["params"].to_torch_state_dict()), x, y,
                          FLConfig(**content["fl"]), int(config["seed"]),
                          pickle.loads(config["defense"]), rnd=int(config["round"]))
    return Message(RecordDict({"update": ArrayRecord.from_torch_state_dict(update)}),
                   reply_to=message)


def pickle_defense(defense: Defense | None) -> bytes:
    """The defense as it is now (calibrated), for the clients. A plugin from outside the
    serbench package, e.g. a ``file.py:Class`` under development, travels by value, since the
    processes that run clients cannot import it by name."""
    module = sys.modules[type(defense).__module__]
    by_value = defense is not None and not module.__name__.startswith("serbench.")
    if by_value:
        cloudpickle.register_pickle_by_value(module)
    try:
        return cloudpickle.dumps(defense)
    finally:
        if by_value:
            cloudpickle.unregister_pickle_by_value(module)


@dataclass
class FlowerJob:
    """Everything the ServerApp needs for one FL run; no features (nodes hold those)."""

    clients: list[Client]
    keys: list[np.ndarray]  # each client's training rows, as fingerprints, in order
    labels: list[np.ndarray]
    cfg: FLConfig
    seed: int
    init: Params
    defense: bytes
    record: tuple[str, ...]
    probe_rounds: frozenset[int]
    #: Simulation: the partition every virtual node holds; deployment: "" (each node's own).
    data: str = ""
    #: SuperNodes to wait for before placing clients.
    nodes: int = 1
    #: Seconds the placement, or one round, may wait for nodes and replies.
    timeout: float = 600.0


def make_job(x: np.ndarray, y: np.ndarray, clients: Sequence[Client], cfg: FLConfig, seed: int,
             *, init: Params | None, defense: Defense | None, record: Sequence[str],
             probe_rounds: Collection[int], **options: object) -> FlowerJob:
    """The job for ``run_federated``'s arguments (same defaults as the in-process engine)."""
    keys = row_keys(x)
    y = np.asarray(y, dtype=np.int64)
    return FlowerJob(list(clients), [keys[c.train] for c in clients], [y[c.train] for c in clients],
                     cfg, seed, init if init is not None else init_params(x.shape[1], cfg, seed),
                     pickle_defense(defense), tuple(record), frozenset(probe_rounds), **options)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[:limit] + "..."


def _exchange(grid: Grid, messages: dict[str, Message], timeout: float, what: str
              ) -> dict[str, Message]:
    """Send ``label -> message`` and wait for every reply. Fails with one line, never hangs:
    on an error reply, on a destination node that went offline, or after ``timeout`` s."""
    labels = list(messages)
    nodes = {label: messages[label].metadata.dst_node_id for label in labels}
    pushed = list(grid.push_messages(list(messages.values())))
    if len(pushed) != len(labels) or None in pushed:
        raise SerbenchError(f"{what}: the SuperLink refused {len(labels) - len(pushed)} of "
                            f"{len(labels)} messages")
    pending = dict(zip(pushed, labels))
    replies: dict[str, Message] = {}
    deadline = time.monotonic() + timeout
    while pending:
        for reply in grid.pull_messages(list(pending)):
            label = pending.pop(reply.metadata.reply_to_message_id)
            if reply.has_error():
                raise SerbenchError(f"{what}: {label} failed: {_one_line(reply.error.reason)}")
            replies[label] = reply
        if not pending:
            break
        online = set(grid.get_node_ids())
        gone = [label for label in pending.values() if nodes[label] not in online]
        if gone:
            raise SerbenchError(f"{what}: the SuperNode of {gone[0]} went offline")
        if time.monotonic() > deadline:
            raise SerbenchError(f"{what}: no reply for {next(iter(pending.values()))} "
                                f"within {timeout:g} s")
        time.sleep(POLL)
    return {label: replies[label] for label in labels}


def _config(job: FlowerJob, seed: int = 0, rnd: int = 0) -> ConfigRecord:
    return ConfigRecord({"seed": seed, "round": rnd, "defense": job.defense, "data": job.data})


def _place(grid: Grid, job: FlowerJob) -> list[tuple[int, np.ndarray]]:
    """Each client's node and its rows' positions there, once the nodes that joined hold every
    client's rows. Clients go to the least-loaded node holding them, so simulation spreads
    them over its virtual nodes and a deployment sends each to the node with its data."""
    deadline = time.monotonic() + job.timeout
    held: dict[int, dict[int, int]] = {}  # node -> fingerprint -> position
    while True:
        online = sorted(grid.get_node_ids())
        new = [n for n in online if n not in held]
        if len(online) >= job.nodes and new:
            query = {f"node {n}": Message(RecordDict({"config": _config(job)}), n,
                                          MessageType.QUERY) for n in new}
            for n, reply in zip(new, _exchange(grid, query, job.timeout, "handshake").values()):
                keys = reply.content["rows"]["keys"].numpy()
                held[n] = dict(zip(keys.tolist(), range(len(keys))))
        load = dict.fromkeys(held, 0)
        placement, missing = [], []
        for c, keys in zip(job.clients, job.keys):
            wanted = keys.tolist()
            candidates = [n for n in load if all(key in held[n] for key in wanted)]
            if not candidates:
                missing.append(c.cid)
                continue
            node = min(candidates, key=load.get)
            load[node] += 1
            placement.append((node, np.array([held[node][key] for key in wanted], dtype=np.int64)))
        if not missing and held:
            return placement
        if time.monotonic() > deadline:
            if len(online) < job.nodes or not held:
                raise SerbenchError(f"only {len(online)} of {job.nodes} SuperNode(s) joined "
                                    f"within {job.timeout:g} s")
            raise SerbenchError(f"none of the {len(held)} SuperNode(s) holds all training rows "
                                f"of client {missing[0]} ({len(missing)} client(s) unplaced "
                                f"after {job.timeout:g} s): give the SuperNodes partitions of "
                                f"this corpus and feature set (docs/cluster.md)")
        time.sleep(POLL)


def serve(grid: Grid, job: FlowerJob, on_round: Callable[[int], None] | None = None,
          on_global: Callable[[int, Params], None] | None = None,
          keep: Keep | None = None) -> FLRun:
    """The ServerApp's work for both engines: place clients, then run
    :func:`serbench.fl.engine.server_loop` with each round's clients trained over ``grid``."""
    placement = _place(grid, job)
    fl = ConfigRecord(asdict(job.cfg))

    def updates(params: Params, rnd: int, ks: Sequence[int]) -> list[Params]:
        arrays = ArrayRecord.from_torch_state_dict(params)
        messages = {}
        for k in ks:
            node, positions = placement[k]
            rows = ArrayRecord({"positions": Array(positions), "labels": Array(job.labels[k])})
            content = RecordDict({"params": arrays, "rows": rows, "fl": fl,
                                  "config": _config(job, client_seed(job.seed, rnd, k), rnd)})
            messages[f"client {job.clients[k].cid}"] = Message(content, node, MessageType.TRAIN,
                                                               group_id=str(rnd))
        replies = _exchange(grid, messages, job.timeout, f"round {rnd + 1}")
        return [dict(replies[label].content["update"].to_torch_state_dict()) for label in messages]

    return server_loop(updates, job.init, job.clients, job.cfg, job.seed, record=job.record,
                    probe_rounds=job.probe_rounds, on_round=on_round, on_global=on_global,
                    keep=keep)


server_app = ServerApp()


@server_app.main()
def deployed(grid: Grid, context: Context) -> None:
    """The deployment engine's ServerApp: reads the job that :mod:`serbench.fl.flower_deploy`
    wrote (run config ``job``), reports rounds done to ``<out>.progress``, and writes the run
    to ``out``, or its one-line error to ``<out>.error``."""
    out = Path(str(context.run_config["out"]))
    job = pickle.loads(Path(str(context.run_config["job"])).read_bytes())
    progress = out.with_suffix(".progress")
    done = 0

    def advance(n: int) -> None:
        nonlocal done
        done += n
        progress.write_text(str(done))

    try:
        run = serve(grid, job, advance)
    except SerbenchError as exc:
        out.with_suffix(".error").write_text(str(exc))
        raise
    partial = out.with_suffix(".partial")
    partial.write_bytes(pickle.dumps(run))
    partial.replace(out)
