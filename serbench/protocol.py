"""The standard protocol's data side: the target corpus, the attacker's shadow speakers and the
folds (corpora.md §6). Shadow speakers never overlap the target's."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from serbench.corpora import get_corpus
from serbench.corpora.data import CorpusData
from serbench.errors import SerbenchError
from serbench.metrics import emotion_classes
from serbench.params import coerce
from serbench.progress import NullReporter, Reporter
from serbench.seeds import stream

DISJOINT = "disjoint"
NO_SHADOW = "none"  # the attacker has no data of its own (attacks that need some say so)


def load_corpus(name: str, root: str | Path | None, options: dict[str, Any] | None = None,
                reporter: Reporter | None = None, seed: int = 0, *,
                check_folds: bool = True) -> CorpusData:
    """Load ``name`` and apply the options every corpus shares (:data:`SHARED_OPTIONS`, applied
    here once rather than in each loader): ``map=OLD:NEW,...`` renames
    (or merges) emotion classes, then ``classes=A,B,...`` keeps those (named after mapping),
    ``permute_gender=true`` relabels speakers' genders (seeded by ``seed``; see
    :func:`permute_gender`) and ``shuffle_speakers=true`` shuffles speaker labels within each
    gender (:func:`shuffle_speakers`). The classes left must number at least two, each (when
    ``check_folds``: a target's folds matter, a shadow corpus's do not) with at least one
    utterance per fold."""
    options = dict(options or {})
    mapping = _mapping(options.pop("map", None))
    kept = options.pop("classes", None)
    if kept is not None and _is_integer(kept):
        options["classes"] = kept  # the loader's own label map (RAVDESS, CREMA-D: classes=8)
        kept = None
    kept = _names(kept, "classes") if kept is not None else None
    permute = coerce(options.pop("permute_gender", False), bool,
                     f"dataset {name!r} option 'permute_gender'")
    shuffle = coerce(options.pop("shuffle_speakers", False), bool,
                     f"dataset {name!r} option 'shuffle_speakers'")
    corpus = get_corpus(name, root, **options)
    table = corpus.load()
    wanted = set(mapping) | (set(kept or ()) - set(mapping.values()))
    if wanted - set(table["emotion"]) and corpus.all_labels and "classes" not in options:
        # Names the default label map drops (RAVDESS's calm): load every labelled class.
        corpus = get_corpus(name, root, **options, **corpus.all_labels)
        table = corpus.load()
    table = select_classes(table, mapping, kept, f"dataset {name!r}", check_folds)
    if permute:
        table = permute_gender(table, seed)
    if shuffle:
        table = shuffle_speakers(table, seed)
    return CorpusData(name, table, {corpus.name: corpus.clients_per_speaker},
                      reporter or NullReporter())


def select_classes(table: pd.DataFrame, mapping: dict[str, str], kept: Sequence[str] | None,
                   what: str, check_folds: bool = True) -> pd.DataFrame:
    """``table`` with its classes renamed by ``mapping`` and cut to ``kept``, checked: names
    that match no class, a single class, and a class too rare for every fold are one-line
    errors naming them."""
    present = emotion_classes(table["emotion"])
    unknown = [c for c in mapping if c not in present]
    if unknown:
        raise SerbenchError(f"{what}: map= names unknown class(es) {', '.join(map(repr, unknown))}"
                            f"; its classes: {', '.join(present)}")
    table = table.assign(emotion=table["emotion"].map(lambda e: mapping.get(e, e)))
    if kept is not None:
        present = emotion_classes(table["emotion"])
        unknown = [c for c in kept if c not in present]
        if unknown:
            raise SerbenchError(f"{what}: classes= names unknown class(es) "
                                f"{', '.join(map(repr, unknown))}; its classes"
                                f"{' after map=' if mapping else ''}: {', '.join(present)}")
        table = table[table["emotion"].isin(kept)].reset_index(drop=True)
    counts = table["emotion"].value_counts()
    if len(counts) < 2:
        raise SerbenchError(f"{what} has {len(counts)} emotion class(es) "
                            f"({', '.join(map(repr, counts.index))}); serbench needs at least two")
    n_folds = table["fold"].nunique() if check_folds else 1
    rare = [c for c in emotion_classes(counts.index) if counts[c] < n_folds]
    if rare:
        raise SerbenchError(
            f"{what}: class(es) {', '.join(f'{c!r} ({counts[c]} utterances)' for c in rare)} "
            f"fewer than its {n_folds} folds; drop with --dataset-option classes=... or merge "
            f"with map=OLD:NEW")
    return table


def class_counts(table: pd.DataFrame) -> dict[str, int]:
    """Utterances per emotion class, in code order (what config.json records)."""
    counts = table["emotion"].value_counts()
    return {c: int(counts[c]) for c in emotion_classes(table["emotion"])}


#: Separates the permutation's random stream from every other use of the run seed.
_PERMUTE_STREAM = 0x6E756C6C  # "null"
_SHUFFLE_STREAM = 0x73687566  # "shuf"


def shuffle_speakers(table: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The linkability null (SPEC §8): speaker labels shuffled across the utterances of each
    gender (seeded), audio untouched, so a speaker-verification EER on it is at chance. Folds
    stay with the utterances, so a label's utterances may span folds (fine for ``asv``, whose
    trials follow the utterances; other attacks' folds no longer hold whole speakers)."""
    rng = stream(seed, _SHUFFLE_STREAM)
    table = table.copy()
    for _, rows in sorted(table.groupby("gender").groups.items()):
        table.loc[rows, "speaker"] = rng.permutation(table.loc[rows, "speaker"].to_numpy())
    return table


def permute_gender(table: pd.DataFrame, seed: int) -> pd.DataFrame:
    """The real-audio null corpus (SPEC §8): gender labels permuted across speakers, audio
    untouched, so any leakage measured on it comes from the pipeline, not the voice.

    k women are relabelled men and k men women (label counts are kept), with
    k = round(women × men / speakers), the count that makes label independent of voice: with as
    many women as men exactly half the speakers keep their label. Swaps pair a woman and a man
    of the same fold where they can, dealt over the folds in seeded order, so each fold keeps
    its label counts and is itself close to half in agreement. The original label is kept in
    a ``voice_gender`` column.
    """
    rng = stream(seed, _PERMUTE_STREAM)
    speakers = table.drop_duplicates("speaker").set_index("speaker").sort_index()
    n = speakers["gender"].value_counts()
    women, men = int(n.get("F", 0)), int(n.get("M", 0))
    if not women or not men:
        raise SerbenchError("permute_gender needs speakers of both genders")
    k = int(women * men / (women + men) + 0.5)
    pools = []  # per fold, in seeded order: its women and its men, each in seeded order
    for fold in rng.permutation(sorted(speakers["fold"].unique())):
        group = speakers[speakers["fold"] == fold]
        pools.append([list(rng.permutation(sorted(group.index[group["gender"] == g])))
                      for g in ("F", "M")])
    # Rank r of every fold in turn: its r-th woman and r-th man swap while both exist.
    pairs = [(f[r], m[r]) for r in range(len(speakers)) for f, m in pools
             if r < min(len(f), len(m))]
    chosen = pairs[:k]
    if len(chosen) < k:  # folds too unbalanced: pair the rest across folds
        used = {s for pair in chosen for s in pair}
        rest = [[s for pool in pools for s in pool[i] if s not in used] for i in (0, 1)]
        chosen += list(zip(rest[0], rest[1]))[: k - len(chosen)]
    swapped = {s: ("M" if speakers.at[s, "gender"] == "F" else "F")
               for pair in chosen for s in pair}
    label = table["speaker"].map(swapped).fillna(table["gender"])
    return table.assign(voice_gender=table["gender"], gender=label)


def gender_permutation(*tables: pd.DataFrame) -> dict[str, Any] | None:
    """What config.json records of a permuted corpus: the relabelled speakers (voice, label)
    and how many speakers keep their voice's label; None if no table was permuted."""
    frames = [t for t in tables if "voice_gender" in t]
    if not frames:
        return None
    speakers = pd.concat(frames).drop_duplicates("speaker").sort_values("speaker")
    agree = speakers["gender"] == speakers["voice_gender"]
    return {"speakers": len(speakers), "agree": int(agree.sum()),
            "relabelled": {s: [v, g] for s, v, g in speakers.loc[
                ~agree, ["speaker", "voice_gender", "gender"]].itertuples(index=False)}}


def _mapping(value: Any) -> dict[str, str]:
    """``map=OLD:NEW,...`` (or a TOML table) as a dict; a malformed pair is an error."""
    if value is None:
        return {}
    if isinstance(value, dict):
        pairs = [(str(k), str(v)) for k, v in value.items()]
    else:
        pairs = [item.partition(":")[::2] for item in _names(value, "map")]
        if any(not old.strip() or not new.strip() for old, new in pairs):
            raise SerbenchError(f"dataset option map={value!r}: expected OLD:NEW pairs, "
                                f"comma-separated")
    return {old.strip(): new.strip() for old, new in pairs}


def _names(value: Any, option: str) -> list[str]:
    """A comma-separated string (or a list, from a config file) as stripped names."""
    items = value if isinstance(value, list | tuple) else str(value).split(",")
    names = [str(item).strip() for item in items]
    if not all(names):
        raise SerbenchError(f"dataset option {option}={value!r}: an empty name")
    return names


def _is_integer(value: Any) -> bool:
    return (isinstance(value, int) and not isinstance(value, bool)) or (
        isinstance(value, str) and value.strip().isdigit())


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
    return data.subset(~is_shadow, data.name), data.subset(is_shadow, f"{data.name} (shadow)")


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
        data = load_corpus(name, roots[i] if roots else None, reporter=reporter,
                           check_folds=False)
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
