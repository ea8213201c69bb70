"""The fast training step computes what plain autograd computes: every gate, dense and sparse expert paths,
with and without local search; and its dropout keeps the right share of units at the right scale."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from moetune.config import GateConfig, LocalSearchConfig, ModelConfig
from moetune.moe import MMoE, kernels
from moetune.moe.experts import MLPExperts, mix
from moetune.moe.gates import available_gates
from moetune.moe.kernels import BATCHED_WIDTH, FlatBatchedMatmul, dropout_mask
from moetune.moe.local_search import PermutationLocalSearch
from moetune.training.trainer import task_losses

from conftest import tabular_data

# Soft MoE's experts run on slots through plain autograd ops (MLPExperts.each): it is its own reference
GATES = [g for g in available_gates() if g != "soft_moe"]


def reference_outputs(model: MMoE, inputs: dict, routing_ids: torch.Tensor):
    """The model's forward written with plain autograd ops: every expert on every sample, expert by expert."""
    features = model.bottom(inputs)
    gate_outs = [gate(features, routing_ids) for gate in model.gates]
    weights = [out.weights for out in gate_outs]
    aux = sum(out.aux_loss for out in gate_outs)
    if model.local_search is not None:
        matrix, penalty = model.local_search.matrix()
        weights = [PermutationLocalSearch.apply(w, matrix) for w in weights]
        aux = aux + penalty
    experts = model.experts
    per_expert = []
    for e in range(experts.n_experts):
        h = features
        for layer, bias in enumerate(experts.biases):
            h = F.relu(h @ experts.expert_weight(layer)[e] + bias[e])
        per_expert.append(h)
    stacked = torch.stack(per_expert, 1)  # B x n x out
    mixed = [(w.unsqueeze(2) * stacked).sum(1) for w in weights]
    return [head(m) for head, m in zip(model.heads, mixed, strict=True)], aux


def gradients(model: MMoE, data, forward) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    split = data.train
    outputs, aux = forward(split)
    loss = task_losses(data.tasks, outputs, split.targets, split.masks).sum() + aux
    loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("dtype, widths, tol", [(torch.float64, [12, 10], 1e-10), (torch.float32, [16, 8], 1e-6)])
@pytest.mark.parametrize("arm", ["off", "on"])
@pytest.mark.parametrize("compute", ["dense", "sparse"])
@pytest.mark.parametrize("gate", GATES)
def test_step_gradients_equal_plain_autograd(gate, compute, arm, dtype, widths, tol):
    """float64 with odd widths runs the per-expert loop; float32 with 16-byte aligned widths runs torch's
    grouped matmul: both give plain autograd's gradients (dropout off, so the two forwards are the same)."""
    assert_step_equals_plain_autograd(gate, compute, arm, dtype, widths, tol)


@pytest.mark.parametrize("compute", ["dense", "sparse"])
@pytest.mark.parametrize("gate", ["topk", "hash", "softmax"])
def test_step_in_row_chunks_equals_plain_autograd(gate, compute, monkeypatch):
    """The fused epilogues walk their rows in cache-sized chunks; with chunks of a few rows (the last one
    short) the step still gives plain autograd's gradients, for one and two tasks."""
    monkeypatch.setattr(kernels, "_CHUNK_BYTES", 5 * 16 * 8)  # a few rows of the activations at a time
    assert_step_equals_plain_autograd(gate, compute, "off", torch.float64, [16], 1e-10)


@pytest.mark.parametrize("width", [16, BATCHED_WIDTH])
@pytest.mark.parametrize("sparse", [False, True])
def test_one_task_mixing_in_row_chunks_equals_plain_autograd(sparse, width, monkeypatch):
    """One task (the MoE layer bench's case), top-2 weights, chunks of 1 to 3 rows over 23 samples, one expert
    routed no rows: the mixed output and the gradients of the input, the gate scores and every expert
    parameter (the idle expert's zero) are plain autograd's; at BATCHED_WIDTH the flat first layer is read and
    its gradient written in place."""
    monkeypatch.setattr(kernels, "_CHUNK_BYTES", 3 * 16 * 8)
    torch.manual_seed(11)
    n, d_in, batch = 4, 6, 23
    experts = MLPExperts(n, d_in, [width]).double()
    x = torch.randn(batch, d_in, dtype=torch.float64, requires_grad=True)
    scores = (torch.randn(batch, n, dtype=torch.float64) - torch.tensor([0, 0, 0, 50.0])).requires_grad_()
    g = torch.softmax(scores, 1) * (scores >= scores.topk(2, 1).values[:, 1:]).double()  # as a top-2 gate
    upstream = torch.randn(batch, width, dtype=torch.float64)
    leaves = [x, scores, *experts.parameters()]
    (got,) = mix(experts, x, [g], sparse=sparse)
    got_grads = torch.autograd.grad(got, leaves, upstream, retain_graph=True)  # g's graph is shared
    per_expert = [F.relu(x @ experts.expert_weight(0)[e] + experts.biases[0][e]) for e in range(n)]
    want = sum(g[:, e : e + 1] * per_expert[e] for e in range(n))
    want_grads = torch.autograd.grad(want, leaves, upstream)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


def assert_step_equals_plain_autograd(gate, compute, arm, dtype, widths, tol):
    torch.manual_seed(7)
    data = tabular_data(n=64, n_features=8)  # routing input: 8 embedding + 8 dense features
    cfg = ModelConfig(
        n_experts=8, expert_hidden=widths, expert_dropout=0.0, embed_dim=8, dense_hidden=[], head_hidden=[8]
    )
    gate_cfg = GateConfig(gate, 1 if gate == "hash" else 2)
    model = MMoE(data, cfg, gate_cfg, LocalSearchConfig(name=arm, e_perm=1)).to(dtype).train()
    data.train.inputs["dense"] = data.train.inputs["dense"].to(dtype)
    data.train.targets = data.train.targets.to(dtype)
    model.cfg.compute = compute

    def fast(split):
        out = model(split.inputs, split.routing_ids)
        return out.outputs, out.aux_loss

    got = gradients(model, data, fast)
    want = gradients(model, data, lambda split: reference_outputs(model, split.inputs, split.routing_ids))
    assert got.keys() == want.keys() and any(k.startswith("experts.") for k in got)
    for name in want:
        scale = max(1.0, float(want[name].abs().max()))
        assert torch.allclose(got[name], want[name], rtol=0, atol=tol * scale), (name, gate, compute)


def test_dropout_mask_keeps_half_the_units_at_twice_the_value_independently():
    torch.manual_seed(0)
    mask = dropout_mask(torch.empty(1000, 1000), 0.5)
    assert set(mask.unique().tolist()) == {0.0, 2.0}
    kept = (mask > 0).double()
    n = kept.numel()
    assert abs(kept.mean().item() - 0.5) < 4 * math.sqrt(0.25 / n)  # 4 standard errors
    # every bit position of the random words is used alike, and neighbours are independent
    by_position = kept.view(-1)[: (n // 64) * 64].view(-1, 64).mean(0)
    assert (by_position - 0.5).abs().max() < 4 * math.sqrt(0.25 / (n // 64))
    neighbours = (kept.view(-1)[1:] * kept.view(-1)[:-1]).mean().item()
    assert abs(neighbours - 0.25) < 4 * math.sqrt(0.25 * 0.75 / n)
    assert abs(mask.mean().item() - 1.0) < 4 * math.sqrt(1.0 / n)  # inverted dropout keeps the expectation


@pytest.mark.parametrize("p", [0.1, 0.3, 0.75])
def test_dropout_mask_at_other_rates_keeps_one_minus_p_scaled_up(p):
    torch.manual_seed(1)
    mask = dropout_mask(torch.empty(500, 1000), p)
    assert torch.allclose(mask.unique(), torch.tensor([0.0, 1.0 / (1.0 - p)]))
    kept = (mask > 0).double().mean().item()
    assert abs(kept - (1.0 - p)) < 4 * math.sqrt(p * (1 - p) / mask.numel())


def test_dropout_mask_repeats_under_the_same_seed():
    like = torch.empty(300, 64)
    torch.manual_seed(5)
    a = dropout_mask(like, 0.5)
    torch.manual_seed(5)
    assert torch.equal(a, dropout_mask(like, 0.5))
    assert not torch.equal(a, dropout_mask(like, 0.5))


@pytest.mark.parametrize("needs", [(True, True), (True, False), (False, True)], ids=["both", "input", "weight"])
def test_flat_batched_matmul_equals_the_wide_matmul_and_its_gradients(needs):
    """The paper-width first layer's GEMM per expert (FlatBatchedMatmul) computes x @ w and its gradients."""
    generator = torch.Generator().manual_seed(3)
    n, d_in, width, batch = 4, 6, 5, 9
    x = torch.randn(batch, d_in, generator=generator, dtype=torch.float64).requires_grad_(needs[0])
    w = torch.randn(d_in, n * width, generator=generator, dtype=torch.float64).requires_grad_(needs[1])
    upstream = torch.randn(batch, n * width, generator=generator, dtype=torch.float64)
    got = FlatBatchedMatmul.apply(x, w, n)
    got_grads = torch.autograd.grad(got, [t for t in (x, w) if t.requires_grad], upstream)
    want = x @ w
    want_grads = torch.autograd.grad(want, [t for t in (x, w) if t.requires_grad], upstream)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)
    for g, r in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(g, r, rtol=0, atol=1e-12)


def test_experts_from_the_batched_width_take_the_per_expert_gemm_and_train_like_plain_autograd(monkeypatch):
    """The dense path at BATCHED_WIDTH runs FlatBatchedMatmul; its mixed outputs and gradients are plain
    autograd's (float64, dropout off)."""
    calls = []
    real = FlatBatchedMatmul.apply
    monkeypatch.setattr(FlatBatchedMatmul, "apply", lambda *a: calls.append(1) or real(*a))
    torch.manual_seed(5)
    n, d_in, batch = 3, 4, 6
    experts = MLPExperts(n, d_in, [BATCHED_WIDTH]).double()
    x = torch.randn(batch, d_in, dtype=torch.float64, requires_grad=True)
    g = torch.softmax(torch.randn(batch, n, dtype=torch.float64), 1)
    upstream = torch.randn(batch, BATCHED_WIDTH, dtype=torch.float64)
    (got,) = mix(experts, x, [g], sparse=False)
    assert calls, "the batched GEMM was not used at the batched width"
    got_grads = torch.autograd.grad(got, [x, *experts.parameters()], upstream)
    per_expert = [F.relu(x @ experts.expert_weight(0)[e] + experts.biases[0][e]) for e in range(n)]
    want = sum(g[:, e : e + 1] * per_expert[e] for e in range(n))
    want_grads = torch.autograd.grad(want, [x, *experts.parameters()], upstream)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    for a, b in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
