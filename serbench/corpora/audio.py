"""Audio input: soundfile for wav and flac, down-mixed to mono and resampled to 16 kHz."""

from __future__ import annotations

from math import gcd
from pathlib import Path

import numpy as np
import soundfile as sf

from serbench.errors import SerbenchError

SAMPLE_RATE = 16_000
AUDIO_SUFFIXES = (".wav", ".flac")


def load_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Read ``path`` as float32 mono at ``sample_rate``; a bad file is a one-line error."""
    try:
        data, sr = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, OSError) as exc:
        raise SerbenchError(f"{path}: unreadable audio ({first_line(exc)})") from None
    if data.size == 0:
        raise SerbenchError(f"{path}: audio file holds no samples")
    mono = data.mean(axis=1)
    if sr != sample_rate:
        g = gcd(int(sr), sample_rate)
        from scipy.signal import resample_poly  # slow to import; few corpora resample

        mono = resample_poly(mono, sample_rate // g, int(sr) // g).astype(np.float32)
    if not np.isfinite(mono).all():
        raise SerbenchError(f"{path}: audio holds NaN or infinite samples")
    return mono


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
