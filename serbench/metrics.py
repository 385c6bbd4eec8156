"""Emotion labels: a corpus's classes and their integer codes (statistics: serbench.scoring)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from serbench.errors import SerbenchError

#: The standard class names in serbench's canonical order: the 4-class map first, so a
#: standard class has the same code on every corpus (and cross-corpus shadow data lines up).
EMOTION_ORDER = ("neutral", "happy", "sad", "angry", "calm", "fearful", "disgust", "surprised")


def emotion_classes(emotions: Iterable[str]) -> tuple[str, ...]:
    """The classes of a corpus, whatever strings its rows hold: the standard names present in
    :data:`EMOTION_ORDER`'s order, then any other names sorted. The order depends only on the
    set of names, never on row order, so a class's code is the same in every run."""
    present = set(emotions)
    standard = tuple(e for e in EMOTION_ORDER if e in present)
    return standard + tuple(sorted(present - set(EMOTION_ORDER)))


def emotion_labels(emotions: pd.Series, classes: Sequence[str], *,
                   deal_others: bool = False) -> np.ndarray:
    """Integer codes of ``emotions`` in ``classes``.

    A name outside ``classes`` is an error naming it, unless ``deal_others``: then a generic
    attacker's shadow data with its own label set (another corpus) still trains a model with
    the target's ``len(classes)`` outputs. Shared names keep the target's code; the others,
    sorted, are dealt round robin over the codes left free (over all codes if none is free).
    Which output a foreign class takes is arbitrary; the attacker needs the training dynamics,
    not the meaning of the labels.
    """
    codes = {c: i for i, c in enumerate(classes)}
    missing = sorted(set(emotions) - set(codes))
    if missing and not deal_others:
        raise SerbenchError(f"emotion class(es) {', '.join(map(repr, missing))} not among the "
                            f"target's classes {', '.join(classes)}: predicting emotion on both "
                            f"sides (the application-aware attacker) needs shared classes; align "
                            f"the target's with --dataset-option map=OLD:NEW or classes=A,B,... "
                            f"or attack with generic attackers only")
    free = [i for c, i in codes.items() if c not in set(emotions)] or list(codes.values())
    codes |= {name: free[k % len(free)] for k, name in enumerate(missing)}
    return emotions.map(codes).to_numpy(dtype=np.int64)
