"""A defense loaded from a file (``path.py:Class``), as one under development is: the Flower
engines must ship it to the processes that run clients."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from serbench.plugins import Defense, Surface, Tags


@dataclass
class Noisy(Defense):
    name: ClassVar[str] = "noisy"
    summary: ClassVar[str] = "test: Gaussian noise on every update"
    tags: ClassVar[Tags] = Tags(surfaces={Surface.UPDATE}, randomized=True)

    std: float = 0.01

    def privatize_update(self, update: dict[str, torch.Tensor], *,
                         generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {k: u + self.std * torch.randn(u.shape, generator=generator)
                for k, u in update.items()}
