"""Top-k gate (Shazeer et al. 2017): softmax over the k largest logits, optional noisy gating."""

import torch
import torch.nn.functional as F
from torch import nn

from moetune.moe.gates.base import Gate, GateOutput


class TopKGate(Gate):
    at_most_k = True

    def __init__(self, in_dim: int, n_experts: int, k: int = 2, noisy: bool = False):
        super().__init__(in_dim, n_experts, k)
        self.linear = nn.Linear(in_dim, n_experts)
        nn.init.xavier_uniform_(self.linear.weight)  # Keras' Dense default, as in the authors' gate
        nn.init.zeros_(self.linear.bias)
        self.noise = nn.Linear(in_dim, n_experts) if noisy else None
        if noisy:
            nn.init.zeros_(self.noise.weight)
            nn.init.zeros_(self.noise.bias)

    def forward(self, x, routing_ids=None):
        logits = self.linear(x)
        if self.noise is not None and self.training:
            logits = logits + torch.randn_like(logits) * F.softplus(self.noise(x))
        top_values, top_index = logits.topk(self.k, dim=-1)
        weights = torch.zeros_like(logits).scatter(-1, top_index, torch.softmax(top_values, dim=-1))
        return GateOutput(weights, x.new_zeros(()))


GATE = TopKGate
