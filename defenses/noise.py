"""Noise injection (SPEC §4): Gaussian noise on what leaves the device, the transmitted
representation h_T (split computing) or the shared update (FL). Strength as an absolute σ or
as a signal-to-noise ratio in dB relative to the tensor's own RMS."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from serbench.errors import SerbenchError
from serbench.plugins import Defense, Surface, Tags


@dataclass
class NoiseInjection(Defense):
    name: ClassVar[str] = "noise"
    summary: ClassVar[str] = "Gaussian noise on the transmitted representation or shared update (σ or SNR)"
    #: T trains with this noise on the transmitted layer (SPEC §4's noise-aware training).
    tags: ClassVar[Tags] = Tags(surfaces={Surface.REPRESENTATION, Surface.UPDATE},
                                randomized=True, noise_aware=True,
                                strength=(("sigma", "σ"), ("snr_db", "SNR dB")))

    #: The noise's standard deviation (give sigma or snr_db).
    sigma: float | None = 0.01
    #: Or its level in dB below the RMS of the tensor it is added to (a batch of transmitted
    #: representations, or one parameter's update).
    snr_db: float | None = None

    def validate(self) -> None:
        if (self.sigma is None) == (self.snr_db is None):
            raise SerbenchError("defense 'noise': give exactly one of sigma or snr_db "
                                "(e.g. --param sigma=none --param snr_db=10)")
        if self.sigma is not None and self.sigma < 0:
            raise SerbenchError(f"defense 'noise': sigma must be >= 0, got {self.sigma}")

    def _noisy(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if self.sigma is not None:
            std = self.sigma
        else:
            std = float(x.detach().pow(2).mean().sqrt()) / 10 ** (self.snr_db / 20)
        return x + std * torch.randn(x.shape, generator=generator, dtype=x.dtype)

    def privatize_update(self, update: dict[str, torch.Tensor], *,
                         generator: torch.Generator) -> dict[str, torch.Tensor]:
        return {k: self._noisy(u, generator) for k, u in update.items()}

    def transform_representation(self, h: torch.Tensor, *,
                                 generator: torch.Generator) -> torch.Tensor:
        return self._noisy(h, generator)
