"""<One line: what the defense does, and the paper it comes from.>

A starting point for a serbench defense (docs/writing-a-defense.md). Copy this file, rename the
class, keep the hooks of the surfaces your defense acts on and delete the others (each one here
leaves its input unchanged, which is also what the base class does). Evaluate it with

    serbench eval --attack fedavg --defense path/to/this_file.py:MyDefense --param strength=0.5
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from serbench.errors import SerbenchError
from serbench.plugins import Defense, Surface, Tags


@dataclass
class MyDefense(Defense):
    #: The name the leaderboard shows, and one line for `serbench list defenses`.
    name: ClassVar[str] = "my-defense"
    summary: ClassVar[str] = "<one line for `serbench list defenses`>"
    #: What the defense does, in one record (serbench.plugins.Tags): ``surfaces``, where it
    #: acts: Surface.UPDATE (FL updates), Surface.REPRESENTATION (the hidden layer a split model
    #: transmits), Surface.INPUT (the model input); a hook may act only on a declared surface
    #: (`serbench check-defense` fails one that does more). ``randomized=True`` when a hook
    #: draws random numbers at test time (SPEC §3.3: scored by EOT attacks); ``strength``, the
    #: parameter a family of entries sweeps, with its symbol on the leaderboard.
    tags: ClassVar[Tags] = Tags(surfaces={Surface.UPDATE, Surface.REPRESENTATION},
                                strength=(("strength", "s"),))

    # Parameters: dataclass fields with defaults, set with --param KEY=VALUE and recorded in
    # every run's config.json and leaderboard entry.
    strength: float = 0.5

    def validate(self) -> None:
        """One line per invalid value: the command line prints it without a traceback."""
        if not 0 <= self.strength <= 1:
            raise SerbenchError(f"defense {self.name!r}: strength must be in [0, 1], "
                                f"got {self.strength}")

    def privatize_update(self, update: dict[str, torch.Tensor], *,
                         generator: torch.Generator) -> dict[str, torch.Tensor]:
        """UPDATE: a client's update (parameter name -> tensor) before the server sees it.
        Draw randomness only from ``generator``: the same seed must give the same numbers."""
        return update

    def transform_representation(self, h: torch.Tensor, *,
                                 generator: torch.Generator) -> torch.Tensor:
        """REPRESENTATION: the hidden layer h_T the device transmits (batch first)."""
        return h
