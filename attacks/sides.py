"""Which speakers each party of a split-computing fold holds (intercept, the input attacks).

Sides: "target" (T's training speakers: T trains on them, and so do the worst and s2
attackers), "shadow" (s1, s3, s4 attackers) and "test" (the fold's speakers, the only ones
scored). The attacker's sides transmit through ``ctx.shadow_defense`` (what it simulates), the
test side through ``ctx.defense`` (what T deploys).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from serbench.context import EvalContext
from serbench.corpora.data import CorpusData
from serbench.metrics import emotion_classes
from serbench.plugins import Defense


class FoldSides:
    """One fold's sides: per side, its corpus, rows and the defense its transmissions pass."""

    def __init__(self, ctx: EvalContext, fold: int) -> None:
        self.ctx, self.fold = ctx, fold
        self.classes = emotion_classes(ctx.target.table["emotion"])
        in_fold = (ctx.target.table["fold"] == fold).to_numpy()
        self.sides: dict[str, tuple[CorpusData, np.ndarray, Defense]] = {
            "target": (ctx.target, np.flatnonzero(~in_fold), ctx.shadow_defense),
            "test": (ctx.target, np.flatnonzero(in_fold), ctx.defense)}
        if ctx.shadow is not None:
            self.sides["shadow"] = (ctx.shadow, np.arange(len(ctx.shadow.table)),
                                    ctx.shadow_defense)

    def table(self, side: str) -> pd.DataFrame:
        data, rows, _ = self.sides[side]
        return data.table.iloc[rows]
