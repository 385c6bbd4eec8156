"""The FL attack's view of recorded updates: per-client averages of n updates, the inverted
first-layer updates as pseudo-layers of a log, and the training sets the attack models read
(single updates plus their averages, standardised with shadow statistics)."""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

from serbench.attacks.update_inversion import invert, invert_log
from serbench.fl.engine import Params, UpdateLog, check_memory

#: Per recorded tensor, the shadow mean and std it is standardised with.
Stats = list[tuple[torch.Tensor, torch.Tensor]]


def client_chunks(log: UpdateLog, n: int | None) -> tuple[list[np.ndarray], np.ndarray, list[str]]:
    """Each client's consecutive chunks of ``n`` of its updates (``None`` = all): a (count, n)
    array of log rows per client, with each chunk's gender and client.

    A client with fewer than ``n`` updates contributes one chunk of all it has; a last
    incomplete chunk is dropped.
    """
    clients = np.asarray(log.clients)
    chunks: list[np.ndarray] = []
    genders, owners = [], []
    for cid in dict.fromkeys(log.clients):
        rows = np.flatnonzero(clients == cid)
        size = len(rows) if n is None else min(n, len(rows))
        count = len(rows) // size
        chunks.append(rows[:count * size].reshape(count, size))
        genders += [log.genders[rows[0]]] * count
        owners += [cid] * count
    return chunks, np.asarray(genders), owners


def mean_chunks(layer: torch.Tensor, chunks: list[np.ndarray], out: torch.Tensor) -> torch.Tensor:
    """``out[i]`` = the mean of ``layer``'s rows in the i-th chunk (over all chunk arrays in
    order), one client at a time: no copy of the whole layer."""
    start = 0
    for c in chunks:
        rows = layer[torch.as_tensor(c.ravel())].view(*c.shape, *layer.shape[1:])
        torch.mean(rows, 1, out=out[start:start + len(c)])
        start += len(c)
    return out


def average_updates(log: UpdateLog, names: tuple[str, str], n: int | None
                    ) -> tuple[list[torch.Tensor], np.ndarray, list[str]]:
    """Average each client's updates over consecutive chunks of ``n`` rounds (``None`` = all):
    see :func:`client_chunks`."""
    chunks, genders, owners = client_chunks(log, n)
    total = sum(len(c) for c in chunks)
    stacks = [mean_chunks(log.layers[name], chunks,
                          torch.empty(total, *log.layers[name].shape[1:])) for name in names]
    return stacks, genders, owners


#: Pseudo-layers of an :class:`UpdateLog` holding the inverted first-layer updates (``phi``,
#: ``psi`` of :func:`attacks.update_inversion.invert`), so :func:`average_updates` averages them.
INVERTED = ("inversion.phi", "inversion.psi")
def add_inverted(run_log: UpdateLog, bases: dict[int, torch.Tensor]) -> None:
    """Add :data:`INVERTED` to ``run_log``: each first-layer update mapped with its round's
    basis (once per log; deployments are shared by the attack modes)."""
    if INVERTED[0] not in run_log.layers:
        phi, psi = invert_log(run_log.layers["first.weight"], run_log.layers["first.bias"],
                              run_log.rounds, bases)
        run_log.layers[INVERTED[0]], run_log.layers[INVERTED[1]] = phi, psi


def keep_inverted(update: Params, basis: torch.Tensor) -> Params:
    """What the server stores of a first-layer update when the inversion is the only candidate:
    :data:`INVERTED`, 4 x D numbers instead of 256 x D (an :attr:`FLRecipe.keep`)."""
    phi, psi = invert(update["first.weight"][None], update["first.bias"][None], basis)
    return {INVERTED[0]: phi[0], INVERTED[1]: psi[0]}


class TrainingSet(NamedTuple):
    """An attack model's training rows (:func:`training_set`)."""

    #: (rows, features): each row the update's tensors flattened and concatenated, as
    #: :class:`LinearUpdateModel` reads it
    flat: torch.Tensor
    inputs: list[torch.Tensor]  #: views of ``flat``, one per recorded tensor, in its shape
    genders: np.ndarray
    speakers: np.ndarray
    groups: np.ndarray  #: index of the row's averaging size (0: single updates)


def training_set(log: UpdateLog, names: tuple[str, str], sizes: list[int | None],
                 stats: Stats | None = None) -> TrainingSet:
    """``names``' single updates plus their averages over each averaging size n != 1 of
    ``sizes``,
    standardised with ``stats`` where given, with each row's gender, speaker and group (the
    index of its averaging size; 0 = single). Built in one buffer, client by client: the
    memory of the set itself plus one client's updates."""
    speaker_of = dict(zip(log.clients, log.speakers))
    parts = [([], log.genders, np.asarray(log.speakers))]  # the single updates
    for n in sizes:
        if n != 1:
            chunks, genders, owners = client_chunks(log, n)
            parts.append((chunks, genders, np.asarray([speaker_of[o] for o in owners])))
    total = sum(len(p[1]) for p in parts)
    shapes = [log.layers[name].shape[1:] for name in names]
    width = sum(math.prod(shape) for shape in shapes)
    if stats is not None:  # the weight-space set: its fits copy the training rows once more
        check_memory(total * width * 4 * 2,
                     f"the attack's training set ({total} rows of {width * 4 / 2**20:.2f} MiB, "
                     f"and a copy of its training rows)",
                     "record fewer shadow updates (--attack-param shadow_probe_every=16 or "
                     "rounds=100) or average fewer sizes (--attack-param averaging=1,all)")
    flat = torch.empty(total, width)
    inputs, offset = [], 0
    for name, shape, stat in zip(names, shapes, stats or [None] * len(names)):
        size = math.prod(shape)
        view = flat[:, offset:offset + size].view(total, *shape)
        offset += size
        layer = log.layers[name]
        view[:len(layer)] = layer
        start = len(layer)
        for chunks, genders, _ in parts[1:]:
            mean_chunks(layer, chunks, view[start:start + len(genders)])
            start += len(genders)
        if stat is not None:
            view.sub_(stat[0]).div_(stat[1])
        inputs.append(view)
    groups = np.concatenate([np.full(len(p[1]), i) for i, p in enumerate(parts)])
    return TrainingSet(flat, inputs, np.concatenate([p[1] for p in parts]),
                        np.concatenate([p[2] for p in parts]), groups)


def weight_space(log: UpdateLog, names: tuple[str, str], sizes: list[int | None],
                 stats: Stats | None = None) -> tuple[TrainingSet, Stats]:
    """The log's recorded layers ``names`` as a training set standardised with ``stats`` (the
    log's own by default); the raw layers are dropped from the log once copied."""
    stats = stats or [(t.mean(0), t.std(0) + 1e-8) for t in (log.layers[n] for n in names)]
    data = training_set(log, names, sizes, stats)
    for name in names:
        del log.layers[name]
    return data, stats


def stacked(parts: list[TrainingSet]) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Several training sets' inputs, tensor by tensor, and their genders, in order."""
    return ([torch.cat(t) for t in zip(*(p.inputs for p in parts))],
            torch.as_tensor(np.concatenate([p.genders for p in parts])))


def normalise(tensors: list[torch.Tensor], stats: Stats) -> list[torch.Tensor]:
    return [(t - m) / s for t, (m, s) in zip(tensors, stats)]
