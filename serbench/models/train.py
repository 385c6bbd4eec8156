"""One supervised training loop for every classifier serbench trains (attack models, targets).

Early stopping on a validation set keeps attackers as strong as the data allows without a
hand-tuned epoch count per corpus.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from serbench.progress import Advance
from serbench.scoring import uar

if TYPE_CHECKING:
    from serbench.plugins import Defense

Inputs = Sequence[torch.Tensor]


def predict_proba(model: nn.Module, inputs: Inputs, batch_size: int = 256) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        chunks = [torch.softmax(model(*(t[i:i + batch_size] for t in inputs)), dim=1)
                  for i in range(0, len(inputs[0]), batch_size)]
    return torch.cat(chunks)


class BalancedCrossEntropy(nn.Module):
    """Class-weighted cross-entropy whose mean is over examples (each example's loss its own, as
    DP-SGD's per-example clipping needs); ``reduction="none"`` gives the per-example losses."""

    def __init__(self, class_weight: torch.Tensor, reduction: str = "mean") -> None:
        super().__init__()
        self.class_weight, self.reduction = class_weight, reduction

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        loss = self.class_weight[y] * F.cross_entropy(logits, y, reduction="none")
        return loss.mean() if self.reduction == "mean" else loss


def fit_classifier(model: nn.Module, inputs: Inputs, labels: torch.Tensor, *,
                   val: tuple[Inputs, torch.Tensor] | None = None, epochs: int = 30,
                   lr: float = 1e-3, batch_size: int = 32, weight_decay: float = 0.0,
                   patience: int = 5, seed: int = 0, advance: Advance | None = None,
                   defense: Defense | None = None) -> nn.Module:
    """Adam with class-balanced cross-entropy; keeps the weights of the best validation UAR.

    A ``defense`` that ``trains`` (DP-SGD, adversarial training) wraps the training: its
    ``make_private`` sees the model, optimizer, loss and a data loader, its ``training_batch``
    every batch.
    """
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    counts = torch.bincount(labels, minlength=int(labels.max()) + 1).float()
    class_weight = counts.sum() / (len(counts) * counts.clamp(min=1))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    trains = defense is not None and defense.trains
    if trains:
        if len(inputs) != 1:
            raise ValueError("a defense that trains wraps single-input models only")
        loader = DataLoader(TensorDataset(*inputs, labels), batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        model, opt, criterion, loader = defense.make_private(
            model, opt, BalancedCrossEntropy(class_weight), loader, epochs=epochs, generator=gen)

    def batches(epoch: int) -> Iterator[tuple[list[torch.Tensor], torch.Tensor]]:
        if not trains:
            for batch in torch.randperm(len(labels), generator=gen).split(batch_size):
                yield [t[batch] for t in inputs], labels[batch]
            return
        for x, y in loader:
            # Poisson sampling may draw an empty batch (probability about e^-batch_size):
            # skipped, where DP-SGD would take a noise-only step.
            if len(y):
                x, y = defense.training_batch(model, x, y, step=epoch, generator=gen)
                yield [x], y

    best, best_state, stale = -np.inf, None, 0
    for epoch in range(epochs):
        model.train()
        for xs, y in batches(epoch):
            if trains:
                loss = criterion(model(*xs), y)
            else:
                loss = F.cross_entropy(model(*xs), y, weight=class_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if advance:
            advance(1)
        if val is None:
            continue
        pred = predict_proba(model, val[0]).argmax(1).numpy()
        score = uar(val[1].numpy(), pred)
        if score > best:
            best, best_state, stale = score, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
            if stale >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    return model.eval()
