"""Released audio (SPEC surface 4): corpus audio as an AUDIO-surface defense transforms it on
the device, before features, speaker embeddings or training read it.

Why a value of its own: every cache that holds what was computed from audio (the feature
store, the speaker embeddings) must key transformed audio apart from the original and from
another defense's. A :class:`Release` names the transformation by the defense's name, its
parameters and, for a randomised defense, the seed its per-utterance draws come from; each
utterance's generator is seeded by that seed and the source file's content digest
(:func:`serbench.seeds.stable_seed`), so the same release of the same file is the same audio,
and its cache entries can be keyed by the source file's digest.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from serbench.errors import SerbenchError
from serbench.seeds import stable_seed

if TYPE_CHECKING:
    from serbench.plugins import Defense


@dataclass(frozen=True)
class Release:
    """One defense's transformation of audio, seeded: picklable (extraction workers apply it)."""

    defense: Defense
    #: The seed of the per-utterance draws (recorded in :attr:`key` when the defense is
    #: randomised: another seed is other audio).
    seed: int

    @property
    def key(self) -> str:
        """The cache key part: name, a digest of the parameters and, if randomised, the seed."""
        params = json.dumps(self.defense.params(), sort_keys=True, default=str)
        digest = hashlib.sha1(params.encode()).hexdigest()[:10]
        seed = f"-seed{self.seed}" if self.defense.tags.randomized else ""
        return f"{self.defense.name}-{digest}{seed}"

    def apply(self, wave: np.ndarray, sample_rate: int, digest: str) -> np.ndarray:
        """The released version of ``wave`` (whose source file's content digest is ``digest``);
        a transform that changes the length is an error, as ``check-defense`` says."""
        generator = torch.Generator().manual_seed(stable_seed(self.seed, "audio", digest))
        out = np.asarray(self.defense.transform_audio(wave, sample_rate, generator=generator),
                         dtype=np.float32)
        if out.shape != wave.shape or not np.isfinite(out).all():
            raise SerbenchError(f"defense {self.defense.name!r}: transform_audio returned "
                                f"{out.shape} (finite: {np.isfinite(out).all()}) for audio of "
                                f"{wave.shape} (see `serbench check-defense`)")
        return out
