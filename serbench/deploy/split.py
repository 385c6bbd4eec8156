"""The split-computing and input surfaces deployed: T, the SER model, trained on a fold's
training speakers through the defense (its training hooks; noise-aware training at the
transmitted layer where the defense declares it), and the defense's transforms applied where
the deployed system applies them: to the transmitted h_T and to T's input at test time."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from serbench.corpora.data import CorpusData
from serbench.metrics import emotion_classes, emotion_labels
from serbench.models.targets import TIME_POOL, LayeredNet, build
from serbench.models.train import fit_defended, predict_proba
from serbench.plugins import Defense, Guarantee
from serbench.seeds import stable_seed


@dataclass(frozen=True)
class SplitRecipe:
    """What an attack on T needs deployed: T's family and size, its input (feature set and
    fixed length), its training, and the layer k the device transmits (``None``: no layer is
    transmitted; the defense's representation transform then plays no part in training)."""

    family: str
    size: str
    features: str
    frames: int
    epochs: int
    lr: float
    layer: str | None = None


@dataclass
class Target:
    """T as deployed: its front end (z-scores per feature with its training frames'
    statistics) and its network."""

    net: LayeredNet
    features: str
    shape: tuple[int, int, int]  #: input (1, dims, frames)
    mean: torch.Tensor
    std: torch.Tensor

    def inputs(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(N, 1, dims, frames) from padded sequences; padding stays 0 (the mean)."""
        return ((x - self.mean) / self.std * mask).unsqueeze(1)

    def hidden(self, x: torch.Tensor, layer: str, batch_size: int = 256) -> torch.Tensor:
        self.net.eval()
        with torch.no_grad():
            return torch.cat([self.net.upto(x[i:i + batch_size], layer)
                              for i in range(0, len(x), batch_size)])


@dataclass
class SplitDeployment:
    """T trained with the defense on one fold, and the defense's guarantee of that training
    (numbers, and their accounting context)."""

    target: Target
    privacy: dict[str, float]
    accounting: dict[str, Any]
    #: The defense's own attacker on the transmitted layer (``Private.own_attacker``): gender
    #: probabilities from h_T; ``None``: it has none.
    own_attacker: Callable[[torch.Tensor], torch.Tensor] | None = None


def train_target(recipe: SplitRecipe, data: CorpusData, rows: np.ndarray,
                 defense: Defense | None, seed: int
                 ) -> tuple[Target, Guarantee, Callable[[torch.Tensor], torch.Tensor] | None]:
    """T for emotion, from scratch, on ``data``'s ``rows``: through ``defense``'s training hooks
    if it ``trains``, and with its representation transform at ``recipe.layer`` in training if
    it declares ``noise_aware`` (SPEC §4); with the guarantee of that training and the
    defense's own attacker. A defense that ``reads_attribute`` is given the genders of these
    ``rows`` only (T's training speakers, never a test speaker)."""
    x, mask = data.padded(recipe.features, recipe.frames)
    x, mask = x[rows], mask[rows]
    frames = mask.sum(dim=(0, 2))
    mean = (x * mask).sum(dim=(0, 2)) / frames.clamp(min=1)
    var = ((x - mean[:, None]) ** 2 * mask).sum(dim=(0, 2)) / frames.clamp(min=1)
    classes = emotion_classes(data.table["emotion"])
    shape = (1, x.shape[1], x.shape[2])
    net = build(recipe.family, shape, len(classes), recipe.size, seed=seed,
                time_pool=TIME_POOL[recipe.size])
    target = Target(net, recipe.features, shape, mean[:, None], var.sqrt()[:, None] + 1e-5)
    y = torch.tensor(emotion_labels(data.table["emotion"].iloc[rows], classes))
    hook = None
    if defense is not None and recipe.layer is not None and defense.tags.noise_aware:
        generator = torch.Generator().manual_seed(seed)

        def noisy(module: nn.Module, _: object, h: torch.Tensor) -> torch.Tensor | None:
            return transmit(defense, h, generator) if module.training else None

        hook = net.layers[recipe.layer].register_forward_hook(noisy)
    try:
        _, guarantee, own = fit_defended(
            net, [target.inputs(x, mask)], y, epochs=recipe.epochs, lr=recipe.lr,
            weight_decay=1e-4, seed=seed, defense=defense,
            attribute=torch.tensor((data.table["gender"].iloc[rows] == "M").to_numpy(),
                                   dtype=torch.long),
            transmitted=net.layers[recipe.layer] if recipe.layer is not None else None)
    finally:
        if hook is not None:
            hook.remove()
    return target, guarantee, own


def deploy_split(recipe: SplitRecipe, data: CorpusData, rows: np.ndarray, defense: Defense,
                 *, seed: int, fold: int) -> SplitDeployment:
    """T as deployed on ``fold`` (trained on ``rows``), with its training's guarantee; the
    training works on its own copy of the defense, as every deployment does."""
    target, guarantee, own = train_target(recipe, data, rows, copy.deepcopy(defense),
                                          stable_seed(seed, fold, "target", recipe.family,
                                                      recipe.features))
    return SplitDeployment(target, dict(guarantee.numbers), guarantee.accounting(), own)


def transmit(defense: Defense, h: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """h_T as it leaves the device: the defense's representation transform."""
    return defense.transform_representation(h, generator=generator)


def through_input(defense: Defense, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """T's input as the deployed system feeds it: the defense's input transform (one draw)."""
    return defense.transform_input(x, generator=generator)


def defended_proba(defense: Defense, net: nn.Module, x: torch.Tensor,
                   generator: torch.Generator) -> torch.Tensor:
    """The deployed prediction: T's class probabilities averaged over the defense's declared
    number of draws of its input transform (``Defense.input_draws``)."""
    return torch.stack([predict_proba(net, [through_input(defense, x, generator)])
                        for _ in range(defense.input_draws)]).mean(0)
