"""How the adaptive FL attacker judges a candidate model on held-out shadow speakers: with its
sign and threshold calibrated there (issue 28).

A defense can leave gender in the updates while turning a model's margin around or shifting it
past zero: under ``udp`` the non-adaptive model scored 0.39 UAR on the target (mis-signed) and the
adaptive one predicted one gender for everyone. Both are signals an attacker calibrates away on
speakers it knows. The calibration uses held-out *shadow* speakers run under the same defense,
never the target's labels, so on a null corpus it picks a sign by chance and the target stays
at chance.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from torch import nn

from serbench.scoring import uar


class Calibration(NamedTuple):
    """Predict gender 1 where ``sign * (margin - threshold) > 0``."""

    sign: int = 1
    threshold: float = 0.0


#: The model as it is: gender 1 where its margin is positive.
IDENTITY = Calibration()


def margins(model: nn.Module, inputs: Sequence[torch.Tensor], batch_size: int = 256
            ) -> np.ndarray:
    """The model's logit of gender 1 over gender 0 for each row of its prepared ``inputs``."""
    model.eval()
    with torch.no_grad():
        logits = torch.cat([model(*(t[i:i + batch_size] for t in inputs))
                            for i in range(0, len(inputs[0]), batch_size)])
    return (logits[:, 1] - logits[:, 0]).double().numpy()


def grouped_margins(model: nn.Module, inputs: Sequence[torch.Tensor], groups: np.ndarray
                    ) -> np.ndarray:
    """:func:`margins` of a transductive model (``adapt``), each averaging size standardised
    with its own statistics, as the target's updates are."""
    out = np.empty(len(groups))
    for g in np.unique(groups):
        rows = torch.as_tensor(np.flatnonzero(groups == g))
        part = [t[rows] for t in inputs]
        out[rows.numpy()] = margins(model.adapt(part), part)
    return out


def calibrate(margin: np.ndarray, truth: np.ndarray) -> tuple[float, Calibration]:
    """The sign and threshold with the highest UAR on ``truth``, and that UAR. The model stays
    as it is where that is among the best; otherwise the threshold nearest zero wins, the
    positive sign first."""
    order = np.argsort(margin, kind="stable")
    m, y = margin[order], np.asarray(truth)[order]
    # Cut i lies below sorted row i (the last: above every row); gender 1 from row i on.
    ones = np.concatenate([[0], np.cumsum(y == 1)])
    zeros = np.concatenate([[0], np.cumsum(y == 0)])
    positive = ((ones[-1] - ones) / max(ones[-1], 1) + zeros / max(zeros[-1], 1)) / 2
    cuts = np.concatenate([[m[0] - 1.0], (m[:-1] + m[1:]) / 2, [m[-1] + 1.0]])
    between = np.concatenate([[True], m[1:] > m[:-1], [True]])  # no cut within equal margins
    options = []
    for sign, values in ((1, positive), (-1, 1 - positive)):
        values = np.where(between, values, -np.inf)
        at = np.flatnonzero(values >= values.max() - 1e-12)
        options.append((float(values.max()), sign, float(cuts[at[np.argmin(np.abs(cuts[at]))]])))
    top = max(value for value, _, _ in options)
    as_is = uar(truth, (margin > 0).astype(np.int64))
    if as_is >= top - 1e-12:
        return as_is, IDENTITY
    value, sign, cut = next(option for option in options if option[0] >= top - 1e-12)
    return value, Calibration(sign, cut)


class Calibrated(nn.Module):
    """A fitted attack model read with a :class:`Calibration`: logits ``(0, sign * (margin -
    threshold))``, so that its probabilities and argmax are the calibrated ones."""

    def __init__(self, model: nn.Module, calibration: Calibration) -> None:
        super().__init__()
        self.model, self.calibration = model, calibration

    def prepare(self, *tensors: torch.Tensor) -> list[torch.Tensor]:
        return self.model.prepare(*tensors)

    def adapt(self, inputs: list[torch.Tensor]) -> Calibrated:
        self.model.adapt(inputs)
        return self

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        logits = self.model(*inputs)
        sign, threshold = self.calibration
        d = sign * (logits[:, 1] - logits[:, 0] - threshold)
        return torch.stack([torch.zeros_like(d), d], dim=1)


def calibrated(model: nn.Module, calibration: Calibration) -> nn.Module:
    """``model`` read with ``calibration`` (itself where it is the identity)."""
    return model if calibration == IDENTITY else Calibrated(model, calibration)
