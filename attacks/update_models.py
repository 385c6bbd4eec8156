"""The weight-space attack models of the FL attack (:mod:`attacks.fl_inference`): the reference
CNN on one layer's update as an image, and a logistic regression on the flattened update. The
input-space model of the inversion candidate lives in :mod:`attacks.update_inversion`."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn
from torch.nn import functional as F


class UpdateAttackModel(nn.Module):
    """The reference attack model: three conv5x5 + max-pool blocks (16/32/64 channels) on the
    weight update, its output concatenated with the bias update, then FC 256 -> 128 -> 2.

    ``input_pool`` average-pools the weight image first: a CPU-cost setting whose effect on
    leakage is measured in benchmarks/attack_models.py. The pooling has no parameters, so
    :meth:`prepare` applies it once to a data set instead of in every epoch's forward pass
    (same numbers, a third less time in the default run). Adaptive pooling at the end lets one
    model serve every layer's shape.
    """

    def __init__(self, bias_dim: int, input_pool: int = 1, dropout: float = 0.2) -> None:
        super().__init__()
        self.input_pool = input_pool
        self.conv = nn.Sequential(
            nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(16, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(4, ceil_mode=True),
            nn.Dropout2d(dropout),
            nn.Conv2d(32, 64, 5, padding=2), nn.BatchNorm2d(64), nn.ReLU(),
            nn.AdaptiveMaxPool2d((4, 8)), nn.Dropout2d(dropout), nn.Flatten(),
        )
        self.head = nn.Sequential(
            nn.Linear(64 * 4 * 8 + bias_dim, 256), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(256, 128), nn.ReLU(), nn.Dropout(dropout), nn.Linear(128, 2),
        )

    def prepare(self, weight: torch.Tensor, bias: torch.Tensor) -> list[torch.Tensor]:
        """The model's inputs for (normalised) updates: the pooled weight image and the bias."""
        if self.input_pool == 1:
            return [weight.unsqueeze(1).contiguous(), bias]
        chunk = 256  # a strided view of the training set is pooled without copying it whole
        return [torch.cat([F.avg_pool2d(weight[i:i + chunk].unsqueeze(1), self.input_pool,
                                        ceil_mode=True) for i in range(0, len(weight), chunk)]),
                bias]

    def forward(self, image: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.head(torch.cat([self.conv(image), bias], dim=1))


class LinearUpdateModel(nn.Module):
    """L2-regularised logistic regression on the whole flattened update.

    With the few hundred shadow updates a CPU-sized study produces, the reference CNN memorises
    its shadow speakers; this model generalises better there, so the attack may choose it.
    It never pools: neighbouring hidden units and features are unrelated, and averaging them
    erased the signal (benchmarks/attack_models.py: RAVDESS UAR 0.66 unpooled, 0.49 pooled 8x8).
    """

    def __init__(self, c: float = 1e-3) -> None:
        super().__init__()
        self.c = c

    @staticmethod
    def _flat(*tensors: torch.Tensor) -> np.ndarray:
        """The rows the regression reads: the update's tensors flattened and concatenated, or
        one tensor already laid out so (the attack's training set: no copy)."""
        if len(tensors) == 1:
            return tensors[0].flatten(1).numpy()
        return torch.cat([t.flatten(1) for t in tensors], 1).numpy()

    def prepare(self, weight: torch.Tensor, bias: torch.Tensor) -> list[torch.Tensor]:
        """The model's inputs for (normalised) updates: the updates themselves."""
        return [weight, bias]

    def fit(self, inputs: list[torch.Tensor], labels: torch.Tensor) -> LinearUpdateModel:
        self.clf = LogisticRegression(C=self.c, max_iter=500, tol=1e-3, class_weight="balanced")
        self.clf.fit(self._flat(*inputs), labels.numpy())
        return self

    def forward(self, *inputs: torch.Tensor) -> torch.Tensor:
        """Logits (0, d) whose softmax is the model's probabilities: unlike its log-probabilities
        they stay finite (and warning-free) for confidently classified updates."""
        d = torch.as_tensor(self.clf.decision_function(self._flat(*inputs)))
        return torch.stack([torch.zeros_like(d), d], dim=1)
