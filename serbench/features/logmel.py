"""Log-mel spectrograms with torch.stft and an HTK mel filterbank.

Kept in torch (not numpy) so adversarial attacks can take gradients down to the waveform.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def mel_filterbank(n_mels: int, n_fft: int, sample_rate: int, f_min: float = 0.0,
                   f_max: float | None = None) -> torch.Tensor:
    """Triangular HTK-mel filters, shape (n_mels, n_fft // 2 + 1)."""
    f_max = f_max or sample_rate / 2
    to_mel = lambda f: 2595.0 * math.log10(1.0 + f / 700.0)  # noqa: E731
    mels = torch.linspace(to_mel(f_min), to_mel(f_max), n_mels + 2, dtype=torch.float64)
    hz = 700.0 * (10.0 ** (mels / 2595.0) - 1.0)
    bins = torch.linspace(0, sample_rate / 2, n_fft // 2 + 1, dtype=torch.float64)
    lower, centre, upper = hz[:-2, None], hz[1:-1, None], hz[2:, None]
    rising = (bins - lower) / (centre - lower)
    falling = (upper - bins) / (upper - centre)
    return torch.clamp(torch.minimum(rising, falling), min=0.0).float()


class LogMel(nn.Module):
    """Waveform (..., samples) -> log-mel (..., n_mels, frames); 25 ms windows, 10 ms hop."""

    def __init__(self, sample_rate: int = 16_000, n_mels: int = 64, n_fft: int = 400,
                 hop_length: int = 160) -> None:
        super().__init__()
        self.n_fft, self.hop_length = n_fft, hop_length
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)
        self.register_buffer("filters", mel_filterbank(n_mels, n_fft, sample_rate), persistent=False)

    def power(self, wave: torch.Tensor) -> torch.Tensor:
        """Power spectrogram (..., n_fft // 2 + 1, frames)."""
        spec = torch.stft(wave, self.n_fft, self.hop_length, window=self.window,
                          return_complex=True)
        return spec.real**2 + spec.imag**2

    def mel(self, power: torch.Tensor) -> torch.Tensor:
        """Log mel energies of a power spectrogram."""
        return torch.log(torch.matmul(self.filters, power) + 1e-6)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.mel(self.power(wave))
