"""A loaded corpus as the pipeline's stages share it: its table and its features, extracted
once and cached, from the audio as released (an AUDIO-surface defense's transformation, or the
files themselves)."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd
import torch

from serbench.corpora.audio import SAMPLE_RATE
from serbench.features.extractors import feature_spec
from serbench.features.release import Release
from serbench.features.speaker import ORIGINAL, embed_cached
from serbench.features.store import extract, file_digest, load_released, pad_sequences, \
    zscore_per_speaker
from serbench.progress import NullReporter, Reporter


@dataclass
class CorpusData:
    """A corpus table (rows in feature order) with lazily extracted, cached features."""

    name: str
    table: pd.DataFrame
    #: FL clients per speaker, by corpus (a shadow set may mix corpora with different rules).
    clients_per_speaker: dict[str, int] = field(default_factory=dict)
    reporter: Reporter = field(default_factory=NullReporter)
    #: How the device transformed the audio every feature is computed from (None: unchanged).
    release: Release | None = None
    _features: dict[str, object] = field(default_factory=dict, repr=False)
    _padded: dict[tuple[str, int], tuple[torch.Tensor, torch.Tensor]] = field(
        default_factory=dict, repr=False)

    def features(self, name: str) -> np.ndarray | list[np.ndarray]:
        """Functionals as a per-speaker z-normalised matrix; sequences as a list of arrays."""
        if name not in self._features:
            spec = feature_spec(name)
            paths = self.table["path"].tolist()
            with self.reporter.track(f"{self.name}: {name} features", len(paths)) as advance:
                values = extract(paths, spec, progress=advance, release=self.release)
            if spec.kind == "functionals":
                values = zscore_per_speaker(np.stack(values), self.table["speaker"].to_numpy())
            self._features[name] = values
        return self._features[name]

    def quiet(self) -> CorpusData:
        """This corpus reporting nothing, its features shared: picklable, for a worker
        process."""
        return replace(self, reporter=NullReporter())

    def speaker_embeddings(self) -> np.ndarray:
        """(N, 256) speaker embeddings of the released audio (SPEC §3.4), cached on disk by
        the source file's content and the release."""
        if "speaker-embeddings" not in self._features:
            paths = self.table["path"].tolist()
            digests = [file_digest(p) for p in paths]
            with self.reporter.track(f"{self.name}: speaker embeddings", len(paths)) as advance:
                self._features["speaker-embeddings"] = embed_cached(
                    digests, lambda i: (load_released(paths[i], self.release, digests[i]),
                                        SAMPLE_RATE),
                    release=self.release.key if self.release else ORIGINAL, progress=advance)
        return self._features["speaker-embeddings"]

    def released(self, release: Release | None) -> CorpusData:
        """The same utterances as ``release`` transforms their audio (features recomputed)."""
        return CorpusData(self.name, self.table, self.clients_per_speaker, self.reporter,
                          release)

    def subset(self, mask: np.ndarray, name: str) -> CorpusData:
        """The rows ``mask`` selects, with the features extracted so far: features are
        per-speaker normalised and a split never divides a speaker, so the parent's rows are
        exact."""
        part = CorpusData(name, self.table[mask].reset_index(drop=True),
                          self.clients_per_speaker, self.reporter, self.release)
        for key, values in self._features.items():
            part._features[key] = values[mask] if isinstance(values, np.ndarray) else [
                v for v, m in zip(values, mask) if m]
        return part

    def padded(self, features: str, frames: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sequence features at one fixed length with their mask (a CNN's input), computed
        once per corpus and shared by every fold."""
        if (features, frames) not in self._padded:
            self._padded[features, frames] = pad_sequences(self.features(features), frames)
        return self._padded[features, frames]
