"""Permutation-based local search (COMET, section 4): a learned expert permutation shared by the task gates.

During the first E_perm epochs P = Sinkhorn((L + noise * Gumbel) / tau) in log space, with tau annealed
log-linearly 1e-3 -> 1e-7 and the Sinkhorn iterations linearly 20 -> 150 over the phase, plus an
entropy penalty zeta * (H(P) + H(row-normalized P)), summed over the entries as in the authors' code.
Then P is hardened by the Hungarian algorithm (maximising sum L_ij P_ij) and frozen. Evaluation always
uses the hard permutation. Gates are untouched: g' = normalize(g P).

With learn=False (the `frozen` arm) everything above runs unchanged but L keeps its initial draw and gets
no gradient: the matched control that isolates what learning the permutation adds.

Each module also reports what its phase did (`phase_report`, moetune.contract's PERM_* metrics), so a user
can see whether the permutation moved at all in the steps it had.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from moetune.moe.gates.base import entropy

TAU_START, TAU_END = 1e-3, 1e-7
ITERS_START, ITERS_END = 20, 150


def _normalize(x, axis: int, softmax):
    """One half-iteration in place: x -= logsumexp(x, axis); softmax = exp(new x) (what the backward needs).
    numpy on the CPU (a fraction of torch's per-op cost on a 16 x 16 array), torch elsewhere."""
    if isinstance(x, np.ndarray):
        x -= x.max(axis=axis, keepdims=True)
        total = np.exp(x, out=softmax).sum(axis=axis, keepdims=True)
        x -= np.log(total)
        softmax /= total
        return
    x -= torch.logsumexp(x, dim=axis, keepdim=True)
    torch.exp(x, out=softmax)


def _project(grad, softmax, axis: int):
    """The backward of one normalisation: dy - softmax * sum(dy, axis)."""
    if isinstance(grad, np.ndarray):
        return grad - softmax * grad.sum(axis=axis, keepdims=True)
    return grad.addcmul(softmax, grad.sum(axis, keepdim=True), value=-1)


USE_NUMPY_ON_CPU = True  # the tests turn it off to run the torch loops (a GPU's) on the CPU


class _LogSinkhorn(torch.autograd.Function):
    """The unrolled log-space Sinkhorn with its backward written out: the same gradient as autograd through
    every iteration (not the fixed point's implicit one), in a few small ops per normalisation. Through
    autograd, 20..150 iterations of a 16 x 16 matrix cost about 20 tiny torch ops each way and were 40% of a
    training step in the permutation phase; on the CPU the loops run in numpy.

    Half-iteration k is y_k = x - logsumexp(x, dim_k); its backward is dx = dy - exp(y_k) * sum(dy, dim_k),
    so the forward keeps every exp(y_k) (2 * n_iters x n x n); the last one is P."""

    @staticmethod
    def forward(ctx, log_alpha, n_iters):
        x = log_alpha.detach().clone()
        ctx.numpy = USE_NUMPY_ON_CPU and x.device.type == "cpu"
        softmaxes = x.new_empty(2 * n_iters, *x.shape)
        if ctx.numpy:
            x, buffers = x.numpy(), softmaxes.numpy()
        else:
            buffers = softmaxes
        for k in range(2 * n_iters):
            _normalize(x, -1 if k % 2 == 0 else -2, buffers[k])
        ctx.save_for_backward(softmaxes)
        return softmaxes[-1].clone()

    @staticmethod
    def backward(ctx, grad_p):
        (softmaxes,) = ctx.saved_tensors
        grad = grad_p * softmaxes[-1]
        if ctx.numpy:
            softmaxes, grad = softmaxes.numpy(), grad.numpy()
        for k in range(softmaxes.shape[0] - 1, -1, -1):
            grad = _project(grad, softmaxes[k], -1 if k % 2 == 0 else -2)
        return (torch.from_numpy(grad) if ctx.numpy else grad), None


def log_sinkhorn(log_alpha: torch.Tensor, n_iters: int) -> torch.Tensor:
    """Alternating row/column normalisation in log space; returns the (near) doubly-stochastic exp."""
    if n_iters == 0:
        return log_alpha.exp()
    return _LogSinkhorn.apply(log_alpha, n_iters)


def harden(weights: torch.Tensor) -> torch.Tensor:
    """The permutation matrix maximising sum_ij W_ij P_ij (Hungarian algorithm)."""
    from scipy.optimize import linear_sum_assignment  # here: scipy.optimize costs a worker's start 0.6 s

    w = weights.detach().to("cpu", torch.float64).numpy()
    rows, cols = linear_sum_assignment(w, maximize=True)
    hard = np.zeros_like(w)
    hard[rows, cols] = 1.0
    return torch.as_tensor(hard, dtype=weights.dtype, device=weights.device)


def effective_experts(p: torch.Tensor) -> float:
    """exp of the entropy of each row of P, averaged over rows: 1 for a permutation, n for the uniform matrix."""
    rows = p / p.sum(-1, keepdim=True).clamp_min(1e-12)
    return float(entropy(rows).exp().mean())


def schedule(progress: float) -> tuple[float, int]:
    """(tau, Sinkhorn iterations) at a fraction of the phase done: tau log-linear, iterations linear."""
    f = min(max(progress, 0.0), 1.0)
    tau = 10 ** (math.log10(TAU_START) + f * (math.log10(TAU_END) - math.log10(TAU_START)))
    return tau, int(round(ITERS_START + f * (ITERS_END - ITERS_START)))


class PermutationLocalSearch(nn.Module):
    """Learns one n x n permutation of the experts during the first `e_perm` epochs, then freezes it.
    learn=False keeps the log-weights at their initial draw (the `frozen` arm), all else the same."""

    def __init__(self, n_experts: int, e_perm: int = 5, zeta: float = 1e-4, noise: float = 0.0, learn: bool = True):
        super().__init__()
        self.n_experts = n_experts
        self.e_perm = e_perm
        self.zeta = zeta
        self.noise = noise
        self.learn = learn
        self.log_weights = nn.Parameter(torch.empty(n_experts, n_experts).uniform_(-0.05, 0.05), requires_grad=learn)
        self.register_buffer("initial", self.log_weights.detach().clone(), persistent=False)
        self.register_buffer("hard", torch.eye(n_experts))
        self.register_buffer("is_hard", torch.tensor(False))
        self.hardened = False  # host mirror of is_hard, so the forward never syncs with the device
        self.progress = 0.0  # fraction of the learning phase done, set by the trainer each step
        self.register_load_state_dict_post_hook(lambda module, _: module._sync_hardened())

    def _sync_hardened(self) -> None:
        self.hardened = bool(self.is_hard)
        self.log_weights.requires_grad_(self.learn and not self.hardened)

    def schedule(self) -> tuple[float, int]:
        """(tau, Sinkhorn iterations) at the current progress through the phase."""
        return schedule(self.progress)

    @property
    def learning(self) -> bool:
        """In the phase (training and not yet hardened): P is soft. True for learn=False too: the frozen arm
        mixes by the same soft P, only its L does not move."""
        return self.training and not self.hardened

    def matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(P, entropy penalty): soft and noisy while learning, the hard permutation otherwise."""
        if not self.learning:
            hard = self.hard if self.hardened else harden(self.log_weights)
            return hard, self.log_weights.new_zeros(())
        tau, n_iters = self.schedule()
        gumbel = 0.0
        if self.noise:
            u = torch.rand_like(self.log_weights).clamp_(1e-20, 1.0)
            gumbel = -torch.log(-torch.log(u) + 1e-20)
        soft = log_sinkhorn((self.log_weights + self.noise * gumbel) / tau, n_iters)
        rows = soft / soft.sum(-1, keepdim=True).clamp_min(1e-12)
        penalty = self.zeta * (entropy(soft).sum() + entropy(rows).sum())
        return soft, penalty

    def freeze(self) -> None:
        """End of the phase: harden to the permutation maximising sum L_ij P_ij and stop learning it."""
        self.hard.copy_(harden(self.log_weights))
        self.is_hard.fill_(True)
        self._sync_hardened()

    def permutation(self) -> list[int]:
        """Expert i's weight goes to expert permutation()[i] (the hardened matrix as an index list)."""
        hard = self.hard if self.hardened else harden(self.log_weights)
        return hard.argmax(1).tolist()

    @torch.no_grad()
    def phase_report(self) -> dict[str, float]:
        """What the phase did to the permutation: how far L moved from its draw (over the draw's spread), how
        many experts the hardened assignment moved, and P's effective experts per row at the phase's first
        and last step (their tau and iteration counts)."""
        start, end = self.initial, self.log_weights.detach()
        spread = float(start.max() - start.min())
        before, after = harden(start).argmax(1), harden(end).argmax(1)
        return {
            "perm_shift": float((end - start).abs().max()) / max(spread, 1e-12),
            "perm_reassigned": float((before != after).sum()),
            "perm_effective_experts_start": effective_experts(log_sinkhorn(start / schedule(0.0)[0], schedule(0.0)[1])),
            "perm_effective_experts_end": effective_experts(log_sinkhorn(end / schedule(1.0)[0], schedule(1.0)[1])),
        }

    @staticmethod
    def apply(weights: torch.Tensor, matrix: torch.Tensor) -> torch.Tensor:
        """g' = normalize(g P)."""
        permuted = weights @ matrix
        return permuted / permuted.sum(-1, keepdim=True).clamp_min(1e-12)


class UniformMixingWarmup(nn.Module):
    """The `warmup` arm, a dense start: for the first `e_perm` epochs every gate's weights are mixed by the
    fixed uniform doubly-stochastic matrix (each expert gets 1/n), nothing is learned; then the gates run
    unmixed. Not a control for the permutation: a gate whose rows sum to 1 (Top-k) gets no gradient in the
    phase (g U = 1/n for any g), so it leaves the phase at its initialization; `frozen` is the matched
    control. Same interface as PermutationLocalSearch."""

    def __init__(self, n_experts: int, e_perm: int = 5):
        super().__init__()
        self.n_experts = n_experts
        self.e_perm = e_perm
        self.register_buffer("is_hard", torch.tensor(False))
        self.hardened = False
        self.progress = 0.0
        self.register_load_state_dict_post_hook(lambda module, _: setattr(module, "hardened", bool(module.is_hard)))

    @property
    def learning(self) -> bool:
        return self.training and not self.hardened

    def matrix(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The uniform matrix while warming up (training only); the identity afterwards and at evaluation."""
        eye = torch.eye(self.n_experts, device=self.is_hard.device)
        if self.learning:
            return torch.full_like(eye, 1.0 / self.n_experts), eye.new_zeros(())
        return eye, eye.new_zeros(())

    def freeze(self) -> None:
        self.is_hard.fill_(True)
        self.hardened = True

    def permutation(self) -> list[int]:
        return list(range(self.n_experts))

    def phase_report(self) -> dict[str, float]:
        """The uniform matrix moves nothing and spreads every row over all n experts."""
        n = float(self.n_experts)
        return {
            "perm_shift": 0.0,
            "perm_reassigned": 0.0,
            "perm_effective_experts_start": n,
            "perm_effective_experts_end": n,
        }
