"""The SER model T as the attacks that train it deploy it (intercept, the input attacks): its
fixed-length input, its training per fold through the deployed defense, and the fold's T kept
for both attack modes."""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from torch import nn

from serbench.context import CorpusData, EvalContext
from serbench.metrics import emotion_classes, emotion_labels
from serbench.models.targets import TIME_POOL, LayeredNet, build
from serbench.models.train import fit_classifier
from serbench.plugins import Defense


def stable_seed(*parts: object) -> int:
    """A stable seed for one named step (Python's hash() of a string changes per process)."""
    return zlib.crc32("/".join(map(str, parts)).encode()) & 0x7FFFFFFF


@dataclass
class Target:
    """The deployed T: its front end (z-scores per feature with its training frames'
    statistics) and its network. ``features`` names the input it reads."""

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


def pad_sequences(seqs: list[np.ndarray], frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, dims, frames) sequences centre-cropped or zero-padded at the end, and the (N, 1,
    frames) mask of real frames: T's input has one fixed length."""
    x = np.zeros((len(seqs), seqs[0].shape[1], frames), dtype=np.float32)
    mask = np.zeros((len(seqs), 1, frames), dtype=np.float32)
    for i, seq in enumerate(seqs):
        start = max(0, (len(seq) - frames) // 2)
        part = seq[start:start + frames]
        x[i, :, :len(part)] = part.T
        mask[i, :, :len(part)] = 1.0
    return torch.from_numpy(x), torch.from_numpy(mask)


class _Deployed(NamedTuple):
    """The current fold's deployed T, the same in both attack modes."""

    key: tuple  #: (corpus, fold, defense, seed, features) it was trained for
    corpus: CorpusData  #: kept so that the id in ``key`` stays its own
    target: Target
    privacy: dict[str, float]  #: the defense's ``training_privacy`` of T's training


class DeploysTarget:
    """What the attacks that train T share (intercept, the input attacks): T's fixed-length
    inputs per corpus, and T as deployed on the current fold. Needs the fields ``frames`` and
    ``target``; :meth:`noise_layer` names the layer T transmits, if any."""

    def __post_init__(self) -> None:
        #: Per (corpus object, feature set): the corpus (kept, so its id stays its own) and its
        #: padded inputs, built once and shared by every fold.
        self._inputs: dict[tuple[int, str], tuple[CorpusData, torch.Tensor, torch.Tensor]] = {}
        self._deployed: _Deployed | None = None
        super().__post_init__()

    def noise_layer(self) -> str | None:
        """The layer whose transmission the defense transforms in T's training, if any."""
        return None

    def padded(self, data: CorpusData, features: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A corpus's sequences at T's fixed length, computed once per run."""
        key = (id(data), features)
        if key not in self._inputs:
            self._inputs[key] = (data, *pad_sequences(data.features(features), self.frames))
        return self._inputs[key][1:]

    def deployed(self, run: FoldSides) -> tuple[Target, dict[str, float]]:
        """T as deployed on ``run``'s fold, trained through the defense (its training hooks,
        and its transformation of :meth:`noise_layer` in training: noise-aware training), with
        the defense's ``training_privacy`` of that training. The same in both attack modes,
        which the runner evaluates fold by fold, so it is kept until the next fold."""
        ctx = run.ctx
        key = (id(ctx.target), run.fold, id(ctx.defense), ctx.seed, ctx.features)
        if self._deployed is None or self._deployed.key != key:
            self._deployed = None  # free the previous fold's T first
            target = run.train_target(self.target, ctx.features, ctx.defense,
                                      self.noise_layer())
            self._deployed = _Deployed(key, ctx.target, target, ctx.defense.training_privacy())
        return self._deployed.target, self._deployed.privacy


class FoldSides:
    """One fold's speakers and T trained without them. The attack needs ``padded``, ``size``,
    ``target_epochs`` and ``lr`` (:class:`DeploysTarget` and its fields).

    Sides: "target" (T's training speakers: T trains on them, and so do the worst and s2
    attackers), "shadow" (s1, s3, s4 attackers) and "test" (the fold's speakers, the only ones
    scored). The attacker's sides transmit through ``ctx.shadow_defense`` (what it simulates),
    the test side through ``ctx.defense`` (what T deploys).
    """

    def __init__(self, attack: DeploysTarget, ctx: EvalContext, fold: int) -> None:
        self.attack, self.ctx, self.fold = attack, ctx, fold
        self.classes = emotion_classes(ctx.target.table["emotion"])
        in_fold = (ctx.target.table["fold"] == fold).to_numpy()
        self.sides: dict[str, tuple[CorpusData, np.ndarray, Defense]] = {
            "target": (ctx.target, np.flatnonzero(~in_fold), ctx.shadow_defense),
            "test": (ctx.target, np.flatnonzero(in_fold), ctx.defense)}
        if ctx.shadow is not None:
            self.sides["shadow"] = (ctx.shadow, np.arange(len(ctx.shadow.table)),
                                    ctx.shadow_defense)

    def table(self, side: str) -> pd.DataFrame:
        data, rows, _ = self.sides[side]
        return data.table.iloc[rows]

    def train_target(self, family: str, features: str, defense: Defense | None = None,
                     layer: str | None = None) -> Target:
        """T for emotion, from scratch, on the fold's training speakers, trained through
        ``defense``: its training hooks if it ``trains``, and with its transformation of the
        transmitted ``layer`` applied in training (noise-aware training, SPEC §4)."""
        data, rows, _ = self.sides["target"]
        x, mask = self.attack.padded(data, features)
        x, mask = x[rows], mask[rows]
        frames = mask.sum(dim=(0, 2))
        mean = (x * mask).sum(dim=(0, 2)) / frames.clamp(min=1)
        var = ((x - mean[:, None]) ** 2 * mask).sum(dim=(0, 2)) / frames.clamp(min=1)
        seed = stable_seed(self.ctx.seed, self.fold, "target", family, features)
        shape = (1, x.shape[1], x.shape[2])
        net = build(family, shape, len(self.classes), self.attack.size, seed=seed,
                    time_pool=TIME_POOL[self.attack.size])
        target = Target(net, features, shape, mean[:, None], var.sqrt()[:, None] + 1e-5)
        y = torch.tensor(emotion_labels(self.table("target")["emotion"], self.classes))
        hook = None
        if (defense is not None and layer is not None
                and type(defense).transform_representation is not Defense.transform_representation):
            generator = torch.Generator().manual_seed(seed)

            def transmit(module: nn.Module, _: object, h: torch.Tensor) -> torch.Tensor | None:
                if module.training:
                    return defense.transform_representation(h, generator=generator)
                return None

            hook = net.layers[layer].register_forward_hook(transmit)
        try:
            fit_classifier(net, [target.inputs(x, mask)], y, epochs=self.attack.target_epochs,
                           lr=self.attack.lr, weight_decay=1e-4, seed=seed, defense=defense)
        finally:
            if hook is not None:
                hook.remove()
        return target
