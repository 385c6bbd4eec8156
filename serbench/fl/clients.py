"""FL clients formed by each corpus's rule (SPEC §3.2)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Client:
    """One FL participant: the rows (indices into the feature matrix) it trains and validates on."""

    cid: str
    speaker: str
    gender: str
    train: np.ndarray
    val: np.ndarray

    @property
    def n_train(self) -> int:
        return len(self.train)


def make_clients(table: pd.DataFrame, clients_per_speaker: Mapping[str, int], seed: int,
                 train_fraction: float = 0.8) -> list[Client]:
    """Split each speaker's rows into ``clients_per_speaker[corpus]`` clients (default 1), each
    keeping ``train_fraction`` for local training and the rest for local validation.

    ``table`` rows are addressed by position (its index must be 0..n-1 in feature order).
    """
    rng = np.random.default_rng(seed)
    clients = []
    for speaker, rows in table.groupby("speaker", sort=True).indices.items():
        rows = rng.permutation(rows)
        gender = table["gender"].iloc[rows[0]]
        parts = clients_per_speaker.get(table["corpus"].iloc[rows[0]], 1)
        for part, chunk in enumerate(np.array_split(rows, min(parts, len(rows)))):
            n_train = max(1, int(round(train_fraction * len(chunk))))
            clients.append(Client(f"{speaker}/{part}", str(speaker), str(gender),
                                  np.sort(chunk[:n_train]), np.sort(chunk[n_train:])))
    return clients


def schedule(n_clients: int, per_round: int, rounds: int, seed: int) -> np.ndarray:
    """The clients (indices) the server samples in each round, ``(rounds, per_round)``: a fixed
    number without replacement per round, seeded. The server draws it, so it knows every
    client's participations, and DP accounting against it uses them (SPEC §4)."""
    rng = np.random.default_rng(seed)
    return np.stack([np.sort(rng.choice(n_clients, per_round, replace=False))
                     for _ in range(rounds)]).astype(np.int64)


def most_participations(chosen: np.ndarray, n_clients: int, probe_rounds: int = 0) -> int:
    """The most rounds any client's update reaches the server: sampled rounds, plus the probe
    rounds in which every client shares one."""
    return int(np.bincount(chosen.ravel(), minlength=n_clients).max()) + probe_rounds
