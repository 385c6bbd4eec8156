"""Feature extraction: the batched log-mel path gives every file the numbers it gets alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from serbench.corpora.audio import SAMPLE_RATE, load_audio
from serbench.features import store
from serbench.features.extractors import compute, feature_spec


def test_batched_logmel_equals_file_by_file(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(store, "LOGMEL_BATCH", 2)  # force full batches, flushes and leftovers
    rng = np.random.default_rng(0)
    paths = []
    for i, seconds in enumerate([0.5, 0.5, 0.7, 0.5, 0.3, 0.7, 0.5]):
        path = tmp_path / f"{i}.wav"
        sf.write(path, (0.1 * rng.standard_normal(int(seconds * SAMPLE_RATE))).astype(np.float32),
                 SAMPLE_RATE)
        paths.append(str(path))
    spec = feature_spec("logmel")
    batched = store.extract(paths, spec, cache_dir=tmp_path / "cache")
    for path, values in zip(paths, batched):
        assert np.array_equal(values, compute(spec, load_audio(path), SAMPLE_RATE))
    cached = store.extract(paths, spec, cache_dir=tmp_path / "cache")  # from the cache now
    assert all(np.array_equal(a, b) for a, b in zip(batched, cached))
