"""Sparse upcycling (Komatsuzaki et al., "Sparse Upcycling: Training Mixture-of-Experts from Dense
Checkpoints", ICLR 2023): an MMoE starts from a trained dense model instead of from scratch.

A dense checkpoint is the state dict of an MMoE with one expert (``model.n_experts=1``; any gate or local
search, whose weights are ignored) whose bottom, expert and head shapes match the model being started.
Upcycling copies its shared bottom (``bottom.*``) and task heads (``heads.*``) verbatim and its single
expert into every expert of the model; each copied expert tensor gets optional Gaussian noise of std
``noise`` times the std of that tensor's dense values (a relative scale: one setting fits every layer;
0 copies exactly), drawn from a generator seeded by the caller (a trial's seed, so trials differ). The
gates and the local search keep their fresh initialisation: as in the paper, the router is new and learns
to tell the identical experts apart. The expert layout is the expert bank's own (``MLPExperts.expert_weight``,
``CNNExperts.experts``), so nothing here depends on how a bank stores its weights.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import torch
from torch import nn

from moetune.errors import ConfigError
from moetune.moe.experts import CNNExperts, MLPExperts
from moetune.moe.model import MMoE

BOTTOM, HEADS = "bottom.", "heads."
COPIED = (BOTTOM, HEADS)  # taken verbatim from the dense model
EXPERTS = "experts."  # its one expert, copied into every expert
FIX = "start from a dense model of this study's sizes (model.n_experts=1, the same dataset and other model.* keys)"


def expert_bank(model: MMoE, n_experts: int) -> nn.Module:
    """An expert bank like the model's with ``n_experts`` experts; the global random state is left untouched."""
    cfg = model.cfg
    with torch.random.fork_rng(devices=[]):
        if isinstance(model.experts, CNNExperts):
            return CNNExperts(n_experts, model.bottom.image_shape, cfg.expert_hidden, cfg.expert_dropout)
        if isinstance(model.experts, MLPExperts):
            return MLPExperts(n_experts, model.bottom.out_dim, cfg.expert_hidden, cfg.expert_dropout)
    raise ConfigError(f"model.init_from: cannot upcycle into {type(model.experts).__name__} experts")


def _shapes(module: nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def check_checkpoint(state: object, model: MMoE, source: str) -> nn.Module:
    """Raise ConfigError (one line naming ``source``, the problem and the fix) unless ``state`` is a dense
    checkpoint ``model`` can start from; returns the one-expert bank holding the checkpoint's expert."""
    where = f"model.init_from={source}"
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise ConfigError(
            f"{where}: not a model state dict (expected torch.save(model.state_dict())); "
            "give a checkpoint saved by train.save_weights=true"
        )
    dense = expert_bank(model, 1)
    own = _shapes(model)
    bottom = {k: v for k, v in own.items() if k.startswith(BOTTOM)}
    heads = {k: v for k, v in own.items() if k.startswith(HEADS)}
    expected = bottom | _shapes(dense, EXPERTS) | heads  # in the model's order: the first mismatch is named
    held = {k: v for k, v in state.items() if k.startswith(EXPERTS)}
    n_held = sum(v.numel() for v in held.values()) // max(1, sum(math.prod(s) for s in _shapes(dense).values()))
    held_shapes = {k: tuple(v.shape) for k, v in held.items()}
    if 1 < n_held <= 4096 and held_shapes == _shapes(expert_bank(model, n_held), EXPERTS):
        raise ConfigError(
            f"{where}: not a dense checkpoint: it holds {n_held} experts; upcycling starts from a one-expert "
            "model (a study with model.n_experts=1 and train.save_weights=true)"
        )
    for key, shape in expected.items():
        if key not in state:
            raise ConfigError(f"{where}: the checkpoint has no tensor {key}, which this study's model needs; {FIX}")
        if tuple(state[key].shape) != shape:
            raise ConfigError(
                f"{where}: tensor {key} is {list(state[key].shape)} in the checkpoint but {list(shape)} in this "
                f"study's model; {FIX}"
            )
    extra = [k for k in state if k.startswith((*COPIED, EXPERTS)) and k not in expected]
    if extra:
        raise ConfigError(f"{where}: the checkpoint's tensor {extra[0]} has no place in this study's model; {FIX}")
    dense.load_state_dict({k.removeprefix(EXPERTS): v for k, v in held.items()})
    return dense


def _expert_tensors(bank: nn.Module, e: int) -> Iterator[torch.Tensor]:
    """Expert ``e``'s tensors in ``bank`` (views: writing them writes the bank), in a fixed order."""
    if isinstance(bank, MLPExperts):
        for layer, bias in enumerate(bank.biases):
            yield bank.expert_weight(layer)[e]
            yield bias[e]
    else:
        yield from bank.experts[e].state_dict(keep_vars=True).values()


@torch.no_grad()
def upcycle(
    model: MMoE, state: Mapping[str, torch.Tensor], noise: float = 0.0, seed: int = 0, source: str = ""
) -> None:
    """Start ``model`` from the dense checkpoint ``state`` (checked first): bottom and heads copied, the one
    expert copied into every expert plus noise ~ N(0, (noise * std of the dense tensor)^2) drawn from a
    generator seeded with ``seed``; gates and local search untouched."""
    dense = check_checkpoint(state, model, source or "<state dict>")
    own = model.state_dict()
    for key, value in state.items():
        if key.startswith(COPIED):
            own[key].copy_(value)
    generator = torch.Generator().manual_seed(int(seed))
    sources = list(_expert_tensors(dense, 0))
    for e in range(model.cfg.n_experts):
        for target, value in zip(_expert_tensors(model.experts, e), sources, strict=True):
            copied = value.detach().to(dtype=target.dtype)
            if noise > 0:
                scale = noise * float(copied.float().std(correction=0)) if copied.numel() > 1 else 0.0
                copied = copied + scale * torch.randn(copied.shape, generator=generator, dtype=copied.dtype)
            target.copy_(copied.to(target.device))
