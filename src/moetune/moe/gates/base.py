"""The interface every gate implements, and the smooth-step that DSelect-k and COMET share."""

from __future__ import annotations

import abc
from dataclasses import dataclass

import torch
from torch import nn

from moetune.errors import ConfigError


@dataclass
class SlotRouting:
    """Soft MoE's routing of a batch: dispatch (batch x n*p, each column a convex combination of the batch's
    samples: a slot's input) and combine (batch x n*p, each row on the simplex over the slots); slot s
    belongs to expert s // p."""

    dispatch: torch.Tensor
    combine: torch.Tensor
    slots_per_expert: int


@dataclass
class GateOutput:
    """weights: batch x n non-negative mixture weights, each row on the simplex for a token-choice gate;
    for a batch-level gate a row may have 0..n non-zeros and need not sum to 1. aux_loss: a scalar
    regularizer added to the loss. slots: set by a slot gate (Soft MoE), whose experts run on slots; its
    weights are then each sample's combine mass per expert (what diagnostics and active experts read)."""

    weights: torch.Tensor
    aux_loss: torch.Tensor
    slots: SlotRouting | None = None


class Gate(nn.Module, abc.ABC):
    """A routing gate for one task: (routing input, routing ids) -> GateOutput.

    Subclasses set `sparse` (whether weights have at most k non-zeros, possibly only once saturated, or
    for a batch-level gate k non-zeros per sample on average), `at_most_k` (every row has at most k
    non-zeros from the first step, not only once saturated: the model then dispatches sparsely without
    counting the routed experts of each batch), `uses_routing_ids` (hash routing) and
    `batch_level` (the batch's samples compete for the experts, as in Expert Choice, USMoE and Soft MoE: a
    sample's routing depends on the rest of its batch, a row may have 0..n non-zeros and need not sum to 1,
    and evaluation runs in batches of the training batch size).
    Constructor arguments after (in_dim, n_experts) are the gate's config keys; unknown keys are rejected
    by the registry before anything is built, and the constructor checks its own keys' values
    (``check_param``). A gate module needs nothing else: the report labels a gate without an entry in
    moetune.report.labels.GATE_LABELS by its name.
    """

    sparse: bool = True
    at_most_k: bool = False
    uses_routing_ids: bool = False
    batch_level: bool = False

    def __init__(self, in_dim: int, n_experts: int, k: int):
        super().__init__()
        self.in_dim = in_dim
        self.n_experts = n_experts
        self.k = k

    @abc.abstractmethod
    def forward(self, x: torch.Tensor, routing_ids: torch.Tensor | None = None) -> GateOutput:
        """Mixture weights for a batch of routing inputs (and routing ids, for gates that use them)."""


def check_param(ok: bool, key: str, must: str, value: object) -> None:
    """A gate's own key, checked where the gate is built (on the driver first, before Ray starts): the
    same one-line ConfigError the shared keys get."""
    if not ok:
        raise ConfigError(f"gate.params.{key} must be {must} (got {value!r})")


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
