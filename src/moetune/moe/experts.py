"""Expert banks with two equivalent ways to run them: dense (every expert on every sample) and sparse
(each expert only on the samples routed to it). mix() picks one and combines the outputs per task.

Performance (CPU; bench/bench_moe_layer.py measures it):
- MLPExperts stores its first layer as one (in_dim, n * width) matrix: the dense path is a single
  matmul with no per-call permute copy of the weight (nor of its gradient), or from 256 wide one GEMM
  per expert written into that layout (kernels.flat_matmul); .one(e) and the sparse path use strided
  per-expert views (expert_weight).
- Dense: matmul, then BiasReluMix (moetune.moe.kernels) does bias + relu + dropout + mixing for all tasks in cache-sized
  row chunks, with a hand-written backward: one pass over the B x n x out activations each way, where
  autograd's bias/relu/bmm ops make (and allocate for) one pass per op; this is what pays at large
  batches, where those tensors no longer fit in cache.
- Sparse (MLP): SparseMLPMix (moetune.moe.kernels) gathers the routed rows once (grouped by expert),
  runs each layer as a grouped GEMM (torch._grouped_mm, or one addmm per non-empty expert), and scatters the
  gate-weighted rows back per task; its backward is hand-written too: no per-expert autograd graph,
  no cat/split copies, no full-size zero-filled weight gradient per expert.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from moetune.moe.gates.base import SlotRouting
from moetune.moe.kernels import BiasReluMix, Mix, SparseMLPMix, flat_matmul


class MLPExperts(nn.Module):
    """n MLP experts. The first layer is stored flat, (in_dim, n * width): expert e owns columns
    e * width:(e + 1) * width, so the dense path is one fused matmul; later layers are n x d_in x d_out."""

    def __init__(self, n_experts: int, in_dim: int, hidden: list[int], dropout: float = 0.0):
        super().__init__()
        if not hidden:
            raise ValueError("MLP experts need at least one hidden layer width")
        self.n_experts = n_experts
        self.dropout = dropout
        dims = [in_dim, *hidden]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for layer, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:], strict=False)):
            bound = 1.0 / math.sqrt(d_in)
            w = torch.empty(n_experts, d_in, d_out).uniform_(-bound, bound)
            if layer == 0:
                w = w.permute(1, 0, 2).reshape(d_in, n_experts * d_out).contiguous()
            self.weights.append(nn.Parameter(w))
            self.biases.append(nn.Parameter(torch.empty(n_experts, d_out).uniform_(-bound, bound)))
        self.out_dim = dims[-1]

    def expert_weight(self, layer: int) -> torch.Tensor:
        """Layer `layer`'s weights as n x d_in x d_out (a view; strided for the flat first layer)."""
        w = self.weights[layer]
        if layer == 0:
            return w.view(w.shape[0], self.n_experts, -1).transpose(0, 1)
        return w

    def _dropout(self, h: torch.Tensor) -> torch.Tensor:
        return F.dropout(h, self.dropout, self.training) if self.dropout > 0 else h

    def _last_preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """B x d -> the last layer's pre-activation without its bias, B x (n * out), a fresh tensor."""
        if len(self.weights) == 1:
            return flat_matmul(x, self.weights[0], self.n_experts)
        n = self.n_experts
        h = self._dropout(F.relu(torch.addmm(self.biases[0].view(-1), x, self.weights[0]), inplace=True))
        h = h.view(x.shape[0], n, -1).transpose(0, 1)  # n x B x d
        for w, b in zip(self.weights[1:-1], self.biases[1:-1], strict=False):
            h = self._dropout(F.relu(torch.baddbmm(b.unsqueeze(1), h, w)))
        if n == 1:  # one expert (a dense model): the transposed reshape below would be a view, not fresh
            return torch.mm(h[0], self.weights[-1][0])
        return torch.bmm(h, self.weights[-1]).transpose(0, 1).reshape(x.shape[0], -1)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """B x d -> B x n x out."""
        z = self._last_preactivation(x).view(x.shape[0], self.n_experts, -1)
        return self._dropout(F.relu(z + self.biases[-1]))

    def dense_mix(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """B x d, mixing weights B x T x n -> B x T x out: the dense path with the epilogue fused."""
        out, _ = BiasReluMix.apply(
            self._last_preactivation(x), self.biases[-1].view(-1), g, self.dropout, self.training
        )
        return out

    def sparse_mix(
        self,
        x: torch.Tensor,
        row_weights: torch.Tensor,
        sample_index: torch.Tensor,
        row_expert: torch.Tensor,
        bounds: list[int],
    ) -> torch.Tensor:
        """Sparse path fused with the mixing: rows grouped by expert (see SparseMLPMix) -> B x T x out."""
        params = [*self.weights, *self.biases]  # the first layer flat, as stored
        return SparseMLPMix.apply(
            x, row_weights, sample_index, row_expert, bounds, self.dropout, self.training, *params
        )

    def each(self, x: torch.Tensor) -> torch.Tensor:
        """n x R x d -> n x R x out: expert e on its own rows x[e], one batched matmul per layer (Soft MoE's
        slots: every expert runs the same number of rows)."""
        h = x
        for layer, b in enumerate(self.biases):
            h = self._dropout(F.relu(torch.baddbmm(b.unsqueeze(1), h, self.expert_weight(layer))))
        return h

    def one(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e on the rows x."""
        h = x
        for layer, b in enumerate(self.biases):
            h = self._dropout(F.relu(torch.addmm(b[e], h, self.expert_weight(layer)[e])))
        return h


class CNNExperts(nn.Module):
    """n small CNN experts on images (COMET supplement: conv5x5x10, pool, conv5x5x20, pool, Dense(50) x 2)."""

    def __init__(
        self, n_experts: int, image_shape: tuple[int, int, int], hidden: list[int] | None = None, dropout: float = 0.0
    ):
        super().__init__()
        channels, height, width = image_shape
        hidden = hidden or [50, 50]
        self.n_experts = n_experts
        self.experts = nn.ModuleList(self._make(channels, height, width, hidden, dropout) for _ in range(n_experts))
        self.out_dim = hidden[-1]

    @staticmethod
    def _make(channels: int, height: int, width: int, hidden: list[int], dropout: float) -> nn.Sequential:
        pad = 2 if min(height, width) < 16 else 0  # tiny images (MultiDigits) keep their size through the convs
        layers = [
            nn.Conv2d(channels, 10, 5, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(10, 20, 5, padding=pad),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Flatten(),
        ]
        with torch.no_grad():
            flat = nn.Sequential(*layers)(torch.zeros(1, channels, height, width)).shape[1]
        dims = [flat, *hidden]
        for d_in, d_out in zip(dims[:-1], dims[1:], strict=False):
            layers += [nn.Linear(d_in, d_out), nn.ReLU(), nn.Dropout(dropout)]
        return nn.Sequential(*layers)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([expert(x) for expert in self.experts], dim=1)

    def each(self, x: torch.Tensor) -> torch.Tensor:
        """n x R x image -> n x R x out: expert e on its own rows x[e]."""
        return torch.stack([expert(rows) for expert, rows in zip(self.experts, x, strict=True)])

    def one(self, e: int, x: torch.Tensor) -> torch.Tensor:
        return self.experts[e](x)


def _grouped(experts: nn.Module, x: torch.Tensor, bounds: list[int]) -> torch.Tensor:
    """Rows of x grouped by expert (expert e owns rows bounds[e]:bounds[e + 1]) -> R x out, via one()."""
    pieces = [experts.one(e, x[bounds[e] : bounds[e + 1]]) for e in range(len(bounds) - 1) if bounds[e + 1] > bounds[e]]
    return torch.cat(pieces) if pieces else x.new_zeros(0, experts.out_dim)


def _per_task(out: torch.Tensor) -> list[torch.Tensor]:
    """B x T x out -> T tensors B x out (one task: a view, so the backward copies nothing)."""
    return [out.squeeze(1)] if out.shape[1] == 1 else list(out.unbind(1))


def mix(experts: nn.Module, x: torch.Tensor, task_weights: list[torch.Tensor], sparse: bool) -> list[torch.Tensor]:
    """Per task t: sum_i g_t[:, i] * f_i(x). Sparse runs expert i only on samples some task routes to it."""
    batch, n = task_weights[0].shape
    if not sparse:
        g = torch.stack(task_weights, 1)  # B x T x n
        if hasattr(experts, "dense_mix"):
            return _per_task(experts.dense_mix(x, g))
        return _per_task(Mix.apply(experts.dense(x), g))  # dense(x): B x n x out
    stacked = torch.stack(task_weights)  # T x B x n
    active = stacked.ne(0).any(0)  # B x n
    expert_index, sample_index = active.t().nonzero(as_tuple=True)  # grouped by expert, samples ascending
    counts = torch.bincount(expert_index, minlength=n).tolist()
    bounds = [0]
    for c in counts:
        bounds.append(bounds[-1] + c)
    tasks = len(task_weights)
    # each routed row's gate weight for every task: R x T
    row_weights = stacked.reshape(tasks, batch * n).index_select(1, sample_index * n + expert_index).t().contiguous()
    if hasattr(experts, "sparse_mix"):
        return _per_task(experts.sparse_mix(x, row_weights, sample_index, expert_index, bounds))
    out = _grouped(experts, x.index_select(0, sample_index), bounds)  # R x out
    weighted = (out.unsqueeze(1) * row_weights.unsqueeze(2)).reshape(out.shape[0], len(task_weights) * out.shape[1])
    combined = out.new_zeros(batch, weighted.shape[1]).index_add(0, sample_index, weighted)
    return _per_task(combined.view(batch, len(task_weights), -1))


def soft_mix(
    experts: nn.Module, x: torch.Tensor, routings: list[SlotRouting], assignment: torch.Tensor, hard: bool
) -> list[torch.Tensor]:
    """Soft MoE per task t: slot inputs D_t^T x (convex combinations of the batch's samples), slot group i (its
    p slots) run by expert j with weight assignment[i, j], outputs mixed back per sample by C_t.

    `hard`: assignment is a permutation (no local search, or a frozen one), so each expert runs only the
    T * p slots of its one group; otherwise (a permutation being learned) every expert runs every slot.
    """
    tasks, n, p = len(routings), experts.n_experts, routings[0].slots_per_expert
    flat = x.flatten(1)
    slots = torch.stack([r.dispatch.t() @ flat for r in routings])  # T x n*p x features
    if hard:
        to_expert = assignment.argmax(1)  # group i -> expert to_expert[i]
        by_expert = slots.view(tasks, n, p, -1).transpose(0, 1)[to_expert.argsort()]  # expert j's group first
        out = experts.each(by_expert.reshape(n, tasks * p, *x.shape[1:]))  # expert j on its T * p slots
        out = out.view(n, tasks, p, -1)[to_expert].transpose(0, 1)  # back to T x group x p x out
    else:
        every = experts.dense(slots.reshape(tasks * n * p, *x.shape[1:])).view(tasks, n, p, n, -1)
        out = torch.einsum("tipjo,ij->tipo", every, assignment)
    slot_out = out.reshape(tasks, n * p, -1)
    return [r.combine @ slot_out[t] for t, r in enumerate(routings)]
