"""L∞ adversarial examples (Madry et al.'s PGD, FGSM as its one-step case): shared by the
input attacks and the ``adv`` defense's adversarial training, so it lives in core."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

#: A differentiable model: an ``nn.Module`` or any function from inputs to logits (an FL
#: engine may call its parameters functionally).
Model = Callable[[torch.Tensor], torch.Tensor]


def linf_perturb(loss: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, *, eps: float,
                 steps: int, step_size: float, random_start: bool,
                 generator: torch.Generator) -> torch.Tensor:
    """``x`` moved to increase ``loss`` within the L∞ ball of radius ``eps``: signed-gradient
    ascent steps, each projected back onto the ball (PGD, Madry et al.); FGSM is one step of
    size ``eps`` from ``x``. ``loss`` should sum over the batch so that every input's gradient
    is its own loss's. Log-mel inputs have no box constraint, so only the ball is projected on.
    """
    x = x.detach()
    delta = torch.zeros_like(x)
    if random_start:
        delta = (2 * torch.rand(x.shape, generator=generator, dtype=x.dtype) - 1) * eps
    for _ in range(steps):
        delta.requires_grad_(True)
        with torch.enable_grad():  # callers may evaluate under no_grad
            (grad,) = torch.autograd.grad(loss(x + delta), delta)
        delta = (delta.detach() + step_size * grad.sign()).clamp(-eps, eps)
    return (x + delta).detach()


@contextmanager
def evaluating(model: Model) -> Iterator[None]:
    """The model in eval mode while adversarial examples are computed: batch-norm statistics
    stay untouched by them and dropout does not randomise their gradient."""
    if not isinstance(model, nn.Module):
        yield
        return
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)
