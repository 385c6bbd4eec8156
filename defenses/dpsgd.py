"""Sample-level DP-SGD (SPEC §4; Abadi et al. 2016) with Opacus' PrivacyEngine: every training
step clips each example's gradient to L2 norm ``max_grad_norm`` and adds N(0, (z·max_grad_norm)²)
to the sum, on Poisson-sampled batches; ε at ``delta`` comes from Opacus' RDP accountant.

It protects what a client shares in FL and T's training in split computing, and it bounds what
they reveal about one *utterance*. Gender belongs to the speaker, so every utterance of a client
carries it: the guarantee does not cover gender, and any drop in leakage comes from the noise.

Accounting (docs/dpsgd.md):

- Central training (T, through ``fit_classifier``): Opacus' own. The loader's Poisson sampling
  rate is q = 1/len(loader) (batch/n); the accountant counts the optimizer steps actually taken.
- FL (after :meth:`DPSGD.calibrate`): a client's local training in a round it takes part in is
  one DP-SGD step on its whole local training set (Poisson sampling at rate 1): FedSGD shares
  that noisy clipped mean gradient, FedAvg takes one Adam step with it. One such participation
  is a Gaussian mechanism with noise multiplier z whatever the client's size, so every client
  has the same ε. Clients take part in rounds drawn independently at the client sampling rate
  p, so a client's participations are Binomial(rounds, p), and exceed P with probability at
  most δ/2, where P is the smallest count for which that holds. ε is the RDP accountant's ε at
  δ/2 for P Gaussian releases (sampling rate 1): (ε, δ)-DP for every client's utterances, against
  the server, which knows who took part when. There is no amplification by client sampling.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.validators import ModuleValidator
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from serbench.dp import (check_dp_parameters, participations as participation_bound, rdp_epsilon,
                         rdp_noise_multiplier)
from serbench.errors import SerbenchError
from serbench.plugins import Defense, Surface


class _ClipPerExample(torch.autograd.Function):
    """Identity forward. Backward: Opacus' first ghost-clipping pass on the model below (its
    hooks record each example's gradient norm), then the incoming gradient with each example's
    row scaled by its clipping factor, so the rest of the backward is Opacus' second pass."""

    @staticmethod
    def forward(ctx, out: torch.Tensor, gsm: GradSampleModuleFastGradientClipping
                ) -> torch.Tensor:
        ctx.gsm = gsm
        ctx.save_for_backward(out)
        return out.view_as(out)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        out, = ctx.saved_tensors
        gsm = ctx.gsm
        torch.autograd.grad(out, [p for p in gsm.parameters() if p.requires_grad], grad,
                            retain_graph=True)
        coef = gsm.get_clipping_coef()
        gsm.disable_hooks()
        # A mean loss gives each example 1/n of its gradient; Opacus' optimizer wants the sum.
        return grad * (coef * len(grad)).view(-1, *[1] * (grad.dim() - 1)), None


class GhostClipped(nn.Module):
    """The model a trainer trains under DP-SGD: Opacus' ghost clipping (per-example gradient
    norms without materialising per-example gradients, then a backward weighted by the clipping
    factors) inside the trainer's own ``loss.backward()``. Opacus runs its two passes from a loss
    object of its own, but serbench's trainers compute their loss themselves. Hooks stay off
    outside training steps, so gradients through the trained model (e.g. adversarial
    examples) work as without DP."""

    def __init__(self, gsm: GradSampleModuleFastGradientClipping) -> None:
        super().__init__()
        self.gsm = gsm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not (self.training and torch.is_grad_enabled()):
            return self.gsm(x)
        self.gsm.enable_hooks()
        return _ClipPerExample.apply(self.gsm(x), self.gsm)


def _dp_compatible(model: nn.Module, optimizer: Optimizer) -> tuple[nn.Module, Optimizer]:
    """``model`` with Opacus' DP-compatible layers swapped in *in place* (BatchNorm ->
    GroupNorm, which per-example privacy needs; LSTM -> DPLSTM), so a caller that keeps the
    model object (the intercept attack's T) trains and deploys the swapped layers. The
    optimizer is rebuilt with the same settings over the new parameters."""
    for name, child in list(model.named_children()):
        if ModuleValidator.validate(child, strict=False):
            setattr(model, name, ModuleValidator.fix(child))
    return model, type(optimizer)(model.parameters(), **optimizer.defaults)


def _out_of_place(model: nn.Module) -> None:
    """In-place activations (``ReLU(inplace=True)``) break Opacus' backward hooks."""
    for module in model.modules():
        if getattr(module, "inplace", False):
            module.inplace = False


@dataclass
class DPSGD(Defense):
    name: ClassVar[str] = "dpsgd"
    summary: ClassVar[str] = ("sample-level DP-SGD (Opacus): per-example clipping and Gaussian "
                              "noise in FL clients' and T's training (ε via RDP)")
    surfaces: ClassVar[frozenset[Surface]] = frozenset({Surface.UPDATE, Surface.REPRESENTATION})
    trains: ClassVar[bool] = True

    epsilon: float | None = 10.0
    noise_multiplier: float | None = None
    max_grad_norm: float = 1.0
    delta: float = 1e-5
    #: FL (set by calibrate): the noise multiplier and the participations it is accounted for.
    _fl: tuple[float, int] | None = field(default=None, init=False, repr=False)
    #: The last training's noise multiplier and accountant.
    _trained: tuple[float, RDPAccountant] | None = field(default=None, init=False, repr=False)

    def validate(self) -> None:
        check_dp_parameters(self.name, self.epsilon, self.noise_multiplier, self.delta)
        if self.max_grad_norm <= 0:
            raise SerbenchError(f"defense 'dpsgd': max_grad_norm must be > 0, "
                                f"got {self.max_grad_norm}")

    def calibrate(self, *, rounds: int, sample_rate: float,
                  participations: int | None = None) -> None:
        """Switch to FL accounting for this recipe: half of δ bounds the chance of more than P
        participations, the other half is the accountant's; given ε, Opacus finds z for P.
        (The schedule's own ``participations`` are not used yet: the bound covers them.)"""
        steps = participation_bound(rounds, sample_rate, self.delta / 2)
        z = self.noise_multiplier
        if z is None:
            z = rdp_noise_multiplier(self.epsilon, self.delta / 2, 1.0, steps)
        self._fl = (z, steps)

    def privacy(self, *, rounds: int, sample_rate: float,
                participations: int | None = None) -> dict[str, float]:
        """Every client's (ε, δ) over the FL run (see the module docstring)."""
        self.calibrate(rounds=rounds, sample_rate=sample_rate)
        z, steps = self._fl
        return {"epsilon": rdp_epsilon(z, 1.0, steps, self.delta / 2), "delta": self.delta,
                "noise_multiplier": z, "participations": float(steps)}

    def accounting(self, *, rounds: int, sample_rate: float,
                   participations: int | None = None) -> dict[str, str | float]:
        """:meth:`privacy` with its context in words (the module docstring in short)."""
        return self.privacy(rounds=rounds, sample_rate=sample_rate) | {
            "accountant": "rdp", "clip": self.max_grad_norm, "rounds": float(rounds),
            "sample_rate": sample_rate,
            "sampling": "one DP-SGD step on a client's whole local set per participation; "
                        "participations bounded at δ/2 (Binomial), no amplification",
            "neighbouring_relation": "sample-level (one utterance) add/remove",
            "epsilon_against": "the server"}

    def make_private(self, model: nn.Module, optimizer: Optimizer, loader: DataLoader, *,
                     epochs: int, generator: torch.Generator
                     ) -> tuple[nn.Module, Optimizer, DataLoader]:
        """Opacus' wrappers (per-example gradients, clipping and noise, Poisson sampling), the
        noise drawn from ``generator``. In FL, one full batch per round (see the module
        docstring); otherwise the loader's batches, z found for ``epochs`` given ε."""
        if ModuleValidator.validate(model, strict=False):
            model, optimizer = _dp_compatible(model, optimizer)
        _out_of_place(model)
        problems = ModuleValidator.validate(model, strict=False)
        if problems:
            raise SerbenchError(f"defense 'dpsgd': Opacus cannot train {type(model).__name__} "
                                f"with per-example gradients: {problems[0]}"
                                + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        if self._fl is not None:
            if epochs != 1:
                raise SerbenchError(f"defense 'dpsgd': FL accounting covers one local epoch "
                                    f"per round; got {epochs}")
            z = self._fl[0]
            loader = DataLoader(loader.dataset, batch_size=len(loader.dataset),
                                generator=loader.generator)
        elif self.noise_multiplier is not None:
            z = self.noise_multiplier
        else:
            z = get_noise_multiplier(target_epsilon=self.epsilon, target_delta=self.delta,
                                     sample_rate=1 / len(loader), epochs=epochs,
                                     accountant="rdp")
        # Opacus' hooks on the first layer fire in the trainer's backward passes although the
        # input needs no gradient; PyTorch's warning about that says nothing to the user.
        warnings.filterwarnings("ignore", "Full backward hook is firing when gradients are "
                                "computed with respect to module outputs", UserWarning)
        with warnings.catch_warnings():  # noise comes from serbench's seeded generator
            warnings.filterwarnings("ignore", "Secure RNG turned off", UserWarning)
            engine = PrivacyEngine(accountant="rdp")
            gsm, optimizer, _, loader = engine.make_private(
                module=model, optimizer=optimizer, data_loader=loader, noise_multiplier=z,
                max_grad_norm=self.max_grad_norm, noise_generator=generator,
                grad_sample_mode="ghost")
        self._trained = (z, engine.accountant)
        return GhostClipped(gsm), optimizer, loader

    def training_privacy(self) -> dict[str, float]:
        """(ε, δ) of the steps the last wrapped training took, by its accountant."""
        if self._trained is None:
            return {}
        z, accountant = self._trained
        return {"epsilon": float(accountant.get_epsilon(self.delta)), "delta": self.delta,
                "noise_multiplier": z}

    def training_accounting(self) -> dict[str, str | float]:
        """:meth:`training_privacy` with its context in words (the module docstring in short)."""
        privacy = self.training_privacy()
        return privacy and privacy | {
            "accountant": "rdp (Opacus' own, over the optimizer steps taken)",
            "clip": self.max_grad_norm,
            "sampling": "Poisson-sampled batches (rate batch/n)",
            "neighbouring_relation": "sample-level (one utterance) add/remove",
            "epsilon_against": "anyone who sees T or what it transmits"}
