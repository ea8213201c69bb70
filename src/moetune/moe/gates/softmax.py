"""Dense softmax gate: the MMoE baseline, every expert active."""

import torch
from torch import nn

from moetune.moe.gates.base import Gate, GateOutput


class SoftmaxGate(Gate):
    sparse = False

    def __init__(self, in_dim: int, n_experts: int, k: int = 0):
        super().__init__(in_dim, n_experts, n_experts)
        self.linear = nn.Linear(in_dim, n_experts)

    def forward(self, x, routing_ids=None):
        return GateOutput(torch.softmax(self.linear(x), dim=-1), x.new_zeros(()))


GATE = SoftmaxGate
