"""One supervised training loop for every classifier serbench trains (attack models, targets).

Early stopping on a validation set keeps attackers as strong as the data allows without a
hand-tuned epoch count per corpus.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from serbench.plugins import Guarantee
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


@dataclass
class Validation:
    """The one early-stopping policy: after every epoch the model is scored on held-out
    ``inputs`` (``score``: any comparable; default their UAR), kept in ``curve``. Its best
    epoch is the first with the highest score from epoch ``min_epochs`` on (``min_epochs - 1``
    in 0-based terms); training stops once ``patience`` epochs after it bring no better one.
    The trainer restores the best epoch's weights, or a caller reads :meth:`best` to refit
    for that many epochs on more data (the intercept attack's attackers)."""

    inputs: Inputs
    labels: torch.Tensor | np.ndarray
    patience: int = 5
    min_epochs: int = 0
    score: Callable[[nn.Module], Any] | None = None
    curve: list[Any] = field(default_factory=list)

    def __call__(self, model: nn.Module) -> Any:
        if self.score is not None:
            return self.score(model)
        pred = predict_proba(model, self.inputs).argmax(1).numpy()
        return uar(np.asarray(self.labels), pred)

    def best(self) -> int:
        """The best epoch so far (0-based)."""
        start = max(self.min_epochs - 1, 0)
        return max(range(start, len(self.curve)), key=lambda e: (self.curve[e], -e))

    def stop(self) -> bool:
        return len(self.curve) > self.min_epochs and len(self.curve) - 1 - self.best() >= \
            self.patience


def fit_classifier(model: nn.Module, inputs: Inputs, labels: torch.Tensor, *,
                   val: Validation | None = None, epochs: int = 30, lr: float = 1e-3,
                   batch_size: int = 32, weight_decay: float = 0.0, seed: int = 0,
                   advance: Advance | None = None, defense: Defense | None = None,
                   restore_best: bool = True) -> nn.Module:
    """Adam with class-balanced cross-entropy, early-stopped by ``val`` (:class:`Validation`)
    with the best epoch's weights restored (``restore_best``). A ``defense`` that trains wraps
    the training (:func:`fit_defended`)."""
    return fit_defended(model, inputs, labels, val=val, epochs=epochs, lr=lr,
                        batch_size=batch_size, weight_decay=weight_decay, seed=seed,
                        advance=advance, defense=defense, restore_best=restore_best)[0]


class Defended(NamedTuple):
    """What :func:`fit_defended` returns: the trained model, the guarantee of its training, and
    the attacker the defense trained alongside (``Private.own_attacker``), if any."""

    model: nn.Module
    guarantee: Guarantee
    own_attacker: Callable[[torch.Tensor], torch.Tensor] | None = None


def fit_defended(model: nn.Module, inputs: Inputs, labels: torch.Tensor, *,
                 val: Validation | None = None, epochs: int = 30, lr: float = 1e-3,
                 batch_size: int = 32, weight_decay: float = 0.0, seed: int = 0,
                 advance: Advance | None = None, defense: Defense | None = None,
                 restore_best: bool = True, attribute: torch.Tensor | None = None,
                 transmitted: nn.Module | None = None) -> Defended:
    """:func:`fit_classifier`, with the guarantee of the training it ran. A ``defense`` that
    ``trains`` (DP-SGD, adversarial training) wraps it: its ``make_private`` sees the model,
    optimizer, loss and a data loader and returns the guarantee of the steps taken, its
    ``training_batch`` sees every batch. One that ``reads_attribute`` is also given the
    training examples' ``attribute`` (aligned with the loader's rows) and ``transmitted``."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    counts = torch.bincount(labels, minlength=int(labels.max()) + 1).float()
    class_weight = counts.sum() / (len(counts) * counts.clamp(min=1))
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    trains = defense is not None and defense.tags.trains
    spent: Callable[[], Guarantee] = Guarantee
    own = None
    if trains:
        if len(inputs) != 1:
            raise ValueError("a defense that trains wraps single-input models only")
        loader = DataLoader(TensorDataset(*inputs, labels), batch_size=batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(seed))
        known = {"attribute": attribute, "transmitted": transmitted} \
            if defense.tags.reads_attribute else {}
        private = defense.make_private(model, opt, BalancedCrossEntropy(class_weight), loader,
                                       epochs=epochs, generator=gen, **known)
        model, opt, criterion, loader, spent = private[:5]
        own = private.own_attacker

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

    best_state = None
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
        val.curve.append(val(model))
        if restore_best and val.best() == epoch:
            best_state = copy.deepcopy(model.state_dict())
        if val.stop():
            break
    if best_state is not None:
        model.load_state_dict(best_state)
    return Defended(model.eval(), spent(), own)
