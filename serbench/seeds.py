"""Every seed a run derives from its ``--seed``, in one place: each step's randomness is a pure
function of the run seed and the step's name or indices, so no two steps share a stream by
accident and a re-run on another machine draws the same numbers.

Three forms, each for a reason: :func:`stable_seed` names a step by strings (Python's
``hash()`` of a string changes per process, crc32 does not); :func:`client_seed` and
:func:`stream` spread integer paths with NumPy's ``SeedSequence``; the FL runs' seeds
(:func:`target_run_seed`, :func:`shadow_run_seeds`) are offsets of the run seed. Those
offsets predate this module and keep their arithmetic, because the committed leaderboard
entries were made with them and ``serbench leaderboard verify`` re-runs them.
"""

from __future__ import annotations

import zlib

import numpy as np

#: The shadow FL runs' offset from the run seed (a prime, far from the fold offsets).
SHADOW_OFFSET = 7919
#: The offset of the extra shadow runs' initialisations (run k > 0 starts from seed + 1000 + k).
SHADOW_INIT_OFFSET = 1000


def stable_seed(*parts: object) -> int:
    """The seed of one named step, e.g. ``stable_seed(seed, fold, "target", family)``."""
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


def client_seed(seed: int, rnd: int, k: int) -> int:
    """Client ``k``'s seed in round ``rnd`` of the FL run seeded ``seed``: engines that run
    clients elsewhere (Flower) agree on it."""
    return int(np.random.SeedSequence([seed, rnd, int(k)]).generate_state(1)[0])


def stream(seed: int, *path: int) -> np.random.Generator:
    """A NumPy generator for the integer ``path`` under ``seed`` (e.g. a synthetic speaker's
    voice, one utterance, the gender permutation)."""
    return np.random.default_rng([seed, *path])


def target_run_seed(seed: int, fold: int) -> int:
    """The target FL run of ``fold`` (client sampling and local training); its initial model
    is seeded with the run seed itself, which the server knows."""
    return seed + fold


def shadow_run_seeds(seed: int, run: int) -> tuple[int, int]:
    """(run seed, initialisation seed) of the attacker's shadow FL run number ``run``: the
    first starts from the server's initialisation, the others from their own."""
    init = seed if run == 0 else seed + SHADOW_INIT_OFFSET + run
    return seed + SHADOW_OFFSET + run, init


def release_seed(seed: int, who: str) -> int:
    """The seed of an AUDIO-surface defense's per-utterance draws: the device's release
    (``who="device"``) and the attacker's own runs of the public defense (``"attacker"``),
    which never share the device's draws."""
    return stable_seed(seed, "release", who)
