"""AutoAttack on T's input (SPEC §3.3, §5; Croce & Hein, "Reliable evaluation of adversarial
robustness with an ensemble of diverse parameter-free attacks", ICML 2020), run by the
Adversarial Robustness Toolbox (ART, ``art.attacks.evasion.AutoAttack``), not written again.

Same threat model, T, eps and scoring as ``pgd``/``eot-pgd`` (:class:`InputAttack`): L∞ ball of
radius ``eps`` in T's z-scored log-mel units, no box constraint, white box, gradients through
``ctx.shadow_defense.transform_input`` (nothing in the non-adaptive mode, the deployed
randomisation in the adaptive mode). ART attacks a model: here T behind the simulated defense,
wrapped as one ``nn.Module`` (:class:`ShadowedModel`). Two versions, as in the reference code:

- **standard** (the simulated defense is deterministic): APGD-CE and APGD-DLR untargeted, then
  both targeted at every other class (APGD-T), then Square (score-based, no gradients). FAB-T,
  the reference's third attack, is not in ART (ART's stand-in, DeepFool, is a minimal-L2 attack
  whose results mostly fall outside the L∞ ball); see docs/adversarial.md.
- **rand** (the simulated defense randomises T's input): APGD-CE and APGD-DLR, untargeted, on
  the expectation over transformation: the wrapped model's output is the log of T's class
  probabilities averaged over ``eot_samples`` fresh draws of the transformation per call, the
  prediction the deployed defense makes (it averages ``input_draws`` draws), estimated.

Each attack runs on the inputs no earlier one has misclassified and keeps an input only where
it misclassifies it within the ball (ART's ``run_attack``); an input no attack breaks comes
back clean. Against a randomised deployment that discards inputs EOT-PGD still breaks: the
attacker's estimate of the defended prediction is not the deployed draws' (docs/adversarial.md,
measured). With ``fallback`` (default) such an input gets EOT-PGD's perturbation instead
(``steps``, ``eot_samples``: the ``eot-pgd`` attack's, from the same seed), so AutoAttack only
adds to EOT-PGD, per input (the ensemble rule of AutoAttack itself); ``fallback=false`` is
ART's AutoAttack alone. ART draws its random starts and Square's squares from NumPy's global generator: it is
seeded from (seed, fold, "attack") for the call and restored afterwards.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import ClassVar, Iterator

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from serbench.attacks.adversarial import InputAttack, Schedule, randomises_input
from serbench.deploy.split import through_input
from serbench.errors import SerbenchError
from serbench.plugins import Defense

VERSIONS = ("auto", "standard", "rand")


class ShadowedModel(nn.Module):
    """T behind the simulated defense's input transformation, as ART's model. Returns
    log-probabilities (logits up to a per-input constant, which neither cross-entropy nor DLR
    sees): ``log mean_k softmax(T(transform_k(x)))`` over ``samples`` draws from
    ``generator``, ``T(transform(x))``'s log-softmax for one draw."""

    def __init__(self, net: nn.Module, shadow: Defense, generator: torch.Generator,
                 samples: int) -> None:
        super().__init__()
        self.net, self.shadow, self.generator, self.samples = net, shadow, generator, samples

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logp = torch.stack([F.log_softmax(self.net(through_input(self.shadow, x, self.generator)),
                                          dim=1) for _ in range(self.samples)])
        return torch.logsumexp(logp, dim=0) - math.log(self.samples)

    def train(self, mode: bool = True) -> ShadowedModel:
        """ART switches the model to eval mode; T stays in eval mode whatever it asks (the
        attack never trains it)."""
        super().train(False)
        return self


@contextmanager
def numpy_seeded(seed: int) -> Iterator[None]:
    """NumPy's global generator seeded for a block and put back as it was afterwards."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


@contextmanager
def frozen(net: nn.Module) -> Iterator[None]:
    """T's parameters out of autograd for a block (ART backpropagates its loss with
    ``backward()``, which would otherwise fill T's ``.grad``), put back afterwards."""
    flags = [(p, p.requires_grad) for p in net.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def quiet(name: str = "art") -> Iterator[None]:
    """ART's INFO/WARNING chatter (estimator set-up) off for a block."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


@dataclass
class AutoAttackAttack(InputAttack):
    """Parameters (besides :class:`InputAttack`'s ``eps``, T and ``batch_size``): ``version``
    (``auto``: ``rand`` when the simulated defense randomises the input, ``standard``
    otherwise), ``iterations`` of each APGD run (the reference: 100), ``restarts`` of each APGD
    run (the reference: 1), ``square_queries`` (the reference: 5000; 0 leaves Square out) and
    ``eot_samples``, the draws averaged per model call in the ``rand`` version (the reference:
    20); ``fallback`` (EOT-PGD's input where AutoAttack breaks nothing) with its ``steps``."""

    name: ClassVar[str] = "autoattack"
    summary: ClassVar[str] = ("AutoAttack (ART): APGD-CE, APGD-T, Square on T's input; the rand "
                              "version (APGD-CE, APGD-DLR with EOT) against randomised defenses")
    #: The rand version averages over the simulated defense's draws: it scores randomised
    #: defenses (SPEC §3.3), in the adaptive mode; in the non-adaptive one, as EOT-PGD, it
    #: attacks T alone and the deployed randomisation is applied afterwards.
    averages_randomness: ClassVar[bool] = True

    #: "auto": "rand" when the simulated defense randomises the input, else "standard".
    version: str = "auto"
    #: Iterations of each APGD run (the reference: 100).
    iterations: int = 20
    #: Restarts of each APGD run (the reference: 1).
    restarts: int = 1
    #: Queries of the Square attack (the reference: 5000; 0 leaves it out).
    square_queries: int = 200
    #: Draws averaged per model call in the rand version (the reference: 20).
    eot_samples: int = 10
    #: Keep EOT-PGD's input where AutoAttack breaks nothing.
    fallback: bool = True
    #: Steps of that EOT-PGD fallback.
    steps: int = 10

    def validate(self) -> None:
        super().validate()
        if self.version not in VERSIONS:
            raise SerbenchError(f"attack {self.name!r}: unknown version {self.version!r}; "
                                f"valid: {', '.join(VERSIONS)}")
        if min(self.iterations, self.restarts, self.eot_samples, self.steps) < 1:
            raise SerbenchError(f"attack {self.name!r}: need iterations >= 1, restarts >= 1, "
                                f"eot_samples >= 1, steps >= 1")
        if self.square_queries < 0:
            raise SerbenchError(f"attack {self.name!r}: square_queries must be >= 0, "
                                f"got {self.square_queries}")

    def schedule(self) -> Schedule:
        """The fallback's iteration: EOT-PGD's (``steps`` of 2.5·eps/steps, random start)."""
        return Schedule(self.steps, 2.5 * self.eps / self.steps, True)

    def gradient_samples(self) -> int:
        """The fallback's draws per gradient where the simulated defense randomises: EOT-PGD's."""
        return self.eot_samples

    def resolved_version(self, shadow: Defense) -> str:
        if self.version != "auto":
            return self.version
        return "rand" if randomises_input(shadow) else "standard"

    def perturb(self, shadow: Defense, net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                generator: torch.Generator) -> torch.Tensor:
        """ART's AutoAttack's input where it broke T (by its own estimate), else, with
        ``fallback``, EOT-PGD's: computed first from the same generator, so it is exactly the
        ``eot-pgd`` attack's input with the same parameters and seed."""
        if not self.fallback:
            return self.library_attack(shadow, net, x, y, generator)
        pgd = super().perturb(shadow, net, x, y, generator)
        auto = self.library_attack(shadow, net, x, y, generator)
        broken = (auto != x).flatten(1).any(1)  # ART returns x itself where nothing succeeded
        return torch.where(broken.view(-1, *[1] * (x.dim() - 1)), auto, pgd)

    def library_attack(self, shadow: Defense, net: nn.Module, x: torch.Tensor, y: torch.Tensor,
                       generator: torch.Generator) -> torch.Tensor:
        """``x`` attacked by ART's AutoAttack against T behind ``shadow``'s transformation."""
        from art.attacks.evasion import AutoAttack, AutoProjectedGradientDescent, SquareAttack
        from art.estimators.classification import PyTorchClassifier

        version = self.resolved_version(shadow)
        samples = self.eot_samples if version == "rand" and randomises_input(shadow) else 1
        net.eval()
        model = ShadowedModel(net, shadow, generator, samples)
        with torch.no_grad():
            classes = int(net(x[:1]).shape[1])
        seed = int(torch.randint(0, 2**31 - 1, (1,), generator=generator))
        with quiet(), frozen(net), numpy_seeded(seed):
            # Log-mel z-scores have no box; Square needs one: a box no point of the ball leaves.
            box = (float(x.min()) - 2 * self.eps, float(x.max()) + 2 * self.eps)
            classifier = PyTorchClassifier(model=model, loss=nn.CrossEntropyLoss(),
                                           input_shape=tuple(x.shape[1:]), nb_classes=classes,
                                           clip_values=box, device_type="cpu")

            def apgd(loss: str) -> AutoProjectedGradientDescent:
                return AutoProjectedGradientDescent(
                    classifier, norm=np.inf, eps=self.eps, eps_step=2 * self.eps,
                    max_iter=self.iterations, targeted=False, nb_random_init=self.restarts,
                    batch_size=self.batch_size, loss_type=loss, verbose=False)

            # DLR needs a third-largest logit; with two classes it is cross-entropy again.
            gradient = [apgd("cross_entropy")] + (
                [apgd("difference_logits_ratio")] if classes >= 3 else [])
            x_np, y_np = x.detach().numpy().astype(np.float32), y.numpy()
            # standard: untargeted, then targeted at every other class (APGD-T); rand: untargeted
            adv = AutoAttack(classifier, norm=np.inf, eps=self.eps, eps_step=2 * self.eps,
                             attacks=gradient, batch_size=self.batch_size,
                             targeted=version == "standard").generate(x_np, y_np)
            if version == "standard" and self.square_queries:
                # ART's squares do not shrink to fit a non-square input (the reference's
                # clamp their side to the shorter edge - 1): start no larger than that.
                height, width = x.shape[-2:]
                p_init = min(0.8, (min(height, width) - 1.5) ** 2 / (height * width))
                square = SquareAttack(classifier, norm=np.inf, eps=self.eps,
                                      max_iter=self.square_queries, p_init=p_init, nb_restarts=1,
                                      batch_size=self.batch_size, verbose=False)
                # Square on what the gradient attacks left correct: ART's AutoAttack keeps
                # the inputs it is given where they are already misclassified.
                adv = AutoAttack(classifier, norm=np.inf, eps=self.eps, attacks=[square],
                                 batch_size=self.batch_size).generate(adv, y_np)
        adv = torch.from_numpy(adv).to(x.dtype)
        # ART keeps an input only within the ball up to 1e-4 relative: project exactly.
        return (x + (adv - x).clamp(-self.eps, self.eps)).detach()
