"""MMoE for T tasks: a shared bottom, n experts, one gate per task (plus optional local search), one head per task."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from moetune.config import GateConfig, LocalSearchConfig, ModelConfig
from moetune.data.base import MultiTaskData
from moetune.errors import ConfigError
from moetune.moe.experts import CNNExperts, MLPExperts, mix, soft_mix
from moetune.moe.gates import Gate, build_gate, gate_class
from moetune.moe.local_search import PermutationLocalSearch, UniformMixingWarmup


def build_local_search(cfg: LocalSearchConfig, n_experts: int) -> PermutationLocalSearch | UniformMixingWarmup | None:
    """The module of a local-search arm, decided by the arm's name alone (config.LOCAL_SEARCH_ARMS)."""
    if cfg.name == "off":
        return None
    if cfg.name == "warmup":
        return UniformMixingWarmup(n_experts, cfg.e_perm)
    return PermutationLocalSearch(n_experts, cfg.e_perm, cfg.zeta, cfg.noise, learn=cfg.name == "on")


class SharedBottom(nn.Module):
    """Embeddings for id features, an MLP for dense features; images pass through (flattened for gates)."""

    def __init__(self, data: MultiTaskData, cfg: ModelConfig):
        super().__init__()
        shapes = data.input_shapes()
        self.embeddings = nn.ModuleList(nn.Embedding(card, cfg.embed_dim) for card in data.id_cardinalities)
        for emb in self.embeddings:  # Keras' Embedding default, as in the authors' model (torch draws N(0, 1))
            nn.init.uniform_(emb.weight, -0.05, 0.05)
        self.dense = None
        dim = cfg.embed_dim * len(self.embeddings)
        if "dense" in shapes:
            layers, d_in = [], shapes["dense"][0]
            for width in cfg.dense_hidden:
                layers += [nn.Linear(d_in, width), nn.ReLU()]
                d_in = width
            self.dense = nn.Sequential(*layers) if layers else nn.Identity()
            dim += d_in
        self.image_shape = shapes.get("image")
        if self.image_shape is not None:
            dim += int(torch.tensor(self.image_shape).prod())
        if dim == 0:
            raise ConfigError(f"dataset {data.name!r} has no inputs the model can use")
        self.out_dim = dim

    def forward(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        parts = [emb(inputs["ids"][:, i]) for i, emb in enumerate(self.embeddings)]
        if self.dense is not None:
            parts.append(self.dense(inputs["dense"]))
        if self.image_shape is not None:
            parts.append(inputs["image"].flatten(1))
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]


def _mlp(in_dim: int, hidden: list[int], out_dim: int) -> nn.Sequential:
    layers = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.ReLU()]
        in_dim = width
    return nn.Sequential(*layers, nn.Linear(in_dim, out_dim))


@dataclass
class ModelOutput:
    outputs: list[torch.Tensor]  # per task: B x out_dim
    gate_weights: list[torch.Tensor]  # per task: B x n, after the permutation
    aux_loss: torch.Tensor


class MMoE(nn.Module):
    def __init__(self, data: MultiTaskData, cfg: ModelConfig, gate: GateConfig, local_search: LocalSearchConfig):
        super().__init__()
        self.cfg = cfg
        self.bottom = SharedBottom(data, cfg)
        if cfg.expert_type == "cnn":
            if self.bottom.image_shape is None:
                raise ConfigError(
                    f"model.expert_type=cnn needs image inputs; dataset {data.name!r} has none (use expert_type=mlp)"
                )
            self.experts = CNNExperts(cfg.n_experts, self.bottom.image_shape, cfg.expert_hidden, cfg.expert_dropout)
        else:
            self.experts = MLPExperts(cfg.n_experts, self.bottom.out_dim, cfg.expert_hidden, cfg.expert_dropout)
        gate_params = dict(gate.params)
        if gate_class(gate.name).uses_routing_ids:
            gate_params["n_routing_ids"] = data.n_routing_ids or 0
        self.gates = nn.ModuleList(
            build_gate(gate.name, self.bottom.out_dim, cfg.n_experts, k=gate.k, **gate_params) for _ in data.tasks
        )
        self.local_search = build_local_search(local_search, cfg.n_experts)
        self.heads = nn.ModuleList(_mlp(self.experts.out_dim, cfg.head_hidden, task.out_dim) for task in data.tasks)

    def use_sparse_compute(self, weights: list[torch.Tensor]) -> bool:
        """Sparse dispatch only pays off when the weights are actually sparse; on CUDA `auto` stays dense,
        since sparse dispatch needs per-expert row counts on the host (a device sync)."""
        if self.cfg.compute != "auto":
            return self.cfg.compute == "sparse"
        first: Gate = self.gates[0]
        if not first.sparse or (self.local_search is not None and self.local_search.learning):
            return False
        if weights[0].is_cuda:
            return False
        if first.at_most_k and 2 * first.k * len(weights) <= self.cfg.n_experts:  # at most half, by construction
            return True
        return bool(torch.stack(weights).ne(0).any(0).float().mean() <= 0.5)

    def forward(self, inputs: dict[str, torch.Tensor], routing_ids: torch.Tensor | None = None) -> ModelOutput:
        features = self.bottom(inputs)
        gate_outs = [gate(features, routing_ids) for gate in self.gates]
        weights = [out.weights for out in gate_outs]
        aux = sum(out.aux_loss for out in gate_outs)
        matrix = None
        if self.local_search is not None:
            matrix, penalty = self.local_search.matrix()
            weights = [PermutationLocalSearch.apply(w, matrix) for w in weights]
            aux = aux + penalty
        expert_input = inputs["image"] if self.cfg.expert_type == "cnn" else features
        if gate_outs[0].slots is not None:  # Soft MoE: experts run on slots, not on samples
            learning = self.local_search is not None and self.local_search.learning
            assignment = torch.eye(self.cfg.n_experts, device=features.device) if matrix is None else matrix
            slots = [out.slots for out in gate_outs]
            mixed = soft_mix(self.experts, expert_input, slots, assignment, hard=not learning)
        else:
            mixed = mix(self.experts, expert_input, weights, self.use_sparse_compute(weights))
        return ModelOutput([head(h) for head, h in zip(self.heads, mixed, strict=False)], weights, aux)
