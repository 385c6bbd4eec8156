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
from functools import partial
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from opacus import PrivacyEngine
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier
from opacus.grad_sample import GradSampleModuleFastGradientClipping
from opacus.utils.fast_gradient_clipping_utils import (DPLossFastGradientClipping,
                                                       DPTensorFastGradientClipping)
from opacus.validators import ModuleValidator
from torch import nn
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from serbench.dp import (check_dp_parameters, participations as participation_bound, rdp_epsilon,
                         rdp_noise_multiplier)
from serbench.errors import SerbenchError
from serbench.plugins import Defense, Guarantee, Private, Surface, Tags


#: PyTorch warns when Opacus' backward hook on the first layer fires although its input needs
#: no gradient; that says nothing to the user.
_FULL_HOOK_WARNING = "Full backward hook is firing when gradients are computed with respect to"


class _DPLoss(DPLossFastGradientClipping):
    """Opacus' ghost-clipping loss, whose ``backward()`` runs its two passes, with the hook
    warning above silenced around them (only there: no process-wide filter)."""

    def __call__(self, *args, **kwargs) -> DPTensorFastGradientClipping:
        loss = super().__call__(*args, **kwargs)
        return _QuietDPTensor(loss.module, loss.optimizer, loss.loss_per_sample,
                              loss.loss_reduction)


class _QuietDPTensor(DPTensorFastGradientClipping):
    def backward(self) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", _FULL_HOOK_WARNING, UserWarning)
            super().backward()


class _HooksWhileTraining(nn.Module):
    """Opacus' module with its hooks on only in training forwards: gradients through a model
    trained under DP-SGD (adversarial examples against T) then work as without DP."""

    def __init__(self, gsm: GradSampleModuleFastGradientClipping) -> None:
        super().__init__()
        self.gsm = gsm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and torch.is_grad_enabled():
            self.gsm.enable_hooks()
        else:
            self.gsm.disable_hooks()
        return self.gsm(x)

    def train(self, mode: bool = True) -> _HooksWhileTraining:
        super().train(mode)
        if not mode:
            self.gsm.disable_hooks()
        return self


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
    tags: ClassVar[Tags] = Tags(surfaces={Surface.UPDATE, Surface.REPRESENTATION}, trains=True,
                                strength=(("epsilon", "ε"), ("noise_multiplier", "z")))

    #: The sample-level ε of each model's training (docs/dpsgd.md).
    epsilon: float | None = 10.0
    #: The noise's std over the clip, instead of epsilon (ε is then accounted for it).
    noise_multiplier: float | None = None
    #: The L2 norm each example's gradient is clipped to.
    max_grad_norm: float = 1.0
    #: δ of the (ε, δ) guarantee.
    delta: float = 1e-5
    #: FL (set by calibrate on the run's copy): the clients' noise multiplier.
    _fl_z: float | None = field(default=None, init=False, repr=False)

    def validate(self) -> None:
        check_dp_parameters(self.name, self.epsilon, self.noise_multiplier, self.delta)
        if self.max_grad_norm <= 0:
            raise SerbenchError(f"defense 'dpsgd': max_grad_norm must be > 0, "
                                f"got {self.max_grad_norm}")

    def calibrate(self, *, rounds: int, sample_rate: float,
                  participations: int | None = None) -> Guarantee:
        """Switch this copy to FL accounting for the recipe and return every client's (ε, δ)
        over the run (see the module docstring): half of δ bounds the chance of more than P
        participations, the other half is the accountant's; given ε, Opacus finds z for P.
        (The schedule's own ``participations`` are not used yet: the bound covers them.)"""
        steps = participation_bound(rounds, sample_rate, self.delta / 2)
        z = self.noise_multiplier
        if z is None:
            z = rdp_noise_multiplier(self.epsilon, self.delta / 2, 1.0, steps)
        self._fl_z = z
        numbers = {"epsilon": rdp_epsilon(z, 1.0, steps, self.delta / 2), "delta": self.delta,
                   "noise_multiplier": z, "participations": float(steps)}
        return Guarantee(numbers, {
            "accountant": "rdp", "clip": self.max_grad_norm, "rounds": float(rounds),
            "sample_rate": sample_rate,
            "sampling": "one DP-SGD step on a client's whole local set per participation; "
                        "participations bounded at δ/2 (Binomial), no amplification",
            "neighbouring_relation": "sample-level (one utterance) add/remove",
            "epsilon_against": "the server"})

    def make_private(self, model: nn.Module, optimizer: Optimizer, criterion: nn.Module,
                     loader: DataLoader, *, epochs: int, generator: torch.Generator) -> Private:
        """Opacus' ``make_private`` in ghost-clipping mode (per-example clipping without
        per-example gradients, Gaussian noise, Poisson sampling), the noise drawn from
        ``generator``; the returned criterion's ``backward()`` runs Opacus' two passes. In FL,
        one full batch per round (see the module docstring); otherwise the loader's batches, z
        found for ``epochs`` given ε."""
        if ModuleValidator.validate(model, strict=False):
            model, optimizer = _dp_compatible(model, optimizer)
        _out_of_place(model)
        problems = ModuleValidator.validate(model, strict=False)
        if problems:
            raise SerbenchError(f"defense 'dpsgd': Opacus cannot train {type(model).__name__} "
                                f"with per-example gradients: {problems[0]}"
                                + (f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""))
        if self._fl_z is not None:
            if epochs != 1:
                raise SerbenchError(f"defense 'dpsgd': FL accounting covers one local epoch "
                                    f"per round; got {epochs}")
            z = self._fl_z
            loader = DataLoader(loader.dataset, batch_size=len(loader.dataset),
                                generator=loader.generator)
        elif self.noise_multiplier is not None:
            z = self.noise_multiplier
        else:
            z = get_noise_multiplier(target_epsilon=self.epsilon, target_delta=self.delta,
                                     sample_rate=1 / len(loader), epochs=epochs,
                                     accountant="rdp")
        with warnings.catch_warnings():  # noise comes from serbench's seeded generator
            warnings.filterwarnings("ignore", "Secure RNG turned off", UserWarning)
            engine = PrivacyEngine(accountant="rdp")
            gsm, optimizer, criterion, loader = engine.make_private(
                module=model, optimizer=optimizer, criterion=criterion, data_loader=loader,
                noise_multiplier=z, max_grad_norm=self.max_grad_norm, noise_generator=generator,
                grad_sample_mode="ghost")
        return Private(_HooksWhileTraining(gsm), optimizer,
                       _DPLoss(gsm, optimizer, criterion.criterion, criterion.loss_reduction),
                       loader, partial(self._spent, z, engine.accountant))

    def _spent(self, z: float, accountant: RDPAccountant) -> Guarantee:
        """(ε, δ) of the steps a wrapped training has taken, by its accountant, with the
        context in words (the module docstring in short)."""
        numbers = {"epsilon": float(accountant.get_epsilon(self.delta)), "delta": self.delta,
                   "noise_multiplier": z}
        return Guarantee(numbers, {
            "accountant": "rdp (Opacus' own, over the optimizer steps taken)",
            "clip": self.max_grad_norm,
            "sampling": "Poisson-sampled batches (rate batch/n)",
            "neighbouring_relation": "sample-level (one utterance) add/remove",
            "epsilon_against": "anyone who sees T or what it transmits"})
