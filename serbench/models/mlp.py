"""The reference FL SER model (fed-ser-leakage): MLP D -> 256 -> 128 -> classes."""

from __future__ import annotations

import torch
from torch import nn


class SERMLP(nn.Module):
    """Layers are named ``first``, ``second``, ``last`` so attacks can address each update.

    Dropout is an ``nn.Dropout`` module, so ``eval()`` disables it (the reference built it inside
    ``forward`` and left it on at evaluation).
    """

    layer_names = ("first", "second", "last")

    def __init__(self, d_in: int, n_classes: int = 4, hidden: tuple[int, int] = (256, 128),
                 dropout: float = 0.2) -> None:
        super().__init__()
        self.first = nn.Linear(d_in, hidden[0])
        self.second = nn.Linear(hidden[0], hidden[1])
        self.last = nn.Linear(hidden[1], n_classes)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.drop(torch.relu(self.first(x)))
        x = self.drop(torch.relu(self.second(x)))
        return self.last(x)
