"""Expert banks with two equivalent ways to run them: dense (every expert on every sample) and sparse
(each expert only on the samples routed to it). mix() picks one and combines the outputs per task.

Performance notes (CPU, measured with bench/bench_moe_layer.py):
- The first layer of MLPExperts is stored as one (in_dim, n * out) matrix, so the dense path is a single
  addmm (bias fused) with no per-call permute copy of the weight nor of its gradient; .one(e) and the
  sparse path use strided per-expert views of it.
- The sparse path runs every layer as one grouped GEMM (_GroupedLinear): rows sorted by expert once,
  one mm per non-empty expert written into preallocated buffers, ReLU fused, and a hand-written
  backward, so there is no per-expert autograd graph, no torch.cat/split copies and no full-size
  zero-filled gradient per expert.
- Mixing is one batched product for all tasks (_Mix); its backward avoids the per-sample matmul loops
  autograd's bmm backward falls into for (B x 1 x n) operands.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class _GroupedLinear(torch.autograd.Function):
    """rows grouped by expert (bounds[e]:bounds[e+1] belong to expert e) -> act(rows_e @ W_e + b_e).

    weight is n x d_in x d_out (any strides, e.g. a permuted view of a flat parameter), bias n x d_out.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, bounds, relu):
        out = x.new_empty(x.shape[0], weight.shape[2])
        for e in range(weight.shape[0]):
            lo, hi = bounds[e], bounds[e + 1]
            if hi > lo:
                torch.addmm(bias[e], x[lo:hi], weight[e], out=out[lo:hi])
        if relu:
            out.clamp_min_(0)
        ctx.bounds = bounds
        ctx.relu = relu
        ctx.save_for_backward(x, weight, out if relu else None)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, weight, out = ctx.saved_tensors
        bounds = ctx.bounds
        n = weight.shape[0]
        grad = torch.ops.aten.threshold_backward(grad_out, out, 0) if ctx.relu else grad_out
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        grad_x = x.new_empty(x.shape) if need_x else None
        grad_w = grad_b = None
        empty = any(bounds[e + 1] == bounds[e] for e in range(n))
        if need_w:
            # same memory layout as the weight (a flat first layer gets a flat, contiguous gradient)
            grad_w = torch.zeros_like(weight) if empty else torch.empty_like(weight)
        if need_b:
            grad_b = weight.new_zeros(n, weight.shape[2]) if empty else weight.new_empty(n, weight.shape[2])
        for e in range(n):
            lo, hi = bounds[e], bounds[e + 1]
            if hi == lo:
                continue
            g = grad[lo:hi]
            if need_w:
                torch.mm(x[lo:hi].t(), g, out=grad_w[e])
            if need_x:
                torch.mm(g, weight[e].t(), out=grad_x[lo:hi])
            if need_b:
                torch.sum(g, 0, out=grad_b[e])
        return grad_x, grad_w, grad_b, None, None


class _Mix(torch.autograd.Function):
    """out[b, t] = sum_i G[b, t, i] * H[b, i]: H is B x n x out, G is B x T x n -> B x T x out."""

    @staticmethod
    def forward(ctx, h, g):
        ctx.save_for_backward(h, g)
        return torch.bmm(g, h)

    @staticmethod
    def backward(ctx, grad_out):
        h, g = ctx.saved_tensors
        grad_h = grad_g = None
        if ctx.needs_input_grad[0]:
            g_t = g.transpose(1, 2)  # B x n x T
            grad_h = g_t[:, :, :1] * grad_out[:, :1]
            for t in range(1, g.shape[1]):
                grad_h.addcmul_(g_t[:, :, t:t + 1], grad_out[:, t:t + 1])
        if ctx.needs_input_grad[1]:
            grad_g = torch.bmm(grad_out, h.transpose(1, 2))
        return grad_h, grad_g


_CHUNK_BYTES = 1 << 19  # rows of B x n x out processed together stay in a core's L2
_BACKWARD_IN_PLACE = True


class _BiasReluMix(torch.autograd.Function):
    """The last expert layer's epilogue fused with the mixing, done in place in cache-sized row chunks.

    z: B x (n * out) pre-activation without bias (a fresh tensor; overwritten), bias: n * out,
    g: B x T x n. h = dropout(relu(z + bias)) (in z's memory); returns (g @ h: B x T x out, h).
    The backward turns the saved h into dz in place, so the dense path allocates no B x n x out
    buffers beyond the one matmul output (at batch 4096 each such buffer costs ~64 MB of page faults
    and memory traffic)."""

    @staticmethod
    def forward(ctx, z, bias, g, p, training):
        ctx.set_materialize_grads(False)
        batch, n = g.shape[0], g.shape[2]
        scale = 1.0 / (1.0 - p) if training and p > 0 else 1.0
        out = z.new_empty(batch, g.shape[1], z.shape[1] // n)
        step = max(1, _CHUNK_BYTES // (z.shape[1] * z.element_size()))
        for lo in range(0, batch, step):
            zc = z[lo:lo + step]
            zc.add_(bias).clamp_min_(0)
            if scale != 1.0:
                zc.mul_(torch.empty_like(zc).bernoulli_(1.0 - p).mul_(scale))
            torch.bmm(g[lo:lo + step], zc.view(zc.shape[0], n, -1), out=out[lo:lo + step])
        ctx.mark_dirty(z)
        ctx.save_for_backward(z, g)
        ctx.scale = scale
        ctx.consumed = False
        return out, z

    @staticmethod
    def backward(ctx, grad_out, grad_h):
        h, g = ctx.saved_tensors
        if _BACKWARD_IN_PLACE:
            if ctx.consumed:
                raise RuntimeError("the fused dense expert layer cannot be backpropagated twice (retain_graph=True)")
            ctx.consumed = True
            grad_z = h
        else:
            grad_z = torch.empty_like(h)
        batch, n = g.shape[0], g.shape[2]
        if grad_out is None:
            grad_out = h.new_zeros(batch, g.shape[1], h.shape[1] // n)
        grad_g = torch.empty_like(g) if ctx.needs_input_grad[2] else None
        grad_bias = h.new_zeros(h.shape[1]) if ctx.needs_input_grad[1] else None
        g_t = g.transpose(1, 2)  # B x n x T
        step = max(1, _CHUNK_BYTES // (h.shape[1] * h.element_size()))
        for lo in range(0, batch, step):
            hc, dout, dzc = h[lo:lo + step], grad_out[lo:lo + step], grad_z[lo:lo + step]
            h3 = hc.view(hc.shape[0], n, -1)
            if grad_g is not None:
                torch.bmm(dout, h3.transpose(1, 2), out=grad_g[lo:lo + step])
            if g.shape[1] == 1:
                dh = g_t[lo:lo + step] * dout  # rows x n x out
            else:
                dh = torch.bmm(g_t[lo:lo + step], dout)
            if grad_h is not None:  # h was also used outside the mixing
                dh.add_(grad_h[lo:lo + step].view_as(dh))
            # relu and dropout: dz = scale * dh where h > 0, written over h
            torch.ops.aten.threshold_backward.grad_input(dh, h3, 0, grad_input=dzc.view_as(h3))
            if ctx.scale != 1.0:
                dzc.mul_(ctx.scale)
            if grad_bias is not None:
                grad_bias.add_(dzc.sum(0))
        return grad_z, grad_bias, grad_g, None, None


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
        for layer, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
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

    def _activate(self, h: torch.Tensor) -> torch.Tensor:
        return F.dropout(h, self.dropout, self.training) if self.dropout > 0 else h

    def _last_preactivation(self, x: torch.Tensor) -> torch.Tensor:
        """B x d -> the last layer's pre-activation without its bias, B x (n * out), a fresh tensor."""
        if len(self.weights) == 1:
            return torch.mm(x, self.weights[0])
        n = self.n_experts
        h = self._activate(F.relu(torch.addmm(self.biases[0].view(-1), x, self.weights[0]), inplace=True))
        h = h.view(x.shape[0], n, -1).transpose(0, 1)  # n x B x d
        for w, b in zip(self.weights[1:-1], self.biases[1:-1]):
            h = self._activate(F.relu(torch.baddbmm(b.unsqueeze(1), h, w)))
        return torch.bmm(h, self.weights[-1]).transpose(0, 1).reshape(x.shape[0], -1)

    def dense(self, x: torch.Tensor) -> torch.Tensor:
        """B x d -> B x n x out."""
        z = self._last_preactivation(x).view(x.shape[0], self.n_experts, -1)
        return self._activate(F.relu(z + self.biases[-1]))

    def dense_mix(self, x: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
        """B x d, mixing weights B x T x n -> B x T x out: the dense path with the epilogue fused."""
        out, _ = _BiasReluMix.apply(self._last_preactivation(x), self.biases[-1].view(-1), g, self.dropout, self.training)
        return out

    def grouped(self, x: torch.Tensor, bounds: list[int]) -> torch.Tensor:
        """Rows of x grouped by expert (expert e owns rows bounds[e]:bounds[e + 1]) -> R x out."""
        h = x
        for layer, b in enumerate(self.biases):
            h = self._activate(_GroupedLinear.apply(h, self.expert_weight(layer), b, bounds, True))
        return h

    def one(self, e: int, x: torch.Tensor) -> torch.Tensor:
        """Expert e on the rows x."""
        h = x
        for layer, b in enumerate(self.biases):
            h = self._activate(F.relu(torch.addmm(b[e], h, self.expert_weight(layer)[e])))
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

    def grouped(self, x: torch.Tensor, bounds: list[int]) -> torch.Tensor:
        pieces = [self.experts[e](x[bounds[e]:bounds[e + 1]]) for e in range(self.n_experts) if bounds[e + 1] > bounds[e]]
        return torch.cat(pieces) if pieces else x.new_zeros(0, self.out_dim)

    def one(self, e: int, x: torch.Tensor) -> torch.Tensor:
        return self.experts[e](x)


def _grouped(experts: nn.Module, x: torch.Tensor, bounds: list[int]) -> torch.Tensor:
    if hasattr(experts, "grouped"):
        return experts.grouped(x, bounds)
    pieces = [experts.one(e, x[bounds[e]:bounds[e + 1]]) for e in range(len(bounds) - 1) if bounds[e + 1] > bounds[e]]
    return torch.cat(pieces) if pieces else x.new_zeros(0, experts.out_dim)


def mix(experts: nn.Module, x: torch.Tensor, task_weights: list[torch.Tensor], sparse: bool) -> list[torch.Tensor]:
    """Per task t: sum_i g_t[:, i] * f_i(x). Sparse runs expert i only on samples some task routes to it."""
    batch, n = task_weights[0].shape
    if not sparse:
        g = torch.stack(task_weights, 1)  # B x T x n
        if hasattr(experts, "dense_mix"):
            return list(experts.dense_mix(x, g).unbind(1))
        return list(_Mix.apply(experts.dense(x), g).unbind(1))  # dense(x): B x n x out
    stacked = torch.stack(task_weights)  # T x B x n
    active = stacked.ne(0).any(0)  # B x n
    expert_index, sample_index = active.t().nonzero(as_tuple=True)  # grouped by expert, samples ascending
    counts = torch.bincount(expert_index, minlength=n).tolist()
    bounds = [0]
    for c in counts:
        bounds.append(bounds[-1] + c)
    out = _grouped(experts, x.index_select(0, sample_index), bounds)  # R x out
    # each routed row's weight for every task: T x R -> R x T
    row_weights = stacked.reshape(len(task_weights), batch * n).index_select(1, sample_index * n + expert_index).t()
    weighted = (out.unsqueeze(1) * row_weights.unsqueeze(2)).reshape(out.shape[0], len(task_weights) * out.shape[1])
    combined = out.new_zeros(batch, weighted.shape[1]).index_add(0, sample_index, weighted)
    return list(combined.view(batch, len(task_weights), -1).unbind(1))
