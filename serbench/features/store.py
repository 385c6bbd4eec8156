"""Feature extraction for a whole corpus table, cached on disk by audio content and parameters.

The cache key is the SHA-1 of the audio file's bytes plus :attr:`FeatureSpec.key`, so renamed
or moved files reuse their features and edited files never do. Features of released audio (an
AUDIO-surface defense's transformation, :class:`~serbench.features.release.Release`) are kept
under the release's key, by the *source* file's digest: a hit skips the transformation too. Misses are computed in worker
processes (openSMILE is single-threaded) and written atomically.

The cache checks what it reads: an entry is the array as ``.npy`` followed by the SHA-256 of
those bytes, and one that fails to load, holds more or fewer bytes than its header records or
fails its checksum is recomputed and replaced, with one warning line for all of them (entries
written before the checksum was added are checked by size alone). A cache the run cannot write
to is skipped with one warning line: the features are computed all the same.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from serbench.cache import cache_lock, serbench_cache_dir
from serbench.corpora.audio import SAMPLE_RATE, load_audio
from serbench.faults import warn
from serbench.features.extractors import FeatureSpec, compute, logmel_model as _logmel_model
from serbench.features.release import Release
from serbench.io import atomic_path
from serbench.workers import process_map

Progress = Callable[[int], None]

#: Bytes of the checksum that ends a cache entry (SHA-256 of the ``.npy`` bytes before it).
CHECKSUM_BYTES = hashlib.sha256().digest_size


def file_digest(path: str | Path) -> str:
    return hashlib.sha1(Path(path).read_bytes()).hexdigest()


def load_released(path: str | Path, release: Release | None, digest: str | None = None
                  ) -> np.ndarray:
    """The audio of ``path`` as ``release`` makes it (the file itself without one)."""
    wave = load_audio(path)
    if release is None:
        return wave
    return release.apply(wave, SAMPLE_RATE, digest or file_digest(path))


def _extract_one(args: Job) -> tuple[str, np.ndarray, OSError | None]:
    spec, path, target, release = args
    values = compute(spec, load_released(path, release, Path(target).stem), SAMPLE_RATE)
    return path, values, save_entry(Path(target), values)


def save_entry(target: Path, values: np.ndarray) -> OSError | None:
    """Write a cache entry atomically; the error if the cache cannot be written (the caller
    goes on without it)."""
    buffer = io.BytesIO()
    np.save(buffer, values)
    body = buffer.getvalue()
    try:
        with atomic_path(target) as tmp:
            tmp.write_bytes(body + hashlib.sha256(body).digest())
    except OSError as exc:
        return exc
    return None


def read_entry(target: Path) -> np.ndarray:
    """The float32 array a cache entry holds; ValueError if the entry is not whole and intact
    (OSError if it cannot be read)."""
    data = target.read_bytes()
    body = data[:-CHECKSUM_BYTES]
    if hashlib.sha256(body).digest() != data[-CHECKSUM_BYTES:]:
        body = data  # no valid checksum: intact only as an entry without one, to the byte
    try:
        fh = io.BytesIO(body)
        values = np.load(fh, allow_pickle=False)
    except EOFError as exc:
        raise ValueError(f"EOF: {exc}") from None
    if not isinstance(values, np.ndarray) or values.dtype != np.float32:
        raise ValueError("not a float32 array")
    if fh.tell() != len(body):
        raise ValueError(f"{len(body) - fh.tell()} bytes more than its header records, and no "
                         f"valid checksum")
    return values


def extract(paths: Sequence[str], spec: FeatureSpec, *, workers: int | None = None,
            cache_dir: Path | None = None, progress: Progress | None = None,
            release: Release | None = None) -> list[np.ndarray]:
    """Features of every file in ``paths`` (in order), as ``release`` transforms it if given,
    computing only the cache misses and the entries that fail their check."""
    key = spec.key if release is None else f"{spec.key}/{release.key}"
    root = (cache_dir or serbench_cache_dir()) / "features" / key
    targets = [root / f"{file_digest(p)}.npy" for p in paths]
    out: dict[str, np.ndarray] = {}
    faults = _CacheFaults(root)
    todo = _load_cached(paths, targets, out, spec, progress, faults, release)
    if todo:
        # Another run may be computing them; a cache that cannot hold the lock is not shared.
        with cache_lock(f"features-{key.replace('/', '-')}", cache_dir) as lock_error:
            if lock_error is not None:
                faults.unwritable(lock_error)
            todo = _load_cached([t[1] for t in todo], [Path(t[2]) for t in todo], out, spec,
                                progress, faults, release)
            _compute(todo, out, spec, workers, progress, faults)
    return [out[p] for p in paths]


#: (spec, audio path, cache file, release) of one extraction
Job = tuple[FeatureSpec, str, str, Release | None]


class _CacheFaults:
    """One warning line for the corrupt entries a load pass finds, one for a cache that cannot
    be written."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.corrupt: set[Path] = set()
        self.unwritable_warned = False

    def found_corrupt(self, found: dict[Path, str]) -> None:
        new = {p: why for p, why in found.items() if p not in self.corrupt}
        if not new:
            return
        self.corrupt |= set(new)
        first, why = next(iter(new.items()))
        if len(new) == 1:
            warn(f"feature cache entry {first} is corrupt ({why}); recomputing it")
        else:
            warn(f"{len(new)} feature cache entries under {self.root} are corrupt (e.g. "
                 f"{first.name}: {why}); recomputing them")

    def unwritable(self, exc: OSError) -> None:
        if not self.unwritable_warned:
            self.unwritable_warned = True
            where = exc.filename if exc.filename is not None else self.root
            warn(f"cannot write the feature cache ({where}: {exc.strerror or exc}); going on "
                 f"without caching (free space there or set SERBENCH_CACHE to a writable "
                 f"directory to keep the features)")


def _load_cached(paths: Sequence[str], targets: Sequence[Path], out: dict[str, np.ndarray],
                 spec: FeatureSpec, progress: Progress | None, faults: _CacheFaults,
                 release: Release | None = None) -> list[Job]:
    """Load the cached entries into ``out``; the misses and the entries that fail their check
    as extraction jobs."""
    todo, corrupt = [], {}
    for path, target in zip(paths, targets):
        try:
            out[path] = read_entry(target)
        except FileNotFoundError:
            todo.append((spec, path, str(target), release))
            continue
        except (OSError, ValueError) as exc:
            corrupt[target] = exc.strerror if isinstance(exc, OSError) and exc.strerror \
                else str(exc)
            todo.append((spec, path, str(target), release))
            continue
        if progress:
            progress(1)
    faults.found_corrupt(corrupt)
    return todo


def _compute(todo: list[Job], out: dict[str, np.ndarray], spec: FeatureSpec,
             workers: int | None, progress: Progress | None, faults: _CacheFaults) -> None:
    if spec.backend == "logmel":
        _logmel_batched(todo, out, progress, faults)
        return
    # Worker processes pay off only beyond a handful of files.
    for path, values, error in process_map(_extract_one, todo, chunksize=8,
                                           workers=1 if len(todo) <= 8 else workers or 0):
        out[path] = values
        if error is not None:
            faults.unwritable(error)
        if progress:
            progress(1)


#: Waveforms of one length transformed together; pending ones are flushed past this many.
LOGMEL_BATCH = 64


def _logmel_batched(todo: list[Job], out: dict[str, np.ndarray],
                    progress: Progress | None, faults: _CacheFaults) -> None:
    """Log-mel of the cache misses in this process, waveforms of equal length as one batched
    STFT: a batch is never padded, so every file gets the numbers it would get alone, without
    the per-file cost of worker processes (log-mel is a few milliseconds of torch per file)."""
    pending: dict[int, list[tuple[str, str, np.ndarray]]] = {}

    def flush(items: list[tuple[str, str, np.ndarray]]) -> None:
        with torch.no_grad():
            power = _logmel_model().power(torch.from_numpy(np.stack([w for _, _, w in items])))
        for (path, target, _), spec_power in zip(items, power):
            values = _logmel_model().mel(spec_power).T.numpy().astype(np.float32)
            if (error := save_entry(Path(target), values)) is not None:
                faults.unwritable(error)
            out[path] = values
            if progress:
                progress(1)

    for _, path, target, release in todo:
        wave = load_released(path, release, Path(target).stem)
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
