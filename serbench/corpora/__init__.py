"""Corpora: loaders that turn a corpus on disk into the utterance table of :mod:`.base`."""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_type_hints

from serbench.corpora.base import Corpus
from serbench.corpora.cremad import CremaD
from serbench.corpora.iemocap import Iemocap
from serbench.corpora.manifest import Manifest
from serbench.corpora.msp_improv import MspImprov
from serbench.corpora.ravdess import Ravdess
from serbench.corpora.synth import Synth
from serbench.errors import SerbenchError, unknown_name
from serbench.params import coerce

CORPORA: dict[str, type[Corpus]] = {
    c.name: c for c in (Synth, Iemocap, MspImprov, CremaD, Ravdess, Manifest)
}

#: Options every corpus takes (serbench.protocol.load_corpus applies them): emotion classes
#: kept (``classes=A,B``; ``classes=8`` is RAVDESS's and CREMA-D's own label map), renamed
#: (``map=OLD:NEW``), the real-audio null (``permute_gender=true``) and the linkability null
#: (``shuffle_speakers=true``).
SHARED_OPTIONS = ("classes", "map", "permute_gender", "shuffle_speakers")


def get_corpus(name: str, root: str | Path | None = None, **options: Any) -> Corpus:
    """The loader for ``name`` with its options (e.g. ``subset="improvised"``)."""
    if name not in CORPORA:
        raise unknown_name("dataset", name, CORPORA)
    cls = CORPORA[name]
    hints = {k: v for k, v in get_type_hints(cls.__init__).items() if k not in ("root", "return")}
    for key in options:
        if key not in hints:
            valid = dict.fromkeys([*hints, *SHARED_OPTIONS])
            raise SerbenchError(f"dataset {name!r} has no option {key!r}; valid options: "
                                f"{', '.join(valid)}")
    return cls(root, **{k: coerce(v, hints[k], f"dataset {name!r} option {k!r}")
                        for k, v in options.items()})
