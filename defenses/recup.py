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
  the first Adam step (FedAvg). The zoo is retrained every ``refresh`` rounds and shared by
  the clients of a round (the same public data give the same zoo).
- the objective: the paper's untargeted loss on the client's true attribute
  (``reads_attribute``) makes the zoo see the other gender; for a binary attribute a zoo
  fooled every time still tells the server who the client is (measured on synth: own-zoo UAR
  0.00 at every budget from 0.25). So each client flips a fair coin (its generator): heads,
  the zoo is pushed to the other gender, tails, to its own, each member's margin to its
  typical confident margin κ. The zoo then sees a gender independent of the client's.
- every member is linear in δ, so δ lies in the span of the members' directions and the
  crafting runs on their coefficients (each move's length minimises the loss along it).

The zoo is this defense's own attacker: its mean P(male) on each shared update is scored as the
FL attacks' ``own/zoo`` measure (non-adaptive mode). Public data are the corpus's shadow
speakers (SPEC §4a), never a target speaker; the run records which.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

import torch
from torch import nn
from torch.func import functional_call
from torch.nn import functional as F
from torch.optim import Optimizer
from torch.utils.data import DataLoader

from serbench.errors import SerbenchError
from serbench.plugins import Defense, Guarantee, Private, PublicData, Surface, Tags

Params = dict[str, torch.Tensor]


class View(NamedTuple):
    """A linear view of one parameter's update (a trailing-dimension map, so it also reads a
    stack of updates) and its adjoint (a view-space vector back to the parameter's shape)."""

    key: str
    read: Callable[[torch.Tensor], torch.Tensor]
    adjoint: Callable[[torch.Tensor, torch.Size], torch.Tensor]


def _flat(key: str) -> View:
    return View(key, lambda t: t.flatten(-2) if t.dim() > 1 and key.endswith("weight")
                else t, lambda w, shape: w.view(shape))


#: The views of an update the zoo's members read.
VIEWS: dict[str, View] = {
    "first": _flat("first.weight"),
    "profile": View("first.weight", lambda t: t.sum(-2), lambda w, shape: w.expand(shape)),
    "bias": _flat("first.bias"),
    "second": _flat("second.weight"),
    "last": _flat("last.weight"),
}


class _Member(NamedTuple):
    """A ridge classifier on one view: margin = w · view/||view|| + c (> 0: male); ``kappa``,
    its median absolute margin on its training updates (a typical confident margin)."""

    view: str
    w: torch.Tensor
    c: float
    kappa: float


@dataclass
class RecUP(Defense):
    name: ClassVar[str] = "recup"
    summary: ClassVar[str] = ("RecUP-FL: each client perturbs its update within a relative L2 "
                              "budget to fool a zoo of gender attackers it trained on public data")
    tags: ClassVar[Tags] = Tags(surfaces={Surface.UPDATE}, randomized=True, trains=True,
                                reads_attribute=True, public_data=True,
                                strength=(("budget", "b"),))

    #: The user's budget: the perturbation's L2 norm at most this fraction of the update's.
    budget: float = 0.1
    #: The zoo: one substitute attacker per view of the update (first, profile, bias, second,
    #: last; see the module docstring).
    zoo: str = "first,profile,bias,second,last"
    #: Crafting steps (each a white-box step on the zoo less one member and a transfer step
    #: to that held-out member).
    steps: int = 10
    #: The ridge penalty of each member, relative to its Gram matrix's mean diagonal.
    ridge: float = 1.0
    #: The zoo is retrained on the global model of every refresh-th round and reused between
    #: (1: every round; larger values trade the zoo's freshness for CPU time).
    refresh: int = 10
    _public: PublicData | None = field(default=None, init=False, repr=False)
    _zoo: list[_Member] | None = field(default=None, init=False, repr=False)
    _seen: tuple[object, int] = field(default=(None, 0), init=False, repr=False)
    _scores: list[float] = field(default_factory=list, init=False, repr=False)

    def validate(self) -> None:
        views = self.views()
        if len(views) < 2 or set(views) - set(VIEWS):
            raise SerbenchError(f"defense 'recup': zoo must name at least two of "
                                f"{', '.join(VIEWS)}, got {self.zoo!r}")
        if not (0 <= self.budget and self.steps >= 1 and self.ridge > 0 and self.refresh >= 1):
            raise SerbenchError("defense 'recup': need budget >= 0, steps >= 1, ridge > 0, "
                                "refresh >= 1")

    def views(self) -> list[str]:
        return [v.strip() for v in self.zoo.split(",") if v.strip()]

    def calibrate(self, *, rounds: int, sample_rate: float, participations: int | None = None,
                  public: PublicData) -> Guarantee:
        """Keep the public data for this run's clients (no formal guarantee)."""
        self._public = public
        return Guarantee()

    def make_private(self, model: nn.Module, optimizer: Optimizer, criterion: nn.Module,
                     loader: DataLoader, *, epochs: int, generator: torch.Generator,
                     attribute: int | torch.Tensor,
                     transmitted: nn.Module | None = None) -> Private:
        """Training is unchanged: an FL client (calibrated with public data) (re)trains the
        zoo on the public speakers' updates at the global model it received (``model``'s
        parameters) when a new round's model is due (``refresh``); its own ``attribute`` is
        used when it perturbs. T's central training (no FL run, nothing shared) is left as
        it is."""
        if self._public is None:
            return Private(model, optimizer, criterion, loader)
        params = {k: p.detach() for k, p in model.named_parameters()}
        key = (tuple(params["first.weight"].flatten()[:16].tolist()),
               float(params["last.weight"].sum()))
        last, rounds = self._seen
        if key != last:
            if self._zoo is None or rounds % self.refresh == 0:
                sign = isinstance(optimizer, torch.optim.Adam)  # FedAvg: Adam's first step
                self._zoo = self._train_zoo(model, params, sign)
            self._seen = (key, rounds + 1)
        return Private(model, optimizer, criterion, loader)

    def _train_zoo(self, model: nn.Module, params: Params, sign: bool) -> list[_Member]:
        """One ridge member per view, on each public speaker's update at ``params``."""
        updates, genders = _speaker_updates(model, params, self._public)
        if sign:
            updates = {k: v.sign() for k, v in updates.items()}
        members = []
        for name in self.views():
            view = VIEWS[name]
            x = view.read(updates[view.key])
            members.append(_ridge(name, x / (x.norm(dim=1, keepdim=True) + 1e-12),
                                  genders.float() * 2 - 1, self.ridge))
        return members

    def privatize_update(self, update: Params, *, generator: torch.Generator,
                         attribute: int) -> Params:
        """U + δ, δ crafted against the zoo within the budget; the zoo's score is recorded."""
        if self._zoo is None:
            raise SerbenchError("defense 'recup': its zoo is trained in make_private, which "
                                "runs before every shared update")
        zoo = _Linearised(update, self._zoo)
        flip = bool(torch.rand(1, generator=generator) < 0.5)
        sign = 2 * int(attribute) - 1
        a = zoo.craft(-sign if flip else sign, self.budget * _norm(update), self.steps)
        self._scores.append(float(torch.sigmoid(2 * zoo.margins(a)).mean()))
        return zoo.shared(a)

    def own_scores(self) -> list[float]:
        return list(self._scores)


def _speaker_updates(model: nn.Module, params: Params, public: PublicData
                     ) -> tuple[Params, torch.Tensor]:
    """Each public speaker's gradient of its utterances' mean loss at ``params``, stacked on a
    leading speaker dimension (sorted speakers), dropout off (deterministic); their genders."""
    was = model.training
    model.eval()
    owner = list(public.speakers)
    grads: list[tuple[torch.Tensor, ...]] = []
    genders = []
    for speaker in sorted(set(owner)):
        rows = torch.tensor([i for i, s in enumerate(owner) if s == speaker])
        p = {k: v.clone().requires_grad_(True) for k, v in params.items()}
        loss = F.cross_entropy(functional_call(model, p, (public.x[rows],)), public.emotions[rows])
        grads.append(torch.autograd.grad(loss, list(p.values())))
        genders.append(public.genders[rows[0]])
    model.train(was)
    return {k: torch.stack([g[i] for g in grads]) for i, k in enumerate(params)}, \
        torch.stack(genders)


def _ridge(view: str, x: torch.Tensor, target: torch.Tensor, ridge: float) -> _Member:
    """Ridge regression on ±1 genders in its dual form (speakers ≪ dimensions)."""
    mean_x, mean_t = x.mean(0), target.mean()
    xc = x - mean_x
    gram = xc @ xc.T
    lam = ridge * float(gram.diagonal().mean()) + 1e-12
    alpha = torch.linalg.solve(gram + lam * torch.eye(len(x)), target - mean_t)
    w = xc.T @ alpha
    c = float(mean_t - w @ mean_x)
    return _Member(view, w, c, float((x @ w + c).abs().median()))


def _norm(p: Params) -> float:
    return float(torch.sqrt(sum(v.pow(2).sum() for v in p.values())))


class _Linearised:
    """The zoo around one update U. Each member's margin is linear in a perturbation δ (its
    view scaled by the clean update's view norm): margin_m(δ) = m0_m + <D_m, δ>. So every
    gradient, and δ itself, lies in the span of the directions D_m: δ = Σ a_m D_m, and the
    crafting runs on the coefficients a, with inner products from the Gram matrix of D."""

    def __init__(self, update: Params, members: list[_Member]) -> None:
        self.update = update
        self.directions: list[tuple[str, torch.Tensor]] = []
        m0 = []
        for member in members:
            view = VIEWS[member.view]
            values = view.read(update[view.key])
            scale = float(values.norm()) + 1e-12
            m0.append(float(member.w @ values) / scale + member.c)
            self.directions.append((view.key, view.adjoint(member.w / scale,
                                                           update[view.key].shape)))
        self.m0 = torch.tensor(m0)
        self.kappa = torch.tensor([m.kappa for m in members])
        self.gram = torch.tensor([[float((d * e).sum()) if k == l else 0.0
                                   for l, e in self.directions] for k, d in self.directions])

    def margins(self, a: torch.Tensor) -> torch.Tensor:
        return self.m0 + self.gram @ a

    def size(self, a: torch.Tensor) -> float:
        return float(torch.sqrt((a @ self.gram @ a).clamp(min=0)))

    def craft(self, target: int, radius: float, steps: int) -> torch.Tensor:
        """Projected steps (||δ|| ≤ radius) pushing every member's margin to the ``target``
        side (+1 male, -1 female) by its typical margin κ: on Σ relu(κ - target·margin)²,
        each step the gradient on the zoo less a held-out member (white box), plus the
        held-out member's gradient at the look-ahead point (transfer), the member rotating;
        each move's length minimises the loss along it."""
        n = len(self.m0)
        a = torch.zeros(n)
        everyone = torch.ones(n, dtype=torch.bool)
        for s in range(steps if radius > 0 else 0):
            held = torch.zeros(n, dtype=torch.bool)
            held[s % n] = True
            g = self._gradient(a, ~held, target)
            ahead = self._move(a, g, ~held, target)
            total = g + self._gradient(ahead, held, target)
            a = self._move(a, total, everyone, target)
            if (norm := self.size(a)) > radius:
                a = a * (radius / norm)
        return a

    def _short(self, a: torch.Tensor, chosen: torch.Tensor, target: int) -> torch.Tensor:
        """How far each chosen member's margin falls short of κ on the target side."""
        return torch.relu(self.kappa - target * self.margins(a)) * chosen

    def _gradient(self, a: torch.Tensor, chosen: torch.Tensor, target: int) -> torch.Tensor:
        """The coefficients of the gradient in δ of Σ_chosen relu(κ - target·margin)²."""
        return -2 * target * self._short(a, chosen, target)

    def _move(self, a: torch.Tensor, g: torch.Tensor, chosen: torch.Tensor,
              target: int) -> torch.Tensor:
        """``a`` moved against ``g`` by the length that minimises the chosen members' loss
        (on the members short of κ there: a quadratic)."""
        short = self._short(a, chosen, target)
        slope = target * (self.gram @ g) * (short > 0)
        if float(slope @ slope) == 0:
            return a
        return a - max(0.0, -float(short @ slope) / float(slope @ slope)) * g

    def shared(self, a: torch.Tensor) -> Params:
        """U + δ for the coefficients ``a``."""
        shared = {k: v.clone() for k, v in self.update.items()}
        for coefficient, (key, direction) in zip(a.tolist(), self.directions):
            shared[key] += coefficient * direction
        return shared
