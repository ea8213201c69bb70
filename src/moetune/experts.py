"""Expert banks with two equivalent ways to run them: dense (every expert on every sample) and sparse
(each expert only on the samples routed to it). mix() picks one and combines the outputs per task."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MLPExperts(nn.Module):
    """n MLP experts with stacked weights: the dense path is one fused matmul for the first layer."""

    def __init__(self, n_experts: int, in_dim: int, hidden: list[int], dropout: float = 0.0):
        super().__init__()
        if not hidden:
            raise ValueError("MLP experts need at least one hidden layer width")
        self.n_experts = n_experts
        self.dropout = dropout
        dims = [in_dim, *hidden]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            bound = 1.0 / math.sqrt(d_in)
            self.weights.append(nn.Parameter(torch.empty(n_experts, d_in, d_out).uniform_(-bound, bound)))
            self.biases.append(nn.Parameter(torch.empty(n_experts, d_out).uniform_(-bound, bound)))
        self.out_dim = dims[-1]

    def _activate(self, h: torch.Tensor) -> torch.Tensor:
        return F.dropout(F.relu(h), self.dropout, self.training)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """B x d -> B x n x out."""
        w0 = self.weights[0]
        n, d_in, d_out = w0.shape
        h = self._activate((x @ w0.permute(1, 0, 2).reshape(d_in, n * d_out)).view(-1, n, d_out) + self.biases[0])
        for w, b in zip(self.weights[1:], self.biases[1:]):
            h = self._activate(torch.bmm(h.transpose(0, 1), w).transpose(0, 1) + b)
        return h

    def one(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e on the rows x."""
        h = x
        for w, b in zip(self.weights, self.biases):
            h = self._activate(torch.addmm(b[e], h, w[e]))
        return h


class CNNExperts(nn.Module):
    """n small CNN experts on images (COMET supplement: conv5x5x10, pool, conv5x5x20, pool, Dense(50) x 2)."""

    def __init__(self, n_experts: int, image_shape: tuple[int, int, int], hidden: list[int] | None = None, dropout: float = 0.0):
        super().__init__()
        channels, height, width = image_shape
        hidden = hidden or [50, 50]
        self.n_experts = n_experts
        self.experts = nn.ModuleList(self._make(channels, height, width, hidden, dropout) for _ in range(n_experts))
        self.out_dim = hidden[-1]

    @staticmethod
    def _make(channels: int, height: int, width: int, hidden: list[int], dropout: float) -> nn.Sequential:
        pad = 2 if min(height, width) < 16 else 0  # tiny images (MultiDigits) keep their size through the convs
        layers = [nn.Conv2d(channels, 10, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2),
                  nn.Conv2d(10, 20, 5, padding=pad), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten()]
        with torch.no_grad():
            flat = nn.Sequential(*layers)(torch.zeros(1, channels, height, width)).shape[1]
        dims = [flat, *hidden]
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [nn.Linear(d_in, d_out), nn.ReLU(), nn.Dropout(dropout)]
        return nn.Sequential(*layers)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        return torch.stack([expert(x) for expert in self.experts], dim=1)

    def one(self, e: int, x: torch.Tensor) -> torch.Tensor:
        return self.experts[e](x)


def mix(experts: nn.Module, x: torch.Tensor, task_weights: list[torch.Tensor], sparse: bool) -> list[torch.Tensor]:
    """Per task t: sum_i g_t[:, i] * f_i(x). Sparse runs expert i only on samples some task routes to it."""
    if not sparse:
        outputs = experts.dense(x)  # B x n x out
        return [torch.bmm(g.unsqueeze(1), outputs).squeeze(1) for g in task_weights]
    active = torch.stack(task_weights).ne(0).any(0)  # B x n
    expert_index, sample_index = active.t().nonzero(as_tuple=True)  # grouped by expert
    counts = active.sum(0).tolist()
    pieces = []
    for e, rows in enumerate(torch.split(sample_index, counts)):
        if counts[e]:
            pieces.append(experts.one(e, x[rows]))
    out = torch.cat(pieces) if pieces else x.new_zeros(0, experts.out_dim)
    results = []
    for g in task_weights:
        weighted = out * g[sample_index, expert_index].unsqueeze(1)
        results.append(out.new_zeros(x.shape[0], out.shape[1]).index_add(0, sample_index, weighted))
    return results
