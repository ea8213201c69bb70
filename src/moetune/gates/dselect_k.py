"""DSelect-k (Hazimeh et al. 2021): k binary-encoded single-expert selectors mixed by a softmax."""
import math

import torch
from torch import nn

from moetune.errors import ConfigError
from moetune.gates.base import Gate, GateOutput, entropy, smooth_step


class DSelectKGate(Gate):
    def __init__(self, in_dim: int, n_experts: int, k: int = 2, gamma: float = 1.0, entropy_weight: float = 0.1):
        if gamma <= 0:
            raise ConfigError(f"dselect_k: gamma must be positive (got {gamma})")
        super().__init__(in_dim, n_experts, k)
        self.gamma = gamma
        self.entropy_weight = entropy_weight
        self.n_bits = max(1, math.ceil(math.log2(n_experts)))
        codes = torch.tensor([[(i >> b) & 1 for b in range(self.n_bits)] for i in range(n_experts)], dtype=torch.float32)
        self.register_buffer("codes", codes)  # n x m; codes >= n are left out, i.e. masked
        self.selector_logits = nn.Linear(in_dim, k * self.n_bits)
        self.mix_logits = nn.Linear(in_dim, k)
        # start inside the smooth-step band so gradients flow (as in the DSelect-k reference)
        nn.init.uniform_(self.selector_logits.weight, -gamma / 100, gamma / 100)
        nn.init.uniform_(self.selector_logits.bias, -gamma / 2, gamma / 2)

    def forward(self, x, routing_ids=None):
        bits = smooth_step(self.selector_logits(x).view(-1, self.k, 1, self.n_bits), self.gamma)  # B x k x 1 x m
        per_bit = self.codes * bits + (1 - self.codes) * (1 - bits)  # B x k x n x m
        selector = per_bit.prod(-1)  # B x k x n: each selector's distribution over experts
        selector = selector / selector.sum(-1, keepdim=True).clamp_min(1e-12)
        weights = (torch.softmax(self.mix_logits(x), -1).unsqueeze(-1) * selector).sum(1)
        aux = self.entropy_weight * entropy(selector).mean()
        return GateOutput(weights, aux)


GATE = DSelectKGate
