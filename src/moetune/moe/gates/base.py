"""The interface every gate implements, and the smooth-step that DSelect-k and COMET share."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import nn


@dataclass
class GateOutput:
    """weights: batch x n non-negative mixture weights, each row on the simplex (a token-choice gate) or
    summing to at most 1 (an expert-choice gate, where a sample may get no expert); aux_loss: a scalar
    regularizer added to the loss."""

    weights: torch.Tensor
    aux_loss: torch.Tensor


class Gate(nn.Module, abc.ABC):
    """A routing gate for one task: (routing input, routing ids) -> GateOutput.

    Subclasses set `sparse` (whether weights have at most k non-zeros, possibly only once saturated, or
    for an expert-choice gate k non-zeros per sample on average), `uses_routing_ids` (hash routing) and
    `expert_choice` (experts pick samples: a row may have 0..n non-zeros and sum to less than 1).
    Constructor arguments after (in_dim, n_experts) are the gate's config keys; unknown keys are rejected
    by the registry before anything is built.
    """

    sparse: bool = True
    uses_routing_ids: bool = False
    expert_choice: bool = False

    def __init__(self, in_dim: int, n_experts: int, k: int):
        super().__init__()
        self.in_dim = in_dim
        self.n_experts = n_experts
        self.k = k

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, routing_ids: torch.Tensor | None = None) -> GateOutput:
        """Mixture weights for a batch of routing inputs (and routing ids, for gates that use them)."""


def smooth_step(t: torch.Tensor, gamma: float) -> torch.Tensor:
    """Cubic smooth-step: exactly 0 below -gamma/2, exactly 1 above gamma/2, C^1 in between."""
    inner = -2.0 * t.pow(3) / gamma**3 + 3.0 * t / (2.0 * gamma) + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), inner))


def safe_log(p: torch.Tensor) -> torch.Tensor:
    """log p with -inf where p == 0 and no NaN gradients from the masked entries."""
    positive = p > 0
    return torch.where(
        positive, torch.log(torch.where(positive, p, torch.ones_like(p))), torch.full_like(p, float("-inf"))
    )


def entropy(p: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """Shannon entropy along dim, 0 log 0 = 0, with finite gradients."""
    positive = p > 0
    logp = torch.log(torch.where(positive, p, torch.ones_like(p)))
    return -(p * logp).sum(dim)
