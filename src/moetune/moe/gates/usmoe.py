"""USMoE, Unified Sparse Mixture of Experts (Do, Le and Tran, arXiv 2503.22996; v1 "Sparse Mixture of Experts
as Unified Competitive Learning").

The paper's unified score f(S) = alpha * f_e(S) + beta * f_t(S), alpha + beta = 1, combines an expert-choice
and a token-choice score of the router's scores S, and its unified mechanism selects the highest-scoring
token-expert pairs jointly over both dimensions under a budget of k pairs per token on average. The equations
of the method section were not available to us; this follows the authors' released routing
(github.com/giangdip2410/USMoE: OlmoeSparseMoeBlock, DeepseekMoE and FMoETransformerMLP), which is:
  S = x W (raw router logits, batch x n);
  unified = (1 - rate) * softmax_experts(S) + rate * sigmoid(S) * 2 / n   (rate = beta, 0.5 in the code);
  the batch * k largest entries of `unified`, over the flattened batch x n matrix, are kept;
  a kept pair's mixing weight is its unified score, not renormalised (the code's default).
The code selects per sequence; here a sample is one token and the batch is the sequence, so a sample may
get 0..n experts and its weights need not sum to 1. No auxiliary loss. Evaluation: the same rule within each
evaluation batch, of train.batch_size samples (see Trainer.predict). `rate` is searched.
"""

import torch
from torch import nn

from moetune.moe.gates.base import Gate, GateOutput, check_param


class USMoEGate(Gate):
    batch_level = True

    def __init__(self, in_dim: int, n_experts: int, k: int = 2, rate: float = 0.5):
        super().__init__(in_dim, n_experts, k)
        check_param(0.0 <= float(rate) <= 1.0, "rate", "in [0, 1]", rate)
        self.rate = float(rate)
        self.linear = nn.Linear(in_dim, n_experts)
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def unified_score(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.linear(x)
        token_choice = torch.softmax(logits, dim=-1)
        return (1.0 - self.rate) * token_choice + self.rate * torch.sigmoid(logits) * 2.0 / self.n_experts

    def forward(self, x, routing_ids=None):
        score = self.unified_score(x)
        budget = min(score.numel(), x.shape[0] * self.k)
        chosen = score.flatten().topk(budget).indices
        mask = torch.zeros(score.numel(), dtype=score.dtype, device=score.device).scatter(0, chosen, 1.0)
        return GateOutput(score * mask.view_as(score), x.new_zeros(()))


GATE = USMoEGate
