"""Attribute-targeted perturbation of the shared update, after RecUP-FL (Cui, Meerza, Li, Liu,
Zhang and Liu, "RecUP-FL: Reconciling utility and privacy in federated learning via
user-configurable privacy defense", AsiaCCS 2023).

Before a client shares its update U, it adds a perturbation δ with ||δ|| ≤ ``budget``·||U||
(the user's budget, relative L2) crafted to fool a zoo of substitute gender attackers that it
trained on public data. As the paper does for transfer to attackers it cannot query, the
crafting alternates white-box steps on the zoo less one held-out member with a step on that
member at the look-ahead point (a meta-learning split), the held-out member rotating.

serbench's version, sized for 2 CPU cores:

- the zoo: one ridge classifier per view of the update (``zoo``): ``first`` (the first layer's
  whole weight update, the weight-space linear attacker), ``profile`` (its sum over hidden
  units: one number per input feature), ``bias`` (the first layer's bias), ``second`` and
  ``last`` (those layers' weights). Each view is scaled to unit norm.
- their training data: each public speaker's update on the round's global model (the client
  receives it): the gradient of its utterances' loss (FedSGD) or its sign, the direction of
  the first Adam step (FedAvg). The zoo is trained once per global model and shared by the
  clients of that round (the same public data give the same zoo).
- the objective: the client knows its own gender (``reads_attribute``) and pushes each
  member's margin toward its gender down to zero (chance), not past it: a zoo fooled into the
  other gender would still tell the server who the client is.

The zoo is this defense's own attacker: its mean P(male) on each shared update is scored as the
FL attacks' ``own/zoo`` measure (non-adaptive mode). Public data are the corpus's shadow
speakers (SPEC §4a), never a target speaker; the run records which.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from serbench.errors import SerbenchError
from serbench.plugins import Defense, Guarantee, Private, PublicData, Surface, Tags

Params = dict[str, torch.Tensor]

#: Each view of an update the zoo's members read (linear in the update).
VIEWS: dict[str, Callable[[Params], torch.Tensor]] = {
    "first": lambda u: u["first.weight"].flatten(),
    "profile": lambda u: u["first.weight"].sum(0),
    "bias": lambda u: u["first.bias"],
    "second": lambda u: u["second.weight"].flatten(),
    "last": lambda u: u["last.weight"].flatten(),
}


@dataclass(frozen=True)
class _Member:
    """A ridge classifier on one view: margin = w · view/||view|| + c (> 0: male)."""

    view: str
    w: torch.Tensor
    c: float


@dataclass
class RecUP(Defense):
    name: ClassVar[str] = "recup"
    summary: ClassVar[str] = ("RecUP-FL: each client perturbs its update within a relative L2 "
                              "budget to fool a zoo of gender attackers it trained on public data")
    tags: ClassVar[Tags] = Tags(surfaces={Surface.UPDATE}, trains=True, reads_attribute=True,
                                public_data=True, strength=(("budget", "b"),))

    #: The user's budget: the perturbation's L2 norm at most this fraction of the update's.
    budget: float = 0.5
    #: The zoo: one substitute attacker per view of the update (first, profile, bias, second,
    #: last; see the module docstring).
    zoo: str = "first,profile,bias,second,last"
    #: Crafting steps (each a white-box step on the zoo less one member and a transfer step
    #: to that held-out member).
    steps: int = 10
    #: The ridge penalty of each member, relative to its Gram matrix's mean diagonal.
    ridge: float = 1.0
    _public: PublicData | None = field(default=None, init=False, repr=False)
    _zoo: tuple[object, list[_Member]] | None = field(default=None, init=False, repr=False)
    _scores: list[float] = field(default_factory=list, init=False, repr=False)

    def validate(self) -> None:
        views = self.views()
        if len(views) < 2 or set(views) - set(VIEWS):
            raise SerbenchError(f"defense 'recup': zoo must name at least two of "
                                f"{', '.join(VIEWS)}, got {self.zoo!r}")
        if not 0 <= self.budget or self.steps < 1 or self.ridge <= 0:
            raise SerbenchError("defense 'recup': need budget >= 0, steps >= 1, ridge > 0")

    def calibrate(self, *, rounds: int, sample_rate: float, participations: int | None = None,
                  public: PublicData) -> Guarantee:
        """Keep the public data for this run's clients (no formal guarantee)."""
        self._public = public
        return Guarantee()

    def make_private(self, model: nn.Module, optimizer: Optimizer, criterion: nn.Module,
                     loader: DataLoader, *, epochs: int, generator: torch.Generator,
                     attribute: int) -> Private:
        """Training is unchanged: the client trains (or reuses) the zoo on the public
        speakers' updates at the global model it received (``model``'s parameters); its own
        ``attribute`` is used when it perturbs its update."""
        if self._public is None:
            raise SerbenchError("defense 'recup': call calibrate(..., public=...) first")
        params = {k: p.detach() for k, p in model.named_parameters()}
        key = (tuple(params["first.weight"].flatten()[:16].tolist()),
               float(params["last.weight"].sum()))
        if self._zoo is None or self._zoo[0] != key:
            sign = isinstance(optimizer, torch.optim.Adam)  # FedAvg: Adam's first step
            self._zoo = (key, self._train_zoo(model, params, sign))
        return Private(model, optimizer, criterion, loader)

    def _train_zoo(self, model: nn.Module, params: Params, sign: bool) -> list[_Member]:
        """One ridge member per view, on each public speaker's update at ``params``."""
        updates = _speaker_updates(model, params, self._public)
        if sign:
            updates = {k: v.sign() for k, v in updates.items()}
        speakers = sorted(set(self._public.speakers))
        rows = torch.tensor([self._public.speakers.index(s) for s in speakers])
        target = self._public.genders[rows].float() * 2 - 1
        members = []
        for view in self.views():
            x = torch.stack([_unit(VIEWS[view]({k: v[i] for k, v in updates.items()}))
                             for i in range(len(speakers))])
            members.append(_ridge(view, x, target, self.ridge))
        return members

    def views(self) -> list[str]:
        return [v.strip() for v in self.zoo.split(",") if v.strip()]

    def privatize_update(self, update: Params, *, generator: torch.Generator,
                         attribute: int) -> Params:
        """U + δ, δ crafted against the zoo within the budget; the zoo's score is recorded."""
        if self._zoo is None:
            raise SerbenchError("defense 'recup': its zoo is trained in make_private, which "
                                "runs before every shared update")
        members = self._zoo[1]
        scales = {m.view: float(VIEWS[m.view](update).norm()) + 1e-12 for m in members}
        radius = self.budget * _norm(update)
        delta = _craft(update, members, scales, 2 * int(attribute) - 1, radius, self.steps)
        shared = {k: u + delta[k] for k, u in update.items()}
        self._scores.append(float(torch.stack([torch.sigmoid(2 * _margin(m, shared, scales))
                                               for m in members]).mean()))
        return shared

    def own_scores(self) -> list[float]:
        return list(self._scores)


def _speaker_updates(model: nn.Module, params: Params, public: PublicData) -> Params:
    """Each public speaker's gradient of its utterances' mean loss at ``params``, stacked on a
    leading speaker dimension (sorted speakers), dropout off (deterministic)."""
    was = model.training
    model.eval()
    owner = list(public.speakers)
    grads: list[tuple[torch.Tensor, ...]] = []
    for speaker in sorted(set(owner)):
        rows = torch.tensor([i for i, s in enumerate(owner) if s == speaker])
        p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        loss = F.cross_entropy(functional_call(model, p, (public.x[rows],)), public.emotions[rows])
        grads.append(torch.autograd.grad(loss, list(p.values())))
    model.train(was)
    return {k: torch.stack([g[i] for g in grads]) for i, k in enumerate(params)}


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / (v.norm() + 1e-12)


def _ridge(view: str, x: torch.Tensor, target: torch.Tensor, ridge: float) -> _Member:
    """Ridge regression on ±1 genders in its dual form (speakers ≪ dimensions)."""
    mean_x, mean_t = x.mean(0), target.mean()
    xc = x - mean_x
    gram = xc @ xc.T
    lam = ridge * float(gram.diagonal().mean()) + 1e-12
    alpha = torch.linalg.solve(gram + lam * torch.eye(len(x)), target - mean_t)
    w = xc.T @ alpha
    return _Member(view, w, float(mean_t - w @ mean_x))


def _margin(member: _Member, update: Params, scales: dict[str, float]) -> torch.Tensor:
    """The member's margin (> 0: male) on ``update``, its view scaled by the clean update's
    view norm (so the margin is linear in a perturbation)."""
    return member.w @ VIEWS[member.view](update) / scales[member.view] + member.c


def _gradient(update: Params, delta: Params, chosen: list[_Member], scales: dict[str, float],
              sign: int) -> Params:
    """The gradient in δ of Σ relu(sign · margin)² over the ``chosen`` members at U + δ."""
    d = {k: v.clone().requires_grad_(True) for k, v in delta.items()}
    moved = {k: update[k] + d[k] for k in update}
    value = sum(F.relu(sign * _margin(m, moved, scales)) ** 2 for m in chosen)
    grads = torch.autograd.grad(value, list(d.values()), allow_unused=True)
    return {k: torch.zeros_like(v) if g is None else g for (k, v), g in zip(delta.items(), grads)}


def _norm(p: Params) -> float:
    return float(torch.sqrt(sum(v.pow(2).sum() for v in p.values())))


def _step(delta: Params, direction: Params, size: float) -> Params:
    """δ moved by ``size`` against ``direction`` (scaled to unit joint norm)."""
    scale = size / (_norm(direction) + 1e-12)
    return {k: v - scale * direction[k] for k, v in delta.items()}


def _craft(update: Params, members: list[_Member], scales: dict[str, float], sign: int,
           radius: float, steps: int) -> Params:
    """Projected steps on δ (||δ|| ≤ radius) lowering each member's margin toward the true
    gender (``sign`` = +1 male, -1 female) to zero: each step a white-box gradient on the zoo
    less a held-out member, plus the held-out member's gradient at the look-ahead point."""
    delta = {k: torch.zeros_like(u) for k, u in update.items()}
    size = 2 * radius / steps
    for s in range(steps if radius > 0 else 0):
        held = members[s % len(members)]
        train = [m for m in members if m is not held]
        g = _gradient(update, delta, train, scales, sign)
        ahead = _step(delta, g, size)
        h = _gradient(update, ahead, [held], scales, sign)
        total = {k: g[k] + h[k] for k in g}
        if _norm(total) == 0:  # every member already at or past chance
            break
        delta = _step(delta, total, size)
        if (norm := _norm(delta)) > radius:
            delta = {k: v * (radius / norm) for k, v in delta.items()}
    return delta
