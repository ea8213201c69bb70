"""COMET (Ibrahim et al. 2023): k soft binary trees over the experts, one leaf per expert.

Each internal node sends p = S_gamma(<z, x> + b) left and 1 - p right; a tree's leaf probability is
the product along its path. g = sum over trees of softmax over all (tree, leaf) of (a(x) + log P),
folded onto the experts (leaf l -> expert l mod n when n is not a power of two). Entropy
regularization drives each tree to a single leaf, so at most k experts stay active.

Initialization and regularizer as in the authors' code: node weights and biases U(-gamma/100, gamma/100)
(every node starts near 1/2), leaf scores U(-0.05, 0.05); the entropy of each tree's leaf distribution is
summed over the k trees and averaged over the batch, times lambda (entropy_weight).
"""

import math

import torch
from torch import nn

from moetune.moe.gates.base import Gate, GateOutput, check_param, entropy, safe_log, smooth_step


class CometGate(Gate):
    def __init__(self, in_dim: int, n_experts: int, k: int = 2, gamma: float = 1.0, entropy_weight: float = 0.1):
        check_param(gamma > 0, "gamma", "positive", gamma)
        super().__init__(in_dim, n_experts, k)
        self.gamma = gamma
        self.entropy_weight = entropy_weight
        self.depth = max(1, math.ceil(math.log2(n_experts)))
        self.n_leaves = 2**self.depth
        self.node_logits = nn.Linear(in_dim, k * (self.n_leaves - 1))
        self.leaf_scores = nn.Linear(in_dim, k * self.n_leaves)
        for param in (self.node_logits.weight, self.node_logits.bias):
            nn.init.uniform_(param, -gamma / 100, gamma / 100)
        for param in (self.leaf_scores.weight, self.leaf_scores.bias):
            nn.init.uniform_(param, -0.05, 0.05)
        self.register_buffer("leaf_to_expert", torch.arange(self.n_leaves) % n_experts)

    def leaf_probabilities(self, x: torch.Tensor) -> torch.Tensor:
        """B x k x leaves: probability that each tree routes x to each leaf (heap order)."""
        go_left = smooth_step(self.node_logits(x).view(-1, self.k, self.n_leaves - 1), self.gamma)
        probs = x.new_ones(x.shape[0], self.k, 1)
        for level in range(self.depth):
            p = go_left[:, :, 2**level - 1 : 2 ** (level + 1) - 1]
            probs = torch.stack([probs * p, probs * (1 - p)], dim=-1).flatten(-2)
        return probs

    def forward(self, x, routing_ids=None):
        leaf_probs = self.leaf_probabilities(x)
        logits = self.leaf_scores(x).view(-1, self.k, self.n_leaves) + safe_log(leaf_probs)
        joint = torch.softmax(logits.flatten(1), dim=-1).view_as(leaf_probs).sum(1)  # B x leaves
        if self.n_leaves == self.n_experts:
            weights = joint
        else:
            weights = joint.new_zeros(joint.shape[0], self.n_experts).index_add(1, self.leaf_to_expert, joint)
        aux = self.entropy_weight * entropy(leaf_probs).sum(1).mean()
        return GateOutput(weights, aux)


GATE = CometGate
