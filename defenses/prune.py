"""Gradient pruning (Zhu, Liu and Han, "Deep leakage from gradients", NeurIPS 2019, §5): each
FL client shares only the fraction ``keep`` of each update tensor's entries largest in
magnitude and zeros the rest. DLG names it the most effective of the defenses it tried: with
more than 20% of the entries pruned its reconstructions were no longer recognisable. DLG's
attack reconstructs inputs; serbench asks whether pruning also hides the client's gender.

Deterministic (no randomness), so the adaptive attacker simulates it exactly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from serbench.errors import SerbenchError
from serbench.plugins import Defense, Surface, Tags


@dataclass
class Prune(Defense):
    name: ClassVar[str] = "prune"
    summary: ClassVar[str] = ("gradient pruning (DLG): each client shares only the top-k "
                              "fraction of each update tensor by magnitude")
    tags: ClassVar[Tags] = Tags(surfaces={Surface.UPDATE}, strength=(("keep", "k"),))

    #: k: the fraction of each update tensor's entries a client shares (the largest in
    #: magnitude; at least one per tensor); the others are sent as zeros. The default prunes
    #: 30%, past the 20% at which DLG's reconstructions failed.
    keep: float = 0.7

    def validate(self) -> None:
        if not 0 < self.keep <= 1:
            raise SerbenchError(f"defense 'prune': keep must be in (0, 1], got {self.keep}")

    def privatize_update(self, update: dict[str, torch.Tensor], *,
                         generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {key: self._top(u) for key, u in update.items()}

    def _top(self, u: torch.Tensor) -> torch.Tensor:
        """``u`` with all but its ``keep`` fraction of largest-magnitude entries zeroed: exactly
        that many (``topk``'s indices, so ties at the threshold do not keep more)."""
        k = max(1, round(self.keep * u.numel()))
        if k >= u.numel():
            return u
        flat = u.flatten()
        kept = torch.zeros_like(flat)
        index = flat.abs().topk(k).indices
        kept[index] = flat[index]
        return kept.view_as(u)
