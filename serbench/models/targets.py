"""SER target models for split computing (SPEC §3.1): CNN families on log-mel and an LSTM on LLDs.

Every model is a :class:`LayeredNet`, an ordered list of named layers, because the attack needs
three things of the target T: the output h_T of any named layer k, T continued from h_T (the
server side, for T's emotion prediction), and T's layers after k rebuilt with fresh weights (the
"same architecture" attacker). Every hidden representation is a 4-D map (batch, channels,
height, time) so any attacker family can read any layer of any target: a CNN reads it as an
image with that many channels, the LSTM as a sequence of channels x height frames.

Sizes: ``cpu`` (the default) is small enough to train dozens of models per run on two CPU
cores; ``full`` follows VGG-16, ResNet-34 and DenseNet-121 (widths and depths) for users with
more compute. Inputs are one-channel (feature dims x frames) images: log-mel bands or LLDs.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from typing import NamedTuple

import torch
from torch import nn

from serbench.errors import SerbenchError, unknown_name

#: (channels, height, time) of a feature map; the input is (1, feature dims, frames). Builders
#: need only channels and height: every family accepts any number of frames.
Shape = tuple[int, int, int]
SIZES = ("cpu", "full")


class LayeredNet(nn.Module):
    """Named layers applied in order; the last one is the classifier ``fc``."""

    def __init__(self, family: str, layers: dict[str, nn.Module]) -> None:
        super().__init__()
        self.family = family
        self.layers = nn.ModuleDict(layers)

    @property
    def layer_names(self) -> tuple[str, ...]:
        return tuple(self.layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers.values():
            x = layer(x)
        return x

    def upto(self, x: torch.Tensor, k: str) -> torch.Tensor:
        """h at layer ``k``: the output of the layers up to and including ``k``."""
        for name, layer in self.layers.items():
            x = layer(x)
            if name == k:
                return x
        raise KeyError(k)

    def after(self, k: str) -> LayeredNet:
        """The layers after ``k`` (the same module objects), as a network reading h at ``k``."""
        names = self.layer_names
        return LayeredNet(self.family, {n: self.layers[n] for n in names[names.index(k) + 1:]})


def _conv(c_in: int, c_out: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(inplace=True))


def _pool() -> nn.MaxPool2d:
    # ceil_mode keeps a 1-pixel map 1 pixel, so deep attackers can read late, small layers.
    return nn.MaxPool2d(2, ceil_mode=True)


def _head(channels: int, n_out: int, dropout: float) -> dict[str, nn.Module]:
    """Global average pooling (kept 4-D, so it is a readable layer) and the classifier."""
    return {"gap": nn.AdaptiveAvgPool2d(1),
            "fc": nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, n_out))}


class _Config(NamedTuple):
    widths: tuple[int, ...]
    depths: tuple[int, ...]


_VGG = {"cpu": _Config((4, 8, 16, 32), (1, 1, 1, 1)),
        "full": _Config((64, 128, 256, 512, 512), (2, 2, 3, 3, 3))}  # VGG-16


def vgg(in_shape: Shape, n_out: int, size: str) -> dict[str, nn.Module]:
    """Stacks of 3x3 conv blocks, each followed by max-pooling (``block<i>``, ``pool<i>``)."""
    cfg, c = _VGG[size], in_shape[0]
    layers: dict[str, nn.Module] = {}
    for i, (width, depth) in enumerate(zip(cfg.widths, cfg.depths), 1):
        layers[f"block{i}"] = nn.Sequential(*(_conv(c if j == 0 else width, width)
                                              for j in range(depth)))
        layers[f"pool{i}"] = _pool()
        c = width
    return layers | _head(c, n_out, 0.3)


class _Residual(nn.Module):
    """Basic residual block; a strided 1x1 projection when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(_conv(c_in, c_out, stride),
                                  nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(c_out))
        self.skip = nn.Identity() if stride == 1 and c_in == c_out else nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.body(x) + self.skip(x))


_RESNET = {"cpu": _Config((4, 8, 16, 32), (1, 1, 1, 1)),
           "full": _Config((64, 128, 256, 512), (3, 4, 6, 3))}  # ResNet-34


def resnet(in_shape: Shape, n_out: int, size: str) -> dict[str, nn.Module]:
    """A conv stem and max-pool, then residual stages that halve the map (``stage<i>``)."""
    cfg = _RESNET[size]
    layers: dict[str, nn.Module] = {"stem": _conv(in_shape[0], cfg.widths[0]), "pool1": _pool()}
    c = cfg.widths[0]
    for i, (width, depth) in enumerate(zip(cfg.widths, cfg.depths), 1):
        layers[f"stage{i}"] = nn.Sequential(*(_Residual(c if j == 0 else width, width,
                                                        2 if j == 0 and i > 1 else 1)
                                              for j in range(depth)))
        c = width
    return layers | _head(c, n_out, 0.3)


class _DenseBlock(nn.Module):
    """Each BN-ReLU-conv layer adds ``growth`` channels, concatenated to all earlier ones."""

    def __init__(self, c_in: int, growth: int, depth: int) -> None:
        super().__init__()
        self.units = nn.ModuleList(
            nn.Sequential(nn.BatchNorm2d(c_in + i * growth), nn.ReLU(inplace=False),
                          nn.Conv2d(c_in + i * growth, growth, 3, 1, 1, bias=False))
            for i in range(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for unit in self.units:
            x = torch.cat([x, unit(x)], 1)
        return x


class _DenseConfig(NamedTuple):
    stem: int
    growth: int
    depths: tuple[int, ...]


_DENSENET = {"cpu": _DenseConfig(4, 4, (2, 2, 2, 2)),
             "full": _DenseConfig(64, 32, (6, 12, 24, 16))}  # DenseNet-121


def densenet(in_shape: Shape, n_out: int, size: str) -> dict[str, nn.Module]:
    """A conv stem and max-pool, dense blocks, and transitions (1x1 conv halving the channels,
    average pooling) between them (``dense<i>``, ``trans<i>``)."""
    cfg = _DENSENET[size]
    layers: dict[str, nn.Module] = {"stem": _conv(in_shape[0], cfg.stem), "pool1": _pool()}
    c = cfg.stem
    for i, depth in enumerate(cfg.depths, 1):
        layers[f"dense{i}"] = _DenseBlock(c, cfg.growth, depth)
        c += depth * cfg.growth
        if i < len(cfg.depths):
            layers[f"trans{i}"] = nn.Sequential(nn.BatchNorm2d(c), nn.ReLU(),
                                                nn.Conv2d(c, c // 2, 1, bias=False),
                                                nn.AvgPool2d(2, ceil_mode=True))
            c //= 2
    return layers | {"norm": nn.Sequential(nn.BatchNorm2d(c), nn.ReLU())} | _head(c, n_out, 0.3)


class _Recurrent(nn.Module):
    """An LSTM over the time axis of a (batch, channels, height, time) map; returns its hidden
    states as a (batch, hidden, 1, time) map."""

    def __init__(self, d_in: int, hidden: int) -> None:
        super().__init__()
        self.lstm = nn.LSTM(d_in, hidden, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(x.flatten(1, 2).transpose(1, 2))
        return out.transpose(1, 2).unsqueeze(2)


class _TimeMean(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3), keepdim=True)


_LSTM = {"cpu": (32, 32), "full": (256, 256)}  # hidden units of each stacked LSTM


def lstm(in_shape: Shape, n_out: int, size: str) -> dict[str, nn.Module]:
    """Stacked LSTMs (``lstm<i>``), mean over time (``pool``), classifier: the recurrent model on
    low-level descriptors, each frame's channels x height values being its input vector."""
    d = in_shape[0] * in_shape[1]
    layers: dict[str, nn.Module] = {}
    for i, width in enumerate(_LSTM[size], 1):
        layers[f"lstm{i}"] = _Recurrent(d, width)
        d = width
    return layers | {"pool": _TimeMean(),
                     "fc": nn.Sequential(nn.Flatten(), nn.Dropout(0.3), nn.Linear(d, n_out))}


Builder = Callable[[Shape, int, str], dict[str, nn.Module]]
FAMILIES: dict[str, Builder] = {"vgg": vgg, "resnet": resnet, "densenet": densenet, "lstm": lstm}
#: The convolutional families ("different architecture" attackers of a CNN target).
CNN_FAMILIES = ("vgg", "resnet", "densenet")


#: Time pooling of a target's ``input`` layer by size: 10 ms frames averaged to 40 ms keep
#: prosody and spectra but cut a CPU model's cost fourfold (attackers never pool their input).
TIME_POOL = {"cpu": 4, "full": 1}


def build(family: str, in_shape: Shape, n_out: int, size: str = "cpu", *, seed: int = 0,
          time_pool: int = 1) -> LayeredNet:
    """A freshly initialised network (``seed`` fixes the initial weights). Its first layer,
    ``input``, average-pools ``time_pool`` frames (identity for 1)."""
    if family not in FAMILIES:
        raise unknown_name("model", family, FAMILIES)
    if size not in SIZES:
        raise unknown_name("model size", size, SIZES)
    pool = nn.AvgPool2d((1, time_pool), ceil_mode=True) if time_pool > 1 else nn.Identity()
    with torch.random.fork_rng():  # seeded weights, the caller's random state untouched
        torch.manual_seed(seed)
        return LayeredNet(family, {"input": pool} | FAMILIES[family](in_shape, n_out, size))


@cache
def readable_layers(family: str, size: str = "cpu") -> tuple[str, ...]:
    """The layers whose output T could transmit: every layer except the classifier."""
    return build(family, (1, 8, 8), 2, size).layer_names[:-1]


def default_layer(family: str) -> str:
    """The paper's k: the first pooling layer of a CNN; the first LSTM of the recurrent model."""
    return "lstm1" if family == "lstm" else "pool1"


def check_layer(family: str, size: str, layer: str) -> None:
    valid = readable_layers(family, size)
    if layer not in valid:
        raise SerbenchError(f"unknown layer {layer!r} of the {size} {family} target; valid "
                            f"layers: {', '.join(valid)}")


class JointHead(nn.Module):
    """Multi-task output as one softmax: gender and emotion logits a, b give joint logits
    a_g + b_e, whose cross-entropy is exactly CE(gender) + CE(emotion) (the softmax factorises),
    so the application-aware attacker trains with the ordinary classifier loop."""

    def __init__(self, net: nn.Module, n_gender: int = 2) -> None:
        super().__init__()
        self.net, self.n_gender = net, n_gender

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)
        gender, emotion = logits[:, :self.n_gender], logits[:, self.n_gender:]
        return (gender[:, :, None] + emotion[:, None, :]).flatten(1)
