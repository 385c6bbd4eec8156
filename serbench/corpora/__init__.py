"""Corpora: loaders that turn a corpus on disk into the utterance table of :mod:`.base`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from serbench.corpora.base import Corpus
from serbench.corpora.cremad import CremaD
from serbench.corpora.iemocap import Iemocap
from serbench.corpora.manifest import Manifest
from serbench.corpora.msp_improv import MspImprov
from serbench.corpora.ravdess import Ravdess
from serbench.corpora.synth import Synth
from serbench.errors import SerbenchError, unknown_name

CORPORA: dict[str, type[Corpus]] = {
    c.name: c for c in (Synth, Iemocap, MspImprov, CremaD, Ravdess, Manifest)
}


def get_corpus(name: str, root: str | Path | None = None, **options: Any) -> Corpus:
    """The loader for ``name`` with its options (e.g. ``subset="improvised"``)."""
    if name not in CORPORA:
        raise unknown_name("dataset", name, CORPORA)
    try:
        return CORPORA[name](root, **options)
    except TypeError as exc:
        raise SerbenchError(f"dataset {name!r}: invalid option(s) {sorted(options)} ({exc})") from None
