"""Hash routing (Roller et al. 2021): each routing id is pre-allocated at random, seeded, to one expert."""

import torch
import torch.nn.functional as F

from moetune.errors import ConfigError
from moetune.moe.gates.base import Gate, GateOutput


class HashGate(Gate):
    at_most_k = True
    uses_routing_ids = True

    def __init__(self, in_dim: int, n_experts: int, k: int = 1, n_routing_ids: int = 0, hash_seed: int = 0):
        if k != 1:
            raise ConfigError(f"hash gate routes each id to exactly one expert: set gate.k=1 (got k={k})")
        if n_routing_ids < 1:
            raise ConfigError(
                "hash gate needs routing ids, but the dataset provides none; "
                "use a dataset with routing ids (e.g. movielens) or another gate"
            )
        super().__init__(in_dim, n_experts, 1)
        generator = torch.Generator().manual_seed(hash_seed)
        self.register_buffer("table", torch.randint(0, n_experts, (n_routing_ids,), generator=generator))

    def forward(self, x, routing_ids=None):
        if routing_ids is None:
            raise ConfigError("hash gate called without routing ids; the dataset must provide them")
        weights = F.one_hot(self.table[routing_ids], self.n_experts).to(x.dtype)
        return GateOutput(weights, x.new_zeros(()))


GATE = HashGate
