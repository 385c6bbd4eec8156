"""Speaker embeddings for the linkability attack (SPEC §3.4): resemblyzer's pretrained GE2E
voice encoder, 256-d and L2-normalised, cached on disk.

Why resemblyzer: its wheel ships the weights (``pretrained.pt``, 17 MB), so a run fetches
nothing, and it runs on a CPU in about real time / 50 (docs/linkability.md). Every
computation runs on one thread (serbench/threads.py).

The cache reuses the feature store's pieces (:func:`~serbench.features.store.file_digest`,
its checked entries, ``save_entry`` and ``read_entry``, and the cache lock). An entry is keyed by an audio content digest, the
encoder's identity (package version, weights digest, preprocessing version) and a
caller-given *release*: which transformation (defense, its parameters and seed) made the audio
that was embedded. A release lets a caller key transformed audio by its *source* file's digest,
so a cache hit skips the transformation too.
"""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Callable, Sequence
from functools import cache
from importlib.metadata import version
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from serbench.cache import cache_lock, serbench_cache_dir
from serbench.corpora.audio import SAMPLE_RATE, load_audio
from serbench.errors import SerbenchError
from serbench.features.store import Progress, file_digest, read_entry, save_entry
from serbench.threads import fixed_threads

if TYPE_CHECKING:  # importing resemblyzer costs seconds (librosa, numba)
    from resemblyzer import VoiceEncoder

#: The release of untransformed corpus audio.
ORIGINAL = "original"
EMBEDDING_DIM = 256
#: Bump whenever :func:`prepare` changes: it is part of the cache key.
PREPARE_VERSION = 1
#: Below this many voiced samples (0.5 s at 16 kHz) the VAD-trimmed audio is not used.
MIN_VOICED = SAMPLE_RATE // 2
_RELEASE = re.compile(r"[A-Za-z0-9._=,+-]{1,120}")
#: Loads utterance ``i`` of a request (only on a cache miss): waveform and its sample rate.
Loader = Callable[[int], tuple[np.ndarray, int]]


def _resemblyzer():  # noqa: ANN202 - the module, imported lazily
    """resemblyzer, imported without the deprecation warnings of its dependencies (webrtcvad's
    pkg_resources, scipy.ndimage.morphology), which a user cannot act on."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
        import resemblyzer
        import resemblyzer.audio  # noqa: F401 - the VAD and volume normalisation
    return resemblyzer


@cache
def load_encoder() -> VoiceEncoder:
    """The pretrained encoder on the CPU, loaded once per process from the installed wheel."""
    return _resemblyzer().VoiceEncoder("cpu", verbose=False).eval()


@cache
def encoder_id() -> str:
    """The encoder's identity in cache keys: package version, weights digest, preprocessing."""
    weights = Path(_resemblyzer().__file__).parent / "pretrained.pt"
    digest = hashlib.sha1(weights.read_bytes()).hexdigest()[:12]
    return f"resemblyzer-{version('resemblyzer')}-{digest}-prep{PREPARE_VERSION}"


def prepare(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """The encoder's input, as resemblyzer's ``preprocess_wav`` makes it (16 kHz, volume raised
    to -30 dBFS, long silences cut by its VAD), except that audio the VAD finds (almost) no
    voice in is kept whole: an embedding of a few frames, or of nothing, says nothing."""
    rz = _resemblyzer()
    wav = np.asarray(wave, dtype=np.float32)
    if wav.ndim != 1 or not np.isfinite(wav).all():
        raise SerbenchError("speaker embedding needs finite mono audio")
    if not np.any(wav):
        raise SerbenchError("speaker embedding of silent audio (every sample is zero)")
    if sample_rate != rz.hparams.sampling_rate:
        import librosa  # resemblyzer's own resampler (soxr)

        wav = librosa.resample(wav, orig_sr=sample_rate, target_sr=rz.hparams.sampling_rate)
    wav = rz.audio.normalize_volume(wav, rz.hparams.audio_norm_target_dBFS, increase_only=True)
    voiced = rz.audio.trim_long_silences(wav)
    return voiced if len(voiced) >= MIN_VOICED else wav


def embed(wave: np.ndarray, sample_rate: int) -> np.ndarray:
    """The (256,) float32 L2-normalised embedding of one utterance (no cache), on one thread."""
    with fixed_threads():
        return load_encoder().embed_utterance(prepare(wave, sample_rate)).astype(np.float32)


def wave_digest(wave: np.ndarray, sample_rate: int) -> str:
    """The content digest of audio held in memory (a cache key like a file's digest)."""
    data = np.ascontiguousarray(wave, dtype=np.float32)
    return hashlib.sha1(f"{sample_rate}:".encode() + data.tobytes()).hexdigest()


def embed_cached(digests: Sequence[str], load: Loader, *, release: str = ORIGINAL,
                 cache_dir: Path | None = None, progress: Progress | None = None) -> np.ndarray:
    """(N, 256) embeddings of N utterances named by content ``digests`` under ``release``;
    ``load(i)`` is called for cache misses only. Concurrent runs wait for each other (lock)."""
    if not _RELEASE.fullmatch(release):
        raise SerbenchError(f"speaker-embedding release {release!r}: use 1-120 characters "
                            "of letters, digits and ._=,+-")
    root = (cache_dir or serbench_cache_dir()) / "speaker" / encoder_id() / release
    targets = [root / f"{d}.npy" for d in digests]
    out = np.zeros((len(targets), EMBEDDING_DIM), dtype=np.float32)
    todo = _load_hits(targets, range(len(targets)), out, progress)
    if todo:
        with cache_lock(f"speaker-{encoder_id()}-{release}", cache_dir):
            for i in _load_hits(targets, todo, out, progress):
                out[i] = embed(*load(i))
                save_entry(targets[i], out[i])  # an unwritable cache: go on without it
                if progress:
                    progress(1)
    return out


def _load_hits(targets: Sequence[Path], indices: Sequence[int], out: np.ndarray,
               progress: Progress | None) -> list[int]:
    """Fill ``out`` from the cached entries among ``indices``; the misses' indices (an entry
    that is not whole and intact, the feature store's check, is a miss and is recomputed)."""
    misses = []
    for i in indices:
        try:
            out[i] = read_entry(targets[i])
        except (OSError, ValueError):
            misses.append(i)
            continue
        if progress:
            progress(1)
    return misses


def embed_files(paths: Sequence[str | Path], *, cache_dir: Path | None = None,
                progress: Progress | None = None) -> np.ndarray:
    """(N, 256) embeddings of untransformed audio files (release :data:`ORIGINAL`)."""
    return embed_cached([file_digest(p) for p in paths],
                        lambda i: (load_audio(paths[i]), SAMPLE_RATE),
                        cache_dir=cache_dir, progress=progress)
