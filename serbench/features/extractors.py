"""Feature extractors by name: openSMILE functionals / LLDs and log-mel.

Each extractor maps a mono 16 kHz waveform to a float32 array: functionals give one vector
per utterance (the FL attacks' input), LLDs and log-mel a (frames, dims) sequence. This module
imports no torch at top level so the extraction worker processes start quickly.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from importlib.metadata import version

import numpy as np

from serbench.errors import unknown_name


@dataclass(frozen=True)
class FeatureSpec:
    """What to compute; ``key`` names the cache so changed parameters never reuse old arrays."""

    name: str
    kind: str  # "functionals" (one vector) or "sequence" (frames x dims)
    summary: str
    backend: str  # "opensmile" or "logmel"
    feature_set: str = ""
    level: str = ""
    #: LLD sequences: append openSMILE's delta of every descriptor (the paper's 16 + 16 = 32).
    deltas: bool = False

    @property
    def key(self) -> str:
        lib = version("opensmile") if self.backend == "opensmile" else "torch-stft-v1"
        return f"{self.name}-{self.feature_set}-{self.level}{'+deltas' * self.deltas}-{lib}"


FEATURES: dict[str, FeatureSpec] = {
    spec.name: spec
    for spec in (
        FeatureSpec("emobase", "functionals", "openSMILE emobase functionals (988)", "opensmile",
                    "emobase", "Functionals"),
        FeatureSpec("is09", "functionals", "openSMILE IS09 emotion functionals (384)", "opensmile",
                    "IS09", "Functionals"),
        FeatureSpec("egemaps", "functionals", "openSMILE eGeMAPS v02 functionals (88)", "opensmile",
                    "eGeMAPSv02", "Functionals"),
        FeatureSpec("is09-lld", "sequence", "openSMILE IS09 LLDs with deltas (32 per frame)",
                    "opensmile", "IS09", "LowLevelDescriptors", deltas=True),
        FeatureSpec("logmel", "sequence", "64-band log-mel spectrogram, 25 ms / 10 ms", "logmel"),
    )
}


def feature_spec(name: str) -> FeatureSpec:
    try:
        return FEATURES[name]
    except KeyError:
        raise unknown_name("feature set", name, FEATURES) from None


@cache
def _smile(feature_set: str, level: str):  # one openSMILE instance per process
    import opensmile

    return opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, feature_set),
                           feature_level=getattr(opensmile.FeatureLevel, level))


@cache
def logmel_model():
    """The one log-mel front end (16 kHz, 64 bands, 25 ms / 10 ms)."""
    from serbench.features.logmel import LogMel

    return LogMel()


def compute(spec: FeatureSpec, wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """The features of one waveform, float32."""
    if spec.backend == "opensmile":
        values = _smile(spec.feature_set, spec.level).process_signal(wave, sample_rate).to_numpy()
        if spec.deltas:
            deltas = _smile(spec.feature_set, f"{spec.level}_Deltas").process_signal(
                wave, sample_rate).to_numpy()
            # openSMILE's delta stream has a frame more at each end: centre it on the LLDs.
            start = max(0, (len(deltas) - len(values)) // 2)
            n = min(len(values), len(deltas) - start)
            values = np.concatenate([values[:n], deltas[start:start + n]], axis=1)
        return (values[0] if spec.kind == "functionals" else values).astype(np.float32)
    import torch

    with torch.no_grad():
        return logmel_model()(torch.from_numpy(wave)).T.numpy().astype(np.float32)
