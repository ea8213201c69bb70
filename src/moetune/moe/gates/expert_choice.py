"""Expert Choice routing (Zhou et al., NeurIPS 2022, "Mixture-of-Experts with Expert Choice Routing").

Section 3.1 of the paper: token-to-expert scores S = softmax(X W_g) over the experts; each expert i then
takes the c samples of the batch with the highest S[:, i], where c = f * batch / n rounded up (capacity
factor f, by default k, the average number of experts per sample), and a sample's output is the sum
over the experts that took it of S[t, i] * E_i(x_t). A sample may get anywhere from 0 to n experts;
every expert gets exactly c samples (load balanced by construction, no auxiliary loss).

Evaluation: routing is the same rule within each evaluation batch, so a sample's experts depend on the
batch it is evaluated in. Batch-level gates are evaluated in batches of train.batch_size, the size they were
trained on, in the split's fixed order, the last batch ending at the split's end (deterministic; see
Trainer.predict). In MMoE each task's gate makes its own choice.
"""

import math

import torch
from torch import nn

from moetune.moe.gates.base import Gate, GateOutput, check_param


class ExpertChoiceGate(Gate):
    batch_level = True

    def __init__(self, in_dim: int, n_experts: int, k: int = 2, capacity_factor: float | None = None):
        super().__init__(in_dim, n_experts, k)
        check_param(
            capacity_factor is None or capacity_factor > 0, "capacity_factor", "positive or null", capacity_factor
        )
        self.capacity_factor = float(k if capacity_factor is None else capacity_factor)
        self.linear = nn.Linear(in_dim, n_experts)
        nn.init.xavier_uniform_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def capacity(self, batch: int) -> int:
        return max(1, min(batch, math.ceil(self.capacity_factor * batch / self.n_experts)))

    def forward(self, x, routing_ids=None):
        scores = torch.softmax(self.linear(x), dim=-1)  # batch x n
        c = self.capacity(x.shape[0])
        chosen = scores.topk(c, dim=0).indices  # c x n: the samples each expert takes
        mask = torch.zeros_like(scores).scatter(0, chosen, 1.0)
        return GateOutput(scores * mask, x.new_zeros(()))


GATE = ExpertChoiceGate
