"""The autograd kernels behind the expert banks (moetune.moe.experts): each computes what plain autograd
would, with a hand-written backward that makes one pass over the activations (tests/test_step_reference.py
checks the gradients against plain autograd).

- dropout_mask: the keep-or-drop mask of a dropout layer, exactly Bernoulli(1 - p) per element.
- SparseMLPMix: the sparse MLP path: routed rows gathered once, each layer a grouped GEMM
  (torch._grouped_mm on the CPU where it applies, else one addmm per non-empty expert), gate-weighted
  rows scattered back per task.
- BiasReluMix: the dense path's bias + relu + dropout + mixing for all tasks, in cache-sized row chunks.
- Mix: mixing expert outputs into each task's output.
- FlatBatchedMatmul: the dense path's flat first layer as one GEMM per expert, from BATCHED_WIDTH up.
"""

from __future__ import annotations

import torch

_HALF_MASKS: dict[tuple[torch.device, torch.dtype], torch.Tensor] = {}


def _half_masks(device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """256 x 8: row b holds the dropout mask (0 or 2) that the bits of the byte b give, lowest bit first."""
    key = (device, dtype)
    if key not in _HALF_MASKS:
        bits = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128])
        _HALF_MASKS[key] = ((torch.arange(256).unsqueeze(1) & bits) != 0).to(dtype).mul_(2.0).to(device)
    return _HALF_MASKS[key]


def dropout_mask(like: torch.Tensor, p: float) -> torch.Tensor:
    """Inverted dropout's mask for `like`: each entry independently 1 / (1 - p) with probability 1 - p, else 0.

    bernoulli_ costs about 11 ns an entry on a CPU thread (it was a seventh of a training step). For p = 0.5
    (the paper's and every preset's rate) each entry takes one bit of 64-bit random words, exactly
    Bernoulli(1/2), looked up a byte at a time (8 mask entries per random byte, one gather); other rates
    compare float32 uniforms with 1 - p (Bernoulli(1 - p) up to float32's 2^-24 resolution), still cheaper
    than bernoulli_. Draws from the global generator, so a seeded run repeats exactly."""
    keep = 1.0 - p
    if p == 0.5:
        n = like.numel()
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 63) // 64,), dtype=torch.int64, device=like.device)
        table = _half_masks(like.device, like.dtype)
        return table.index_select(0, words.view(torch.uint8).to(torch.int32)).view(-1)[:n].view(like.shape)
    kept = torch.rand(like.shape, dtype=like.dtype, device=like.device).lt_(keep)
    return kept.to(like.dtype).mul_(1.0 / keep)


def _grouped_mm_ok(*tensors: torch.Tensor) -> bool:
    """torch's grouped matmul (one call for every expert's rows) takes float32/bf16/fp16 with 16-byte aligned
    strides; other dtypes (float64 in the reference tests), odd widths and builds without it loop over the
    experts."""
    return hasattr(torch, "_grouped_mm") and all(
        t.device.type == "cpu"  # on CUDA it wants bf16 on recent GPUs; measured on the CPU only
        and t.dtype in (torch.float32, torch.bfloat16, torch.float16)
        and all(st * t.element_size() % 16 == 0 for st in t.stride() if st != 1)
        for t in tensors
    )


def _grouped_matmul(
    a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor, groups: list[tuple[int, int, int]], out_rows: bool
):
    """Per expert e with rows lo:hi: out_rows -> a[lo:hi] @ b[e] stacked (R x d_out); else a[:, lo:hi] @ b[lo:hi]
    per expert (n x d x d_out, zero for an expert without rows). One torch._grouped_mm call where it runs."""
    if _grouped_mm_ok(a, b):
        return torch._grouped_mm(a, b, offs=offs)
    if out_rows:
        out = a.new_empty(a.shape[0], b.shape[2])
        for e, lo, hi in groups:
            torch.mm(a[lo:hi], b[e], out=out[lo:hi])
        return out
    out = a.new_zeros(len(offs), a.shape[0], b.shape[1])
    for e, lo, hi in groups:
        torch.mm(a[:, lo:hi], b[lo:hi], out=out[e])
    return out


BATCHED_WIDTH = 256  # expert width from which the flat first layer runs as one GEMM per expert
_CHUNK_BYTES = 1 << 20  # rows of the B x (n * out) activations handled together: a cache-sized block


def _chunk_rows(h: torch.Tensor) -> int:
    if h.device.type != "cpu":  # on a GPU one pass per op is what pays
        return max(1, h.shape[0])
    return max(1, _CHUNK_BYTES // (h.shape[1] * h.element_size()))


def _per_expert(w: torch.Tensor, n: int) -> torch.Tensor:
    """An expert layer's weights as n x d_in x d_out: a strided view of a flat first layer (d_in x n * out)."""
    return w.view(w.shape[0], n, -1).transpose(0, 1) if w.dim() == 2 else w


def _flat_weight_grad(a: torch.Tensor, d_z: torch.Tensor, n: int, groups: list[tuple[int, int, int]]):
    """A flat first layer's gradient, d_in x n * out: expert e's columns are a[:, lo:hi] @ d_z[lo:hi], one
    GEMM per expert written in place. A grouped GEMM's n x d_in x out result costs a permuting copy: at
    the paper's shape (256 wide, batch 512 top-2) 3.1 ms against 2.2 on one thread; at 64 wide the
    grouped GEMM and its copy win (a Hash-off movielens_cpu trial ran 10% slower with this loop)."""
    width = d_z.shape[1]
    grad = d_z.new_zeros(a.shape[0], n * width) if len(groups) < n else d_z.new_empty(a.shape[0], n * width)
    for e, lo, hi in groups:
        torch.mm(a[:, lo:hi], d_z[lo:hi], out=grad[:, e * width : (e + 1) * width])
    return grad


class SparseMLPMix(torch.autograd.Function):
    """Sparse MLP experts fused with the per-task mixing.

    Routed (sample, expert) rows are grouped by expert: expert e owns rows bounds[e]:bounds[e + 1],
    whose samples are sample_index[rows] (row_expert[rows] = e); row_weights (R x T) are those rows' gate
    weights per task. The inputs are gathered once (R x d_in); each layer is one grouped GEMM (torch's
    _grouped_mm over all experts, or one mm per non-empty expert) plus the gathered biases, then relu/dropout
    over all rows at once; the result is scaled by the row weights and scatter-added into B x T x out in
    cache-sized row chunks. The backward mirrors it by hand: no per-expert autograd graph, no cat/split
    copies, and a few large elementwise ops rather than many per-expert ones (each op is an OpenMP region).
    The first layer's weight comes flat (d_in x n * out, as MLPExperts stores it); from BATCHED_WIDTH up its
    GEMMs read it in place and its gradient is written flat (no copies of the weight or its gradient), below
    it is copied to n x d_in x d_out once per call. Saved for backward: the gathered inputs, each layer's
    post-activation and the weights.
    """

    @staticmethod
    def forward(ctx, x, row_weights, sample_index, row_expert, bounds, p, training, *params):
        n_layers = len(params) // 2
        biases = params[n_layers:]
        batch, tasks = x.shape[0], row_weights.shape[1]
        n = len(bounds) - 1
        flat = params[0].dim() == 2  # the first layer as MLPExperts stores it, d_in x n * out
        in_place = flat and x.device.type == "cpu" and params[0].shape[1] // n >= BATCHED_WIDTH
        # n x d_in x d_out each: the flat layer read in place from BATCHED_WIDTH up, else copied once
        weights = [w if in_place else w.contiguous() for w in (_per_expert(w, n) for w in params[:n_layers])]
        offs = torch.tensor(bounds[1:], dtype=torch.int32, device=x.device)
        groups = [(e, bounds[e], bounds[e + 1]) for e in range(n) if bounds[e + 1] > bounds[e]]
        h = x.index_select(0, sample_index)  # R x d_in, one gather for all experts
        saved = [h]
        for w, b in zip(weights, biases, strict=False):
            h = _grouped_matmul(h, w, offs, groups, out_rows=True).add_(b.index_select(0, row_expert)).clamp_min_(0)
            if training and p > 0:
                h.mul_(dropout_mask(h, p))
            saved.append(h)
        out = h.new_zeros(batch, tasks * h.shape[1])
        step = _chunk_rows(out)
        weighted = h.new_empty(min(step, h.shape[0]), tasks, h.shape[1])  # reused per chunk: stays in cache
        for lo in range(0, h.shape[0], step):
            hc = h[lo : lo + step]
            wc = weighted[: len(hc)]
            torch.mul(hc.unsqueeze(1), row_weights[lo : lo + step].unsqueeze(2), out=wc)
            out.index_add_(0, sample_index[lo : lo + step], wc.view(len(hc), -1))
        ctx.save_for_backward(row_weights, sample_index, row_expert, offs, *weights, *saved)
        ctx.batch, ctx.groups, ctx.n_layers, ctx.flat, ctx.in_place = batch, groups, n_layers, flat, in_place
        ctx.scale = 1.0 / (1.0 - p) if training and p > 0 else 1.0
        return out.view(batch, tasks, -1)

    @staticmethod
    def backward(ctx, grad_out):
        row_weights, sample_index, row_expert, offs, *rest = ctx.saved_tensors
        n_layers, groups, scale = ctx.n_layers, ctx.groups, ctx.scale
        weights, acts = rest[:n_layers], rest[n_layers:]  # acts[0]: gathered inputs, acts[l + 1]: layer l's output
        need_x, need_rw = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_w = ctx.needs_input_grad[7 : 7 + n_layers]
        need_b = ctx.needs_input_grad[7 + n_layers :]
        grad_w: list[torch.Tensor | None] = [None] * n_layers
        grad_b: list[torch.Tensor | None] = [None] * n_layers
        grad_rows = grad_out.reshape(ctx.batch, -1)
        d_z, grad_rw = _mixing_backward(grad_rows, acts[-1], row_weights, sample_index, scale, need_rw)
        grad_x = None
        for layer in range(n_layers - 1, -1, -1):
            h_in = acts[layer]
            if need_w[layer] and layer == 0 and ctx.in_place:
                grad_w[layer] = _flat_weight_grad(h_in.t(), d_z, len(offs), groups)
            elif need_w[layer]:
                grad_w[layer] = _grouped_matmul(h_in.t(), d_z, offs, groups, out_rows=False)
                if layer == 0 and ctx.flat:  # back to the flat layout: d_in x n * out
                    grad_w[layer] = grad_w[layer].transpose(0, 1).reshape(h_in.shape[1], -1)
            if need_b[layer]:
                grad_b[layer] = d_z.new_zeros(len(offs), d_z.shape[1]).index_add_(0, row_expert, d_z)
            if layer > 0 or need_x:
                d_h = _grouped_matmul(d_z, weights[layer].transpose(1, 2), offs, groups, out_rows=True)
            if layer > 0:  # the layer below's relu + dropout: dz = scale * dh where h > 0 (written over dh)
                d_z = torch.ops.aten.threshold_backward.grad_input(d_h, h_in, 0, grad_input=d_h)
                if scale != 1.0:
                    d_z.mul_(scale)
        if need_x:
            grad_x = d_h.new_zeros(ctx.batch, d_h.shape[1]).index_add_(0, sample_index, d_h)
        return (grad_x, grad_rw, None, None, None, None, None, *grad_w, *grad_b)


def _mixing_backward(grad_out, h, row_weights, sample_index, scale, need_rw):
    """Backward of out[b] += sum_t rw[r, t] * h[r] over the routed rows r of sample b, through the last
    layer's relu and dropout: (dz of the last layer, R x out; the row weights' gradient, R x T or None).

    Row chunks of cache size: each chunk's upstream rows are gathered, dotted with h, weighted and masked
    while in cache (one pass over R x out rather than four, and no R x out temporaries)."""
    rows, width = h.shape
    tasks = row_weights.shape[1]
    d_z = h.new_empty(rows, width)
    grad_rw = h.new_empty(rows, tasks) if need_rw else None
    step = _chunk_rows(grad_out)
    scratch = h.new_empty(min(step, rows), tasks, width)
    for lo in range(0, rows, step):
        hc, dzc, rwc = h[lo : lo + step], d_z[lo : lo + step], row_weights[lo : lo + step]
        d_rows = scratch[: len(hc)]
        torch.index_select(grad_out, 0, sample_index[lo : lo + step], out=d_rows.view(len(hc), -1))
        if grad_rw is not None:
            torch.linalg.vecdot(d_rows, hc.unsqueeze(1), out=grad_rw[lo : lo + step])
        # over the T tasks elementwise: a bmm of R tiny matrices would run one small kernel per row
        torch.mul(d_rows[:, 0], rwc[:, :1], out=dzc)
        for t in range(1, tasks):
            dzc.addcmul_(d_rows[:, t], rwc[:, t : t + 1])
        torch.ops.aten.threshold_backward.grad_input(dzc, hc, 0, grad_input=dzc)  # relu and dropout
        if scale != 1.0:
            dzc.mul_(scale)
    return d_z, grad_rw


class Mix(torch.autograd.Function):
    """out[b, t] = sum_i G[b, t, i] * H[b, i]: H is B x n x out, G is B x T x n -> B x T x out."""

    @staticmethod
    def forward(ctx, h, g):
        ctx.save_for_backward(h, g)
        return torch.bmm(g, h)

    @staticmethod
    def backward(ctx, grad_out):
        h, g = ctx.saved_tensors
        grad_out = grad_out.contiguous()  # e.g. expanded from a .sum(): bmm would loop per sample
        grad_h = grad_g = None
        if ctx.needs_input_grad[0]:
            g_t = g.transpose(1, 2)  # B x n x T
            grad_h = g_t[:, :, :1] * grad_out[:, :1]
            for t in range(1, g.shape[1]):
                grad_h.addcmul_(g_t[:, :, t : t + 1], grad_out[:, t : t + 1])
        if ctx.needs_input_grad[1]:
            grad_g = torch.bmm(grad_out, h.transpose(1, 2))
        return grad_h, grad_g


def flat_matmul(x: torch.Tensor, w: torch.Tensor, n: int) -> torch.Tensor:
    """x @ w for a first expert layer stored flat (d_in x n * out): one wide GEMM, or from BATCHED_WIDTH
    up on the CPU one GEMM per expert written into the same layout (FlatBatchedMatmul)."""
    if x.device.type == "cpu" and n > 1 and w.shape[1] // n >= BATCHED_WIDTH:
        return FlatBatchedMatmul.apply(x, w, n)
    return torch.mm(x, w)


class FlatBatchedMatmul(torch.autograd.Function):
    """x @ w, w flat (d_in x n * out), as n batched GEMMs (one per expert) written straight into the flat
    output; the weight's gradient likewise, the input's gradient one GEMM. Measured at the paper's shape
    (batch 512, 16 experts 256 -> 256), 1 and 2 threads: forward 7.1 ms against 8.2-8.5 for the wide GEMM,
    weight gradient 7.7 against 8.6-9.5. At 64 wide the wide GEMM wins (0.85-0.92 ms against 1.03-1.08)
    and at 128 neither does, hence BATCHED_WIDTH."""

    @staticmethod
    def forward(ctx, x, w, n):
        batch, d_in = x.shape
        z = x.new_empty(batch, w.shape[1])
        per_expert = w.view(d_in, n, -1).transpose(0, 1)  # n x d_in x out, strided: no copy
        torch.bmm(x.unsqueeze(0).expand(n, -1, -1), per_expert, out=z.view(batch, n, -1).transpose(0, 1))
        ctx.save_for_backward(x, w)
        ctx.n = n
        return z

    @staticmethod
    def backward(ctx, grad_z):
        x, w = ctx.saved_tensors
        n, (batch, d_in) = ctx.n, x.shape
        grad_z = grad_z.contiguous()
        grad_x = torch.mm(grad_z, w.t()) if ctx.needs_input_grad[0] else None
        grad_w = None
        if ctx.needs_input_grad[1]:
            grad_w = torch.empty_like(w)
            torch.bmm(
                x.t().unsqueeze(0).expand(n, -1, -1),
                grad_z.view(batch, n, -1).transpose(0, 1),
                out=grad_w.view(d_in, n, -1).transpose(0, 1),
            )
        return grad_x, grad_w, None


class BiasReluMix(torch.autograd.Function):
    """The dense path's epilogue: bias, relu, dropout and the per-task mixing in one pass.

    z: B x (n * out), the last layer's pre-activation without bias (a fresh matmul output, overwritten
    in place with h = dropout(relu(z + bias))); bias: n * out; g: B x T x n. Returns (g @ h: B x T x out,
    h). Both passes walk the rows in cache-sized chunks, so each B x n x out buffer is streamed from
    memory once per pass instead of once per elementwise op, and the backward allocates only dz
    (autograd's relu / bias / bmm backward would allocate three B x n x out tensors)."""

    @staticmethod
    def forward(ctx, z, bias, g, p, training):
        ctx.set_materialize_grads(False)
        batch, n = g.shape[0], g.shape[2]
        scale = 1.0 / (1.0 - p) if training and p > 0 else 1.0
        out = z.new_empty(batch, g.shape[1], z.shape[1] // n)
        step = _chunk_rows(z)
        for lo in range(0, batch, step):
            zc = z[lo : lo + step]
            zc.add_(bias).clamp_min_(0)
            if scale != 1.0:
                zc.mul_(dropout_mask(zc, p))
            torch.bmm(g[lo : lo + step], zc.view(zc.shape[0], n, -1), out=out[lo : lo + step])
        ctx.mark_dirty(z)
        ctx.save_for_backward(z, g)
        ctx.scale = scale
        return out, z

    @staticmethod
    def backward(ctx, grad_out, grad_h):
        h, g = ctx.saved_tensors
        grad_z = torch.empty_like(h)
        batch, n = g.shape[0], g.shape[2]
        if grad_out is None:
            grad_out = h.new_zeros(batch, g.shape[1], h.shape[1] // n)
        grad_out = grad_out.contiguous()  # e.g. expanded from a .sum(): bmm would loop per sample
        grad_g = torch.empty_like(g) if ctx.needs_input_grad[2] else None
        grad_bias = h.new_zeros(h.shape[1]) if ctx.needs_input_grad[1] else None
        g_t = g.transpose(1, 2)  # B x n x T
        step = _chunk_rows(h)
        for lo in range(0, batch, step):
            hc, dout, dzc = h[lo : lo + step], grad_out[lo : lo + step], grad_z[lo : lo + step]
            h3 = hc.view(hc.shape[0], n, -1)
            if grad_g is not None:
                torch.bmm(dout, h3.transpose(1, 2), out=grad_g[lo : lo + step])
            dz3 = dzc.view_as(h3)  # dh is written here, then turned into dz in place: no temporary per chunk
            if g.shape[1] == 1:
                torch.mul(g_t[lo : lo + step], dout, out=dz3)  # rows x n x out
            else:
                torch.bmm(g_t[lo : lo + step], dout, out=dz3)
            if grad_h is not None:  # h was also used outside the mixing
                dz3.add_(grad_h[lo : lo + step].view_as(dz3))
            # relu and dropout: dz = scale * dh where h > 0
            torch.ops.aten.threshold_backward.grad_input(dz3, h3, 0, grad_input=dz3)
            if ctx.scale != 1.0:
                dzc.mul_(ctx.scale)
            if grad_bias is not None:
                grad_bias.add_(dzc.sum(0))
        return grad_z, grad_bias, grad_g, None, None
