"""McAdams voice anonymisation (VoicePrivacy baseline B2; SPEC §4): the device moves the
formants of every frame before anything else sees the audio.

Each 20 ms frame (10 ms shift, square-root Hann window) is analysed by LPC of order 20
(``librosa.lpc``); the angle φ of every complex pole becomes φ^α (its conjugate follows),
magnitudes kept; the frame's residual (``scipy.signal.lfilter`` with the old polynomial) is
filtered by the new all-pole filter, windowed again and overlap-added. α < 1 raises the low
formants. VoicePrivacy 2024's B2 (``configs/anon_mcadams.yaml``) draws α per utterance,
uniformly in [0.5, 0.9]: the default here; a fixed ``alpha`` is the family's strength.

Why these libraries: the LPC, framing and filtering are librosa's and scipy's; only the pole
mapping (the method itself) is written here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from serbench.errors import SerbenchError
from serbench.plugins import Defense, Surface, Tags


def mcadams(wave: np.ndarray, sample_rate: int, alpha: float, *, order: int = 20,
            window_ms: float = 20.0, shift_ms: float = 10.0) -> np.ndarray:
    """``wave`` with each frame's LPC pole angles raised to the power ``alpha``, the same
    length and peak level; samples after the last whole frame are silent, as in B2."""
    import librosa
    from scipy.signal import lfilter

    win_len, shift = int(window_ms * sample_rate / 1000), int(shift_ms * sample_rate / 1000)
    hann = np.hanning(win_len)
    window = np.sqrt(hann / (hann.sum() / shift))  # analysis x synthesis sums to one
    eps = np.finfo(np.float32).eps
    x = np.asarray(wave, dtype=np.float64) + eps
    if len(x) < win_len:
        return np.asarray(wave, dtype=np.float32).copy()
    frames = librosa.util.frame(x, frame_length=win_len, hop_length=shift).T * window
    lpc = librosa.lpc(frames + eps, order=order, axis=1)
    out = np.zeros(len(x))
    for i, (frame, a) in enumerate(zip(frames, lpc)):
        residual = lfilter(a, [1.0], frame)
        new = lfilter([1.0], shifted_polynomial(a, alpha), residual) * window
        out[i * shift:i * shift + win_len] += new
    peak = np.abs(out).max()  # VoicePrivacy scales to full scale; here to the input's peak
    return (out * (np.abs(wave).max() / peak if peak > 0 else 0.0)).astype(np.float32)


def shifted_polynomial(a: np.ndarray, alpha: float) -> np.ndarray:
    """The LPC polynomial whose complex poles have angles |φ|^α (sign kept), same radii."""
    poles = np.roots(a)
    angle = np.angle(poles)
    complex_ = np.abs(poles.imag) > 0
    angle[complex_] = np.sign(angle[complex_]) * np.abs(angle[complex_]) ** alpha
    return np.real(np.poly(np.abs(poles) * np.exp(1j * angle)))


@dataclass
class McAdams(Defense):
    name: ClassVar[str] = "mcadams"
    summary: ClassVar[str] = ("McAdams anonymisation (VoicePrivacy B2): LPC pole angles φ → φ^α "
                              "per frame; α uniform in [0.5, 0.9] per utterance by default")
    #: Every track reads the anonymised audio; a per-utterance α is randomness (EOT rules).
    tags: ClassVar[Tags] = Tags(surfaces={Surface.AUDIO}, randomized=True,
                                strength=(("alpha", "α"),))

    #: A fixed McAdams coefficient (the family's strength); none: drawn per utterance,
    #: uniformly in [alpha_min, alpha_max].
    alpha: float | None = None
    #: Lower end of the per-utterance draw (VoicePrivacy 2024: 0.5).
    alpha_min: float = 0.5
    #: Upper end of the per-utterance draw (VoicePrivacy 2024: 0.9).
    alpha_max: float = 0.9
    #: LPC order (VoicePrivacy 2024: 20 coefficients).
    order: int = 20

    def validate(self) -> None:
        low, high = (self.alpha, self.alpha) if self.alpha is not None else (
            self.alpha_min, self.alpha_max)
        if not 0 < low <= high:
            raise SerbenchError(f"defense 'mcadams': need 0 < alpha_min <= alpha_max (or "
                                f"alpha > 0), got {low}..{high}")
        if self.order < 2:
            raise SerbenchError(f"defense 'mcadams': order must be >= 2, got {self.order}")

    def transform_audio(self, wave: np.ndarray, sample_rate: int, *,
                        generator: torch.Generator) -> np.ndarray:
        if self.alpha is not None:
            alpha = self.alpha
        else:
            u = float(torch.rand((), generator=generator, dtype=torch.float64))
            alpha = self.alpha_min + u * (self.alpha_max - self.alpha_min)
        return mcadams(wave, sample_rate, alpha, order=self.order)
