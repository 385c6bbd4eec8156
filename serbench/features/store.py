"""Feature extraction for a whole corpus table, cached on disk by audio content and parameters.

The cache key is the SHA-1 of the audio file's bytes plus :attr:`FeatureSpec.key`, so renamed
or moved files reuse their features and edited files never do. Misses are computed in worker
processes (openSMILE is single-threaded) and written atomically.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from serbench.cache import cache_lock, serbench_cache_dir
from serbench.corpora.audio import SAMPLE_RATE, load_audio
from serbench.features.extractors import FeatureSpec, compute, logmel_model as _logmel_model
from serbench.io import atomic_path
from serbench.workers import process_map

Progress = Callable[[int], None]


def file_digest(path: str | Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def _extract_one(args: tuple[FeatureSpec, str, str]) -> tuple[str, np.ndarray]:
    spec, path, target = args
    values = compute(spec, load_audio(path), SAMPLE_RATE)
    atomic_save_npy(Path(target), values)
    return path, values


def atomic_save_npy(target: Path, values: np.ndarray) -> None:
    with atomic_path(target) as tmp, open(tmp, "wb") as fh:
        np.save(fh, values)


def extract(paths: Sequence[str], spec: FeatureSpec, *, workers: int | None = None,
            cache_dir: Path | None = None, progress: Progress | None = None) -> list[np.ndarray]:
    """Features of every file in ``paths`` (in order), computing only the cache misses."""
    root = (cache_dir or serbench_cache_dir()) / "features" / spec.key
    targets = [root / f"{file_digest(p)}.npy" for p in paths]
    out: dict[str, np.ndarray] = {}
    todo = _load_cached(paths, targets, out, spec, progress)
    if todo:
        with cache_lock(f"features-{spec.key}", cache_dir):  # another run may be computing them
            todo = _load_cached([t[1] for t in todo], [Path(t[2]) for t in todo], out, spec,
                                progress)
            _compute(todo, out, spec, workers, progress)
    return [out[p] for p in paths]


Job = tuple[FeatureSpec, str, str]  #: (spec, audio path, cache file) of one extraction


def _load_cached(paths: Sequence[str], targets: Sequence[Path], out: dict[str, np.ndarray],
                 spec: FeatureSpec, progress: Progress | None) -> list[Job]:
    """Load the cached entries into ``out``; the misses as extraction jobs."""
    todo = []
    for path, target in zip(paths, targets):
        if target.exists():
            out[path] = np.load(target)
            if progress:
                progress(1)
        else:
            todo.append((spec, path, str(target)))
    return todo


def _compute(todo: list[Job], out: dict[str, np.ndarray],
             spec: FeatureSpec, workers: int | None, progress: Progress | None) -> None:
    if spec.backend == "logmel":
        _logmel_batched(todo, out, progress)
        return
    # Worker processes pay off only beyond a handful of files.
    for path, values in process_map(_extract_one, todo, chunksize=8,
                                    workers=1 if len(todo) <= 8 else workers or 0):
        out[path] = values
        if progress:
            progress(1)


#: Waveforms of one length transformed together; pending ones are flushed past this many.
LOGMEL_BATCH = 64


def _logmel_batched(todo: list[tuple[FeatureSpec, str, str]], out: dict[str, np.ndarray],
                    progress: Progress | None) -> None:
    """Log-mel of the cache misses in this process, waveforms of equal length as one batched
    STFT: a batch is never padded, so every file gets the numbers it would get alone, without
    the per-file cost of worker processes (log-mel is a few milliseconds of torch per file)."""
    pending: dict[int, list[tuple[str, str, np.ndarray]]] = {}

    def flush(items: list[tuple[str, str, np.ndarray]]) -> None:
        with torch.no_grad():
            power = _logmel_model().power(torch.from_numpy(np.stack([w for _, _, w in items])))
        for (path, target, _), spec_power in zip(items, power):
            values = _logmel_model().mel(spec_power).T.numpy().astype(np.float32)
            atomic_save_npy(Path(target), values)
            out[path] = values
            if progress:
                progress(1)

    for _, path, target in todo:
        wave = load_audio(path)
        group = pending.setdefault(len(wave), [])
        group.append((path, target, wave))
        if len(group) == LOGMEL_BATCH or sum(map(len, pending.values())) >= 4 * LOGMEL_BATCH:
            for key in [k for k, g in pending.items() if g]:
                flush(pending.pop(key))
    for group in pending.values():
        if group:
            flush(group)


def zscore_per_speaker(features: np.ndarray, speakers: Sequence[str]) -> np.ndarray:
    """Per-speaker z-normalisation (as in fed-ser-leakage): removes each speaker's offset and
    scale, using no labels, so gender must be inferred from within-speaker patterns."""
    speakers = np.asarray(speakers)
    out = np.empty_like(features, dtype=np.float32)
    for spk in np.unique(speakers):
        rows = speakers == spk
        block = features[rows]
        out[rows] = (block - block.mean(axis=0)) / (block.std(axis=0) + 1e-8)
    return out


def pad_sequences(seqs: list[np.ndarray], frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, dims, frames) sequences centre-cropped or zero-padded at the end, and the (N, 1,
    frames) mask of real frames: a CNN's input has one fixed length."""
    x = np.zeros((len(seqs), seqs[0].shape[1], frames), dtype=np.float32)
    mask = np.zeros((len(seqs), 1, frames), dtype=np.float32)
    for i, seq in enumerate(seqs):
        start = max(0, (len(seq) - frames) // 2)
        part = seq[start:start + frames]
        x[i, :, :len(part)] = part.T
        mask[i, :, :len(part)] = 1.0
    return torch.from_numpy(x), torch.from_numpy(mask)
