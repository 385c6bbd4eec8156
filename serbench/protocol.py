"""The standard protocol's data side: the target corpus, the attacker's shadow speakers and the
folds (corpora.md §6). Shadow speakers never overlap the target's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serbench.context import CorpusData
from serbench.corpora import get_corpus
from serbench.errors import SerbenchError
from serbench.progress import NullReporter, Reporter

DISJOINT = "disjoint"
NO_SHADOW = "none"  # the attacker has no data of its own (attacks that need some say so)


def load_corpus(name: str, root: str | Path | None, options: dict[str, Any] | None = None,
                reporter: Reporter | None = None) -> CorpusData:
    corpus = get_corpus(name, root, **(options or {}))
    return CorpusData(name, corpus.load(), {corpus.name: corpus.clients_per_speaker},
                      reporter or NullReporter())


def split_disjoint(data: CorpusData, seed: int, fraction: float = 0.5
                   ) -> tuple[CorpusData, CorpusData]:
    """Reserve a gender-stratified ``fraction`` of the speakers for the attacker's shadow data;
    the target keeps the rest, with its standard folds. Speakers sharing a ``pair`` value (the
    null corpus's twins) are kept together."""
    rng = np.random.default_rng(seed)
    speakers = data.table.drop_duplicates("speaker").sort_values("speaker")
    shadow: list[str] = []
    if "pair" in data.table:  # twin speakers (the null corpus) stay on the same side
        pairs = rng.permutation(np.unique(speakers["pair"]))
        chosen = pairs[: int(round(fraction * len(pairs)))]
        shadow = list(speakers.loc[speakers["pair"].isin(chosen), "speaker"])
    else:
        for _, group in speakers.groupby("gender"):
            spk = rng.permutation(group["speaker"].to_numpy())
            shadow.extend(spk[: int(round(fraction * len(spk)))])
    is_shadow = data.table["speaker"].isin(shadow).to_numpy()
    if is_shadow.all() or not is_shadow.any() or data.table.loc[is_shadow, "gender"].nunique() < 2:
        raise SerbenchError(f"dataset {data.name!r} has too few speakers of each gender to split "
                            f"into target and shadow; give --shadow with another dataset")
    return _part(data, ~is_shadow, data.name), _part(data, is_shadow, f"{data.name} (shadow)")


def _part(data: CorpusData, mask: np.ndarray, name: str) -> CorpusData:
    part = CorpusData(name, data.table[mask].reset_index(drop=True), data.clients_per_speaker,
                      data.reporter)
    # Features are per-speaker normalised, so a row subset of the parent's is exact.
    for key, values in data._features.items():  # noqa: SLF001
        part._features[key] = values[mask] if isinstance(values, np.ndarray) else [  # noqa: SLF001
            v for v, m in zip(values, mask) if m]
    return part


def load_shadow(names: Sequence[str], roots: Sequence[str | None], target: str,
                reporter: Reporter | None = None) -> CorpusData:
    """Concatenate other corpora as shadow data (speaker ids prefixed with the corpus)."""
    if target in names:
        raise SerbenchError(f"--shadow {target} is the target dataset itself; use --shadow "
                            f"{DISJOINT} for disjoint speakers of the same corpus")
    if len(roots) not in (0, len(names)):
        raise SerbenchError(f"--shadow names {len(names)} dataset(s) but --shadow-root gives "
                            f"{len(roots)} root(s)")
    parts, per_speaker = [], {}
    for i, name in enumerate(names):
        data = load_corpus(name, roots[i] if roots else None, reporter=reporter)
        parts.append(data.table.assign(speaker=name + ":" + data.table["speaker"]))
        per_speaker |= data.clients_per_speaker
    table = pd.concat(parts, ignore_index=True)
    return CorpusData("+".join(names), table, per_speaker, reporter or NullReporter())


def select_folds(table: pd.DataFrame, folds: Sequence[int] | None) -> list[int]:
    present = sorted(int(f) for f in table["fold"].unique())
    if folds is None:
        return present
    unknown = sorted(set(folds) - set(present))
    if unknown:
        raise SerbenchError(f"fold(s) {unknown} not in the target data; valid folds: "
                            f"{', '.join(map(str, present))}")
    return sorted(folds)
