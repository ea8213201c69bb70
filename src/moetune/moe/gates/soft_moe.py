"""Soft MoE (Puigcerver et al., ICLR 2024, "From Sparse to Soft Mixtures of Experts").

Section 2.1 of the paper, with the batch's samples as the tokens: logits = X Phi (X: batch x d routing
inputs, Phi: d x n*p slot parameters, p slots per expert). Dispatch D = softmax of the logits over the
samples (each slot's column sums to 1); combine C = softmax over the slots (each sample's row sums to 1).
Slot s takes the convex combination sum_b D[b, s] x'_b of the batch's expert inputs x' (the bottom's
features for MLP experts, the raw images for CNN experts), expert s // p processes its p slots, and
sample b's output is sum_s C[b, s] y_s. Section 2.3's normalization (`normalize`, off by default): X's rows
and Phi's columns l2-normalized, the logits scaled by a learned scalar (initialised to 1). The paper
introduces it for large model widths; on our small routing inputs it starts every slot near the batch mean
(logits in [-1, 1]) and trained worse (synthetic data, 8 experts, 12 epochs: test loss 1.15 with it, 0.83
without; Top-k 0.75). Phi is initialised N(0, 1/d). Fully differentiable, no
auxiliary loss, and no k: every expert processes its p slots, so every sample mixes every expert
(`weights`, for diagnostics, is each sample's combine mass per expert).

Sample-level form: a sample (one row of a tabular batch, or one whole image) is one token, so slots mix
samples of the batch. In MMoE each task's gate has its own slots; the experts run on the T * n * p slots of
all tasks (moetune.moe.experts.soft_mix). With local search the learned permutation assigns slot groups to
experts (group i goes to expert j with weight P[i, j]). Evaluation: a sample's output depends on its batch,
so it runs in batches of train.batch_size, the size the slots were trained on, in the split's fixed order
(deterministic; see Trainer.predict).
"""

import torch
import torch.nn.functional as F
from torch import nn

from moetune.moe.gates.base import Gate, GateOutput, SlotRouting, check_param


class SoftMoEGate(Gate):
    sparse = False
    batch_level = True

    def __init__(self, in_dim: int, n_experts: int, k: int = 1, slots_per_expert: int = 1, normalize: bool = False):
        super().__init__(in_dim, n_experts, k)
        check_param(int(slots_per_expert) >= 1, "slots_per_expert", "at least 1", slots_per_expert)
        self.slots_per_expert = int(slots_per_expert)
        self.normalize = bool(normalize)
        self.phi = nn.Parameter(torch.randn(in_dim, n_experts * self.slots_per_expert) / in_dim**0.5)
        self.scale = nn.Parameter(torch.ones(())) if self.normalize else None

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        if not self.normalize:
            return x @ self.phi
        return self.scale * (F.normalize(x, dim=1) @ F.normalize(self.phi, dim=0))

    def forward(self, x, routing_ids=None):
        logits = self.logits(x)  # batch x n*p
        dispatch, combine = torch.softmax(logits, dim=0), torch.softmax(logits, dim=1)
        per_expert = combine.view(x.shape[0], self.n_experts, self.slots_per_expert).sum(2)
        return GateOutput(per_expert, x.new_zeros(()), SlotRouting(dispatch, combine, self.slots_per_expert))


GATE = SoftMoEGate
