"""DSelect-k (Hazimeh et al. 2021): k binary-encoded single-expert selectors mixed by a softmax.

Initialization and regularizer as in the authors' code: selector weights and biases U(-gamma/100, gamma/100)
(inside the smooth-step band, so gradients flow), mixing logits U(-0.05, 0.05); the selectors' entropies
are summed over the k selectors and averaged over the batch, times entropy_weight.
"""

import math

import torch
from torch import nn

from moetune.moe.gates.base import Gate, GateOutput, check_param, entropy, smooth_step


class DSelectKGate(Gate):
    def __init__(self, in_dim: int, n_experts: int, k: int = 2, gamma: float = 1.0, entropy_weight: float = 0.1):
        check_param(gamma > 0, "gamma", "positive", gamma)
        super().__init__(in_dim, n_experts, k)
        self.gamma = gamma
        self.entropy_weight = entropy_weight
        self.n_bits = max(1, math.ceil(math.log2(n_experts)))
        n_codes = 2**self.n_bits
        codes = torch.tensor([[(c >> b) & 1 for b in range(self.n_bits)] for c in range(n_codes)], dtype=torch.float32)
        self.register_buffer("codes", codes)  # 2^m x m
        # codes >= n fold onto expert c mod n (as COMET folds its leaves): dropping them instead leaves a
        # selector that saturates on one with no expert at all, i.e. weights off the simplex, forever
        self.register_buffer("code_to_expert", torch.arange(n_codes) % n_experts, persistent=False)
        self.selector_logits = nn.Linear(in_dim, k * self.n_bits)
        self.mix_logits = nn.Linear(in_dim, k)
        for param in (self.selector_logits.weight, self.selector_logits.bias):
            nn.init.uniform_(param, -gamma / 100, gamma / 100)
        for param in (self.mix_logits.weight, self.mix_logits.bias):
            nn.init.uniform_(param, -0.05, 0.05)

    def forward(self, x, routing_ids=None):
        bits = smooth_step(self.selector_logits(x).view(-1, self.k, 1, self.n_bits), self.gamma)  # B x k x 1 x m
        per_bit = self.codes * bits + (1 - self.codes) * (1 - bits)  # B x k x 2^m x m
        per_code = per_bit.prod(-1)  # B x k x 2^m, sums to 1 over the codes
        # each selector's distribution over experts (B x k x n)
        selector = per_code.new_zeros(*per_code.shape[:2], self.n_experts).index_add(-1, self.code_to_expert, per_code)
        weights = (torch.softmax(self.mix_logits(x), -1).unsqueeze(-1) * selector).sum(1)
        aux = self.entropy_weight * entropy(selector).sum(1).mean()
        return GateOutput(weights, aux)


GATE = DSelectKGate
