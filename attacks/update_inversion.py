"""FL attribute inference in the input-feature space: invert a first-layer update with the
round's global model (issue 15, Build 1).

The weight-space attack model (fl_inference.py) reads the 256 x D first-layer update as it is,
so it needs the shadow and target FL runs to share their hidden units' alignment: with another
initialisation, corpus or a few rounds of drift it falls to chance. The honest-but-curious
server knows the global model it sent, so it can map the update back into the space of the D
input features, which every model and corpus shares.

The math (FedSGD; SERMLP = D -> 256 -> 128 -> C, z1 = W1 x + b1 the first pre-activation):

* a client's first-layer gradient is ``G = (1/N) sum_i delta_i x_i^T`` and its bias gradient
  ``g = (1/N) sum_i delta_i``, with ``delta_i = J(x_i)^T e_i``, ``J(x) = d logits / d z1`` and
  ``e_i = softmax_i - onehot(y_i)`` the output error;
* replacing ``J(x_i)`` by its mean ``M^T`` over reference inputs on the round's global model
  (:func:`backprop_basis`, H x C) gives ``G ~ M E`` with ``E = (1/N) sum_i e_i x_i^T`` (C x D);
* so ``E ~ pinv(M) G`` (:func:`invert`): row c is ``(1/N) sum_i (p_ic - y_ic) x_i``, about
  ``-(N_c / N)`` times the client's mean input of emotion c while the model is still uncertain
  (per-speaker z-normalised features average to 0 over a client), i.e. the class-conditional
  feature means that separate gender almost perfectly;
* a classifier trained on shadow speakers' ``E`` (any corpus, any initialisation: the rows are
  input features, the columns emotion classes) labels the target's, each side standardised with
  its own statistics (:class:`InputSpaceModel`).

FedAvg (one local Adam epoch, lr 5e-4, two or three steps here) shares ``global - local``; the
first Adam step is ``lr * sign(G_1)`` and the next ones are close to it, so the update is a
sign-like, magnitude-free image of ``M E`` and ``pinv(M) U`` recovers each feature's direction in
class space (1-bit measurements of ``E[:, d]`` through 256 known vectors ``M_j``), not its scale.
Everything is per update and linear in the update, so averaging n updates of one client
(fl_inference's ``n``) averages these features.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from torch import nn

Params = Mapping[str, torch.Tensor]


def backprop_basis(params: Params, x_ref: torch.Tensor) -> torch.Tensor:
    """``M`` (H x C): the mean over ``x_ref`` of ``(d logits / d z1)^T`` of SERMLP with
    ``params`` (dropout off: its masks average to one), centred over the classes.

    ``delta = M e`` approximately for an input's output error ``e``; ``e`` sums to 0 over the
    classes, so only M's class-centred part matters, and centring makes ``pinv(M)`` return
    class rows that sum to 0 as ``E``'s do.
    """
    w1, b1 = params["first.weight"], params["first.bias"]
    w2, b2 = params["second.weight"], params["second.bias"]
    w3 = params["last.weight"]
    with torch.no_grad():
        z1 = torch.addmm(b1, x_ref, w1.T)
        d1 = (z1 > 0).to(z1.dtype)  # (R, H)
        d2 = (torch.addmm(b2, z1.clamp_(min=0), w2.T) > 0).to(z1.dtype)  # (R, K)
        # J(x) = W3 diag(d2) W2 diag(d1), so mean_r J(x_r)[c, h] = sum_k W3[c, k] W2[k, h]
        # P[k, h] / R with P = d2^T d1 (how often units k and h are active together).
        m = (w3 @ (w2 * (d2.T @ d1))).T / len(x_ref)  # (H, C)
    return m - m.mean(1, keepdim=True)


def invert(weight: torch.Tensor, bias: torch.Tensor, basis: torch.Tensor, *,
           rcond: float = 1e-3) -> tuple[torch.Tensor, torch.Tensor]:
    """Each update's first-layer weight (N, H, D) and bias (N, H) mapped into class x input
    space with its round's basis (N, H, C) (or one basis (H, C) for all): ``pinv(M) G`` (N, C, D)
    and ``pinv(M) g`` (N, C)."""
    if basis.dim() == 2:
        basis = basis.expand(len(weight), *basis.shape)
    pinv = torch.linalg.pinv(basis, rtol=rcond)  # (N, C, H)
    return torch.bmm(pinv, weight), torch.bmm(pinv, bias.unsqueeze(2)).squeeze(2)


class BasisRecorder:
    """Wraps an in-process engine's :data:`~serbench.fl.engine.RoundUpdates` (default: the
    batched one) to keep what the server knows in each round: the :func:`backprop_basis` of the
    global model it sent, on ``x_ref`` (the attacker's own reference inputs). For the benchmark
    and the tests; fl_inference gets the bases through the deployment stage (the engine's
    ``on_global`` hook, :attr:`FLRecipe.observe`)."""

    def __init__(self, x_ref: torch.Tensor, round_updates=None) -> None:
        if round_updates is None:
            from serbench.fl.batched import BatchedUpdates
            round_updates = BatchedUpdates()
        self.x_ref, self.round_updates = x_ref, round_updates
        self.bases: dict[int, torch.Tensor] = {}
        self.globals: dict[int, dict[str, torch.Tensor]] = {}
        self.keep: set[int] = set()  #: rounds whose global model is kept whole

    def __call__(self, params, data, cfg, seeds, defense, rnd):
        self.bases[rnd] = backprop_basis(params, self.x_ref)
        if rnd in self.keep:
            self.globals[rnd] = {k: v.clone() for k, v in params.items()}
        return self.round_updates(params, data, cfg, seeds, defense, rnd)


def invert_log(weight: torch.Tensor, bias: torch.Tensor, rounds: np.ndarray,
               bases: Mapping[int, torch.Tensor] | Sequence[torch.Tensor], *, chunk: int = 256
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`invert` for a run's log: row i uses the basis of its round ``rounds[i]``."""
    phis, psis = [], []
    for start in range(0, len(weight), chunk):
        rows = slice(start, start + chunk)
        basis = torch.stack([bases[int(r)] for r in rounds[rows]])
        phi, psi = invert(weight[rows], bias[rows], basis)
        phis.append(phi)
        psis.append(psi)
    return torch.cat(phis), torch.cat(psis)


def centre_by_round(phi: torch.Tensor, rounds: np.ndarray, width: int) -> torch.Tensor:
    """Each update's map with its unit norm, minus the mean over the run's updates in the same
    window of ``width`` rounds (transductive: the server sees every client of every round).

    What every client of a round shares (the global model's current errors, the scale of the
    loss) is removed; what is the client's own (its class-conditional feature means) stays. A
    run's own statistics: shadow and target runs are centred each with their own."""
    if width <= 0:
        return phi
    phi = phi / phi.flatten(1).norm(dim=1).clamp(min=1e-12)[:, None, None]
    out = torch.empty_like(phi)
    bins = np.asarray(rounds) // width
    for b in np.unique(bins):
        rows = torch.as_tensor(np.flatnonzero(bins == b))
        out[rows] = phi[rows] - phi[rows].mean(0)
    return out


def _features(phi: torch.Tensor, psi: torch.Tensor, scale: str) -> np.ndarray:
    """The classifier's input: the class x feature map, each update (or class row) scaled to
    unit norm (``scale``: "update", "class" or "none"), flattened."""
    if scale == "class":
        phi = phi / phi.norm(dim=2, keepdim=True).clamp(min=1e-12)
    elif scale == "update":
        phi = phi / phi.flatten(1).norm(dim=1).clamp(min=1e-12)[:, None, None]
    return phi.flatten(1).double().numpy()


class InputSpaceModel(nn.Module):
    """L2-regularised logistic regression on inverted updates ``(phi, psi)`` from
    :func:`invert` (not the raw weight and bias: the inversion needs the round's global model).

    Each side is standardised with its own statistics: :meth:`fit` with those of the training
    (shadow) inputs, :meth:`forward` with those given to :meth:`adapt` (the target's updates,
    all of one averaging size: the server sees every client), else the shadow's. This removes
    a corpus's, a round range's and an averaging size's offset and scale, which differ between
    shadow and target while the direction of each class-conditional mean does not.
    """

    def __init__(self, c: float = 1e-2, scale: str = "update") -> None:
        super().__init__()
        self.c, self.scale = c, scale

    @staticmethod
    def _stats(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return z.mean(0), z.std(0) + 1e-8

    def fit(self, inputs: list[torch.Tensor], labels: torch.Tensor) -> InputSpaceModel:
        z = _features(*inputs, self.scale)
        self.shadow_stats = self._stats(z)
        self.target_stats = None
        mean, std = self.shadow_stats
        self.clf = LogisticRegression(C=self.c, max_iter=2000, tol=1e-4, class_weight="balanced")
        self.clf.fit((z - mean) / std, labels.numpy())
        return self

    def adapt(self, inputs: list[torch.Tensor]) -> InputSpaceModel:
        """Standardise later inputs with the statistics of ``inputs`` (transductive)."""
        self.target_stats = self._stats(_features(*inputs, self.scale))
        return self

    def forward(self, phi: torch.Tensor, psi: torch.Tensor) -> torch.Tensor:
        """Logits ``(0, d)``, as :class:`~attacks.fl_inference.LinearUpdateModel`'s."""
        mean, std = self.target_stats or self.shadow_stats
        d = torch.as_tensor(self.clf.decision_function((_features(phi, psi, self.scale) - mean)
                                                       / std))
        return torch.stack([torch.zeros_like(d), d], dim=1)
