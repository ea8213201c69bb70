"""X-MoE routing (Chi et al., NeurIPS 2022, "On the Representation Collapse of Sparse Mixture of Experts").

Section 3 of the paper: the routing input h is projected to a low dimension (W, no bias), and expert i is
scored by the cosine similarity of W h with its embedding e_i, divided by a learned temperature:
s_i = cos(W h, e_i) / tau; then top-k with a softmax over the kept scores, as the Top-k gate does.
Initial values as in the authors' release: embeddings orthogonal with gain 0.32, routing dimension 16,
tau = 0.07 (learned through log tau, so it stays positive). The authors' torchscale code normalizes only
the embeddings; this follows the paper and normalizes both, so routing does not change with the scale of
the routing input.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from moetune.moe.gates.base import Gate, GateOutput, check_param


class XMoEGate(Gate):
    at_most_k = True

    def __init__(self, in_dim: int, n_experts: int, k: int = 2, routing_dim: int = 16, temperature: float = 0.07):
        super().__init__(in_dim, n_experts, k)
        check_param(int(routing_dim) >= 1, "routing_dim", "at least 1", routing_dim)
        check_param(temperature > 0, "temperature", "positive", temperature)
        self.projection = nn.Linear(in_dim, routing_dim, bias=False)
        self.expert_embeddings = nn.Parameter(torch.empty(n_experts, routing_dim))
        nn.init.orthogonal_(self.expert_embeddings, gain=0.32)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        h = F.normalize(self.projection(x), dim=-1, eps=1e-6)
        e = F.normalize(self.expert_embeddings, dim=-1, eps=1e-6)
        return h @ e.T / self.log_temperature.exp()

    def forward(self, x, routing_ids=None):
        top_values, top_index = self.scores(x).topk(self.k, dim=-1)
        weights = torch.zeros(x.shape[0], self.n_experts, dtype=x.dtype, device=x.device)
        weights = weights.scatter(-1, top_index, torch.softmax(top_values, dim=-1))
        return GateOutput(weights, x.new_zeros(()))


GATE = XMoEGate
