"""``--engine inprocess`` (the default): a round's clients as one batched computation.

Each client's update is :func:`serbench.fl.engine.local_update`'s, computed for many clients at
once. FedSGD clients share the global model, so the forward pass over all their rows is one
matmul per layer; FedAvg clients' parameters are stacked along a leading client dimension and
each layer is a batched matmul (``baddbmm``). Autograd gives the gradient at each layer's
output, and every client's weight gradient is one batched matmul from it. FedAvg's Adam is
``torch.optim``'s functional ``adam`` (default betas and eps, the engine's lr) on the stacked
tensors. The per-client engine spends most of its time on per-operator overhead of a tiny MLP,
which batching pays once per round instead (benchmarks/fl_engine.py, docs/performance.md).

The randomness is ``local_update``'s, client by client: minibatch order from
``torch.randperm(n, generator=gen)`` with ``gen`` seeded by the client's seed, dropout masks
drawn as ``nn.Dropout`` draws them (``bernoulli_(1 - p)``, divided by ``1 - p``) from a second
generator with the same seed (``local_update`` seeds the global RNG with it), and the defense's
``privatize_update`` with ``gen`` after training. Clients of unequal size are padded to the
largest batch, padded rows have zero loss weight and zero dropout mask, and a client with fewer
local steps drops out of the batch when its steps end (clients are ordered by step count, so
the active ones are a prefix). The updates equal ``local_update``'s up to float summation
order and Adam's fused kernel (tests/test_fl_engine.py states the tolerance). A defense that
``trains`` (DP-SGD, adversarial training) wraps a real module and optimizer, so its clients
run one by one through ``local_update``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.nn import functional as F
from torch.nn.utils.rnn import pad_sequence
from torch.optim.adam import adam

from serbench.fl.clients import Client
from serbench.fl.engine import FLConfig, FLRun, Params, run_in_process, serial_updates
from serbench.models.mlp import SERMLP
from serbench.plugins import Defense

#: Clients computed together: enough to amortise per-operator overhead; each costs about four
#: copies of the parameters (its update, Adam's two moments, its gradient).
CHUNK = 16

Data = Sequence[tuple[torch.Tensor, torch.Tensor]]


def run_federated(x: np.ndarray, y: np.ndarray, clients: Sequence[Client], cfg: FLConfig,
                  seed: int, **options) -> FLRun:
    """:func:`serbench.fl.engine.run_in_process` with :class:`BatchedUpdates`."""
    return run_in_process(BatchedUpdates(), x, y, clients, cfg, seed, **options)


class BatchedUpdates:
    """A :data:`~serbench.fl.engine.RoundUpdates`: the clients' ``local_update`` s,
    :data:`CHUNK` at a time, in buffers kept from round to round (a fresh tensor of several MB
    costs a page fault per 4 KiB, as much time as the arithmetic on it here). The updates it
    returns are views of one buffer per chunk, valid until the next call, as ``RoundUpdates``
    allows; Adam's state and FedAvg's gradients are scratch buffers that chunks share."""

    def __init__(self) -> None:
        self._buffers: dict[str, torch.Tensor] = {}

    def buffer(self, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        """An uninitialised tensor of ``shape``, in storage reused by later calls."""
        size = int(np.prod(shape))
        if name not in self._buffers or self._buffers[name].numel() < size:
            self._buffers[name] = torch.empty(size)
        return self._buffers[name][:size].view(shape)

    def __call__(self, params: Params, data: Data, cfg: FLConfig, seeds: Sequence[int],
                 defense: Defense | None, rnd: int) -> list[Params]:
        if defense is not None and defense.tags.trains:
            return serial_updates(params, data, cfg, seeds, defense, rnd)
        if cfg.algorithm not in ("fedsgd", "fedavg"):
            raise ValueError(f"unknown FL algorithm {cfg.algorithm!r}")
        updates: list[Params] = []
        for start in range(0, len(data), CHUNK):
            chunk, chunk_seeds = data[start:start + CHUNK], seeds[start:start + CHUNK]
            gens = [torch.Generator().manual_seed(s) for s in chunk_seeds]
            drops = [torch.Generator().manual_seed(s) for s in chunk_seeds]
            if cfg.algorithm == "fedsgd":
                chunk_updates = self._fedsgd(params, chunk, cfg, drops, start)
            else:
                chunk_updates = self._fedavg(params, chunk, cfg, gens, drops, start)
            updates += [defense.privatize_update(u, generator=gen) if defense else u
                        for u, gen in zip(chunk_updates, gens)]
        return updates

    def _fedsgd(self, params: Params, data: Data, cfg: FLConfig, drops: list[torch.Generator],
                chunk: int) -> list[Params]:
        """Each client's gradient of its mean loss on all its training data, computed on the
        shared global model."""
        padded = _Padded(data, [[torch.arange(len(y))] for _, y in data],
                         _hidden_widths(params, cfg), cfg.dropout, drops)
        grads = self._grads(params, *padded.step(0, len(data)), into=f"update {chunk}")
        return [{k: g[i] for k, g in zip(params, grads)} for i in range(len(data))]

    def _fedavg(self, params: Params, data: Data, cfg: FLConfig, gens: list[torch.Generator],
                drops: list[torch.Generator], chunk: int) -> list[Params]:
        """``global - local`` after each client's local Adam epochs. Clients run in order of
        decreasing step count, so the clients still training at step ``s`` are a prefix, and
        all of them take Adam step ``s + 1``. Adam is ``torch.optim``'s own functional step,
        the fused kernel (one pass over memory; it differs from ``foreach`` in the last bit)."""
        batches = [[b for _ in range(cfg.local_epochs)
                    for b in torch.randperm(len(y), generator=gen).split(cfg.batch_size)]
                   for (_, y), gen in zip(data, gens)]
        order = sorted(range(len(data)), key=lambda i: -len(batches[i]))
        padded = _Padded([data[i] for i in order], [batches[i] for i in order],
                         _hidden_widths(params, cfg), cfg.dropout, [drops[i] for i in order])
        n = len(data)
        local = [self.buffer(f"update {chunk} {k}", (n, *v.shape)).copy_(v)
                 for k, v in params.items()]
        exp_avg = [self.buffer(f"exp_avg {k}", (n, *v.shape)).zero_() for k, v in params.items()]
        exp_avg_sq = [self.buffer(f"exp_avg_sq {k}", (n, *v.shape)).zero_()
                      for k, v in params.items()]
        counts = sorted((len(b) for b in batches), reverse=True)
        for s in range(counts[0]):
            active = sum(c > s for c in counts)
            view = [v[:active] for v in local]
            grads = self._grads(dict(zip(params, view)), *padded.step(s, active), into="grad")
            adam(view, grads, [m[:active] for m in exp_avg], [v[:active] for v in exp_avg_sq],
                 [], [torch.tensor(float(s)) for _ in view], fused=True, amsgrad=False,
                 beta1=0.9, beta2=0.999, lr=cfg.local_lr, weight_decay=0.0, eps=1e-8,
                 maximize=False)
        for v, p in zip(local, params.values()):
            torch.sub(p, v, out=v)
        position = np.argsort(order)
        return [{k: v[position[i]] for k, v in zip(params, local)} for i in range(n)]

    def _grads(self, params: Params, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor,
               masks: list[torch.Tensor], into: str) -> list[torch.Tensor]:
        """Each client's gradient of its mean cross-entropy, in ``params``' order:
        ``SERMLP``'s forward on client ``i``'s rows ``x[i]`` with its dropout ``masks[...][i]``
        (none: dropout off); ``weight`` is 1 / rows on a client's real rows and 0 on padding.
        ``params`` holds either one model (every client's) or a stack of per-client models.

        Autograd gives only the gradient at each layer's output (delta); a client's weight
        gradient is then delta^T . input (one batched matmul for all clients, in the weight's
        own layout, into the buffers named ``into``) and its bias gradient delta's sum over rows.
        """
        names = SERMLP.layer_names
        inputs, outputs = [], []
        h = x
        with torch.enable_grad():
            for i, name in enumerate(names):
                inputs.append(h)
                z = _linear(h, params[f"{name}.weight"], params[f"{name}.bias"])
                outputs.append(z.requires_grad_(True) if i == 0 else z)  # autograd starts here
                if i < len(names) - 1:
                    h = torch.relu(z)
                    if masks:
                        h = h * masks[i]
            loss = F.cross_entropy(z.flatten(0, 1), y.flatten(), reduction="none")
            deltas = torch.autograd.grad((loss * weight.flatten()).sum(), outputs)
        grads = []
        for name, a, delta in zip(names, inputs, deltas):
            out = self.buffer(f"{into} {name}", (len(x), delta.shape[2], a.shape[2]))
            grads += [torch.bmm(delta.transpose(1, 2).contiguous(), a.detach(), out=out),
                      delta.sum(1)]
        return grads


def _hidden_widths(params: Params, cfg: FLConfig) -> list[int]:
    """The widths of the layers ``SERMLP`` applies dropout to (none without dropout)."""
    if cfg.dropout == 0:  # nn.Dropout(0) returns its input and draws nothing
        return []
    return [params[f"{name}.weight"].shape[-2] for name in SERMLP.layer_names[:-1]]


def _linear(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``nn.Linear`` on every client's rows ``h`` (clients, rows, in): one matmul when the
    clients share the layer (FedSGD), a batched one when each has its own (FedAvg)."""
    if weight.dim() == 2:
        return F.linear(h, weight, bias)
    return torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))


class _Padded:
    """Clients' rows gathered into ``(clients, steps, rows, ...)`` tensors: step ``s`` of
    client ``i`` uses ``batches[i][s]`` (indices into its data), padded with zero rows (zero
    loss weight, zero dropout mask). Dropout masks are drawn in place, batch by batch and
    client by client, as each client's forward passes draw them."""

    def __init__(self, data: Data, batches: list[list[torch.Tensor]], widths: list[int],
                 dropout: float, drops: list[torch.Generator]) -> None:
        steps = max(len(b) for b in batches)
        self.rows = [max(len(b[s]) for b in batches if s < len(b)) for s in range(steps)]
        n, d = len(data), data[0][0].shape[1]
        # One gather from the clients' rows, concatenated, plus a zero row for the padding.
        pad = sum(len(y) for _, y in data)
        index = torch.full((n, steps, max(self.rows)), pad)
        offset = 0
        for i, ((_, y), client_batches) in enumerate(zip(data, batches)):
            rows = pad_sequence(client_batches, batch_first=True, padding_value=-1)
            index[i, :len(client_batches), :rows.shape[1]] = torch.where(rows < 0, pad,
                                                                         rows + offset)
            offset += len(y)
        self.x = torch.cat([x for x, _ in data] + [torch.zeros(1, d)])[index]
        self.y = torch.cat([y for _, y in data] + [torch.zeros(1, dtype=torch.long)])[index]
        real = index < pad
        self.weight = real / real.sum(-1, keepdim=True).clamp(min=1)
        self.masks = [torch.zeros(n, steps, max(self.rows), w) for w in widths]
        for i, (client_batches, drop) in enumerate(zip(batches, drops)):
            for s, batch in enumerate(client_batches):
                for mask in self.masks:  # nn.Dropout's draw: bernoulli_(1 - p), / (1 - p)
                    mask[i, s, :len(batch)].bernoulli_(1 - dropout, generator=drop).div_(
                        1 - dropout)

    def step(self, s: int, active: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor,
                                                  list[torch.Tensor]]:
        """Step ``s``'s inputs, labels, loss weights and masks of the first ``active`` clients,
        only as many rows as the step's largest batch."""
        rows = self.rows[s]
        return (self.x[:active, s, :rows], self.y[:active, s, :rows],
                self.weight[:active, s, :rows], [m[:active, s, :rows] for m in self.masks])
