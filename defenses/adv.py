"""Adversarial training plus test-time randomisation (SPEC §4; Chang et al., "Robust federated
learning against adversarial attacks for SER"; code: nunosofyen/Robust-Federated-Learning).

Training: from the second step (epoch of a central training, round of an FL client's local
training) every batch gets L∞ adversarial copies (FGSM or PGD) of a random half of it. Test
time: each input spectrogram is resized by a random factor of up to ``resize`` (Xie et al.'s
random resizing, as the reference: 373 x 64 frames x mels up to 380 x 66), zero-padded at a
random offset to one fixed size, and the prediction is averaged over ``draws`` draws.

The randomisation is the part Athalye et al. (2018) broke with EOT; serbench's ``eot-pgd``
attacks through it (docs/adversarial.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, NamedTuple

import torch
from torch.nn import functional as F

from serbench.errors import SerbenchError
from serbench.adversarial import Model, evaluating, linf_perturb
from serbench.plugins import Defense, Surface, Tags

METHODS = ("fgsm", "pgd")

@dataclass
class AdversarialTraining(Defense):
    """Parameters: the training attack (``method``, ``eps`` in the model's input units,
    ``steps`` of PGD) and the test-time randomisation (``resize``, the largest relative
    enlargement, and ``draws`` averaged per prediction)."""

    name: ClassVar[str] = "adv"
    summary: ClassVar[str] = ("adversarial training (FGSM/PGD copies of half of each batch) and "
                              "random resize-and-pad of the input at test time")
    tags: ClassVar[Tags] = Tags(surfaces={Surface.INPUT}, randomized=True, trains=True,
                                input_draws="draws", strength=(("eps", "eps"),))

    #: The training attack, fgsm or pgd (the reference repo's configured one: fgsm).
    method: str = "fgsm"
    #: Its L∞ budget, in the model's input units.
    eps: float = 0.05
    #: PGD's steps (the reference's max_iter).
    steps: int = 5
    #: The largest relative enlargement of the test-time random resize-and-pad.
    resize: float = 0.02
    #: Randomised evaluations averaged per prediction (the reference: three).
    draws: int = 3

    def validate(self) -> None:
        if self.method not in METHODS:
            raise SerbenchError(f"defense 'adv': unknown method {self.method!r}; "
                                f"valid: {', '.join(METHODS)}")
        if not (math.isfinite(self.eps) and self.eps > 0):
            raise SerbenchError(f"defense 'adv': eps must be a number > 0, got {self.eps}")
        if self.steps < 1:
            raise SerbenchError(f"defense 'adv': steps must be an integer >= 1, got {self.steps}")
        if not 0 <= self.resize <= 0.5:
            raise SerbenchError(f"defense 'adv': resize must be in [0, 0.5] (a fraction: 0.02 "
                                f"= up to 2% larger), got {self.resize}")
        if self.draws < 1:
            raise SerbenchError(f"defense 'adv': draws must be an integer >= 1, got {self.draws}")

    def perturb(self, model: Model, x: torch.Tensor, y: torch.Tensor, *,
                generator: torch.Generator) -> torch.Tensor:
        """Adversarial copies of ``x`` against ``model`` with the training ``method``."""
        steps = 1 if self.method == "fgsm" else self.steps
        step_size = self.eps if self.method == "fgsm" else 2.5 * self.eps / self.steps
        with evaluating(model):
            return linf_perturb(lambda z: F.cross_entropy(model(z), y, reduction="sum"), x,
                                eps=self.eps, steps=steps, step_size=step_size,
                                random_start=self.method == "pgd", generator=generator)

    def training_batch(self, model: Model, x: torch.Tensor, y: torch.Tensor, *, step: int,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """From step 1 on (the second epoch or round): the batch plus adversarial copies of a
        random half of it (at least one input), labelled as their originals."""
        if step < 1:
            return x, y
        half = torch.randperm(len(y), generator=generator)[:max(1, len(y) // 2)]
        copies = self.perturb(model, x[half], y[half], generator=generator)
        return torch.cat([x, copies]), torch.cat([y, y[half]])

    def transform_input(self, x: torch.Tensor, *, generator: torch.Generator) -> torch.Tensor:
        """(N, 1, mels, frames) spectrograms: each resized to a random size between its own and
        ``1 + resize`` times it, then zero-padded (0 is the mean of z-scored features) at a
        random offset to that largest size. Other inputs (an FL model's feature vectors) pass
        unchanged. One differentiable ``grid_sample`` does it for the whole batch: bilinear
        sampling with clamped borders is exactly ``F.interpolate``'s bilinear resize, and a
        mask zeroes the padding."""
        if x.dim() != 4:
            return x
        n, (height, width) = len(x), x.shape[-2:]
        out_h, out_w = round(height * (1 + self.resize)), round(width * (1 + self.resize))
        rows = _placement(n, height, out_h, generator, x.dtype)
        cols = _placement(n, width, out_w, generator, x.dtype)
        grid = torch.stack(torch.broadcast_tensors(cols.coords[:, None, :],
                                                   rows.coords[:, :, None]), dim=-1)
        sampled = F.grid_sample(x, grid, mode="bilinear", padding_mode="border",
                                align_corners=False)
        return sampled * (rows.inside[:, :, None] & cols.inside[:, None, :])[:, None]


class _Placement(NamedTuple):
    """Per input, along one axis of the output: the normalised input coordinate each output
    pixel samples (``grid_sample``'s convention) and whether it lies inside the resized input."""

    coords: torch.Tensor  # (N, out)
    inside: torch.Tensor  # (N, out), bool


def _placement(n: int, size: int, out: int, generator: torch.Generator,
               dtype: torch.dtype) -> _Placement:
    """A random resized length in [size, out] and a random offset in the padding, per input."""
    resized = torch.randint(size, out + 1, (n,), generator=generator)
    offset = (torch.rand(n, generator=generator) * (out - resized + 1)).long()
    pixel = torch.arange(out)[None, :] - offset[:, None]
    coords = (pixel.to(dtype) + 0.5) / resized[:, None].to(dtype) * 2 - 1
    return _Placement(coords, (pixel >= 0) & (pixel < resized[:, None]))
