"""Gate properties on random inputs, for every gate the registry knows (a new gate is covered automatically)."""

from __future__ import annotations

import pytest
import torch

from moetune.errors import ConfigError
from moetune.moe.gates import available_gates, build_gate, gate_class, smooth_step

IN_DIM, BATCH, N_IDS = 8, 64, 50
GATES = available_gates()


def make_gate(name: str, n_experts: int = 4, k: int = 2, **params):
    """A gate with its required keys filled in (hash routes ids with k = 1)."""
    if gate_class(name).uses_routing_ids:
        params.setdefault("n_routing_ids", N_IDS)
        k = 1
    return build_gate(name, IN_DIM, n_experts, k=k, **params)


def run_gate(gate, x, seed: int = 0):
    ids = torch.randint(0, N_IDS, (x.shape[0],), generator=torch.Generator().manual_seed(seed))
    return gate(x, ids)


def assert_on_simplex(w: torch.Tensor):
    assert torch.isfinite(w).all()
    assert (w >= 0).all(), f"negative weight {float(w.min())}"
    torch.testing.assert_close(w.sum(1), torch.ones(w.shape[0]), atol=1e-5, rtol=0)


def assert_valid_weights(gate, w: torch.Tensor):
    """Token choice: each row on the simplex. Batch level: non-negative rows, at most 1 + rate (USMoE's
    unified score is not renormalised; Expert Choice's and Soft MoE's rows sum to at most 1)."""
    if not gate.batch_level:
        assert_on_simplex(w)
        return
    assert torch.isfinite(w).all() and (w >= 0).all()
    assert float(w.detach().sum(1).max()) <= 1 + getattr(gate, "rate", 0.0) + 1e-5


def test_registry_lists_the_paper_gates():
    assert {"softmax", "topk", "hash", "dselect_k", "comet"} <= set(GATES)


@pytest.mark.parametrize("name", GATES)
@pytest.mark.parametrize("n_experts", [4, 6, 8])
def test_shape_and_simplex(name, n_experts):
    torch.manual_seed(0)
    gate = make_gate(name, n_experts)
    out = run_gate(gate, torch.randn(BATCH, IN_DIM))
    assert out.weights.shape == (BATCH, n_experts)
    assert_valid_weights(gate, out.weights)
    assert out.aux_loss.dim() == 0 and torch.isfinite(out.aux_loss)


@pytest.mark.parametrize("name", GATES)
def test_simplex_for_large_inputs(name):
    """Saturating inputs (far outside any smooth-step band) must not push weights off the simplex."""
    torch.manual_seed(1)
    for n_experts in (3, 6, 8):
        gate = make_gate(name, n_experts, gamma=0.1) if name in ("dselect_k", "comet") else make_gate(name, n_experts)
        assert_valid_weights(gate, run_gate(gate, 1e4 * torch.randn(BATCH, IN_DIM)).weights)


# --- cardinality -------------------------------------------------------------------------------------


def _saturate(linear: torch.nn.Linear):
    with torch.no_grad():
        linear.weight.normal_(0.0, 50.0)
        linear.bias.zero_()


SATURATING_LAYER = {"dselect_k": "selector_logits", "comet": "node_logits"}  # smooth-step pre-activations


@pytest.mark.parametrize("name", GATES)
@pytest.mark.parametrize("n_experts", [4, 6, 8])
def test_cardinality_at_most_k(name, n_experts):
    torch.manual_seed(2)
    if name == "expert_choice":  # experts pick samples: every expert gets exactly its capacity
        gate = make_gate(name, n_experts, k=2)
        w = run_gate(gate, torch.randn(256, IN_DIM)).weights
        assert (w != 0).sum(0).tolist() == [gate.capacity(256)] * n_experts
        assert float((w != 0).sum(1).float().mean()) == pytest.approx(gate.capacity(256) * n_experts / 256)
        return
    if name == "usmoe":  # k pairs per sample on average, chosen jointly over the batch
        gate = make_gate(name, n_experts, k=2)
        w = run_gate(gate, torch.randn(256, IN_DIM)).weights
        assert int((w != 0).sum()) == 2 * 256
        return
    if not gate_class(name).sparse:  # a dense gate (softmax, Soft MoE) keeps every expert
        assert (run_gate(make_gate(name, n_experts), torch.randn(BATCH, IN_DIM)).weights > 0).all()
        return
    gamma = 0.1
    gate = make_gate(name, n_experts, k=2, **({"gamma": gamma} if name in SATURATING_LAYER else {}))
    x = torch.randn(256, IN_DIM)
    if name in SATURATING_LAYER:
        layer = getattr(gate, SATURATING_LAYER[name])
        _saturate(layer)
        pre = layer(x)
        saturated = (pre.abs() >= gamma / 2).all(1)  # rows whose every smooth-step is exactly 0 or 1
        assert saturated.float().mean() > 0.9, "test setup: most rows should be saturated"
        w = run_gate(gate, x).weights[saturated]
    elif gate_class(name).at_most_k:
        w = run_gate(gate, x).weights  # sparse always, no saturation needed
    else:
        pytest.fail(f"new sparse gate {name!r}: teach this test how to saturate it")
    assert_on_simplex(w)
    assert int((w != 0).sum(1).max()) <= gate.k
    assert len(w) > 0


def test_dselect_k_saturated_on_unused_code_stays_on_simplex():
    """n = 6 needs 3 bits; a selector saturated on code 6 or 7 (no such expert) must still give weight 1."""
    gate = make_gate("dselect_k", 6, k=1, gamma=0.1)
    with torch.no_grad():
        gate.selector_logits.weight.zero_()
        gate.selector_logits.bias.fill_(10.0)  # every bit = 1: code 7
    w = gate(torch.randn(16, IN_DIM)).weights
    assert_on_simplex(w)
    assert int((w != 0).sum(1).max()) == 1


def test_topk_keeps_the_k_largest_logits():
    torch.manual_seed(3)
    gate = make_gate("topk", 6, k=2)
    x = torch.randn(BATCH, IN_DIM)
    w = gate(x).weights
    top = gate.linear(x).topk(2, dim=1).indices
    assert torch.equal((w != 0), torch.zeros_like(w, dtype=torch.bool).scatter(1, top, True))


# --- gradients ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", GATES)
def test_gradients_reach_routing_parameters(name):
    torch.manual_seed(4)
    gate = make_gate(name, 6)
    trainable = [(n, p) for n, p in gate.named_parameters() if p.requires_grad]
    if name == "hash":
        assert trainable == [], "hash routing has no trainable parameters"
        return
    assert trainable, f"{name} has no trainable routing parameters"
    gate.train()
    out = run_gate(gate, torch.randn(BATCH, IN_DIM))
    coefficients = torch.randn(out.weights.shape, generator=torch.Generator().manual_seed(0))
    ((out.weights * coefficients).sum() + out.aux_loss).backward()
    for pname, p in trainable:
        assert p.grad is not None and p.grad.abs().sum() > 0, f"{name}.{pname} gets no gradient"


def test_xmoe_routing_ignores_the_scale_of_its_input():
    """Cosine scores: the routing input scaled by any positive factor routes and weighs the same."""
    torch.manual_seed(6)
    gate = make_gate("xmoe", 8, k=2)
    x = torch.randn(BATCH, IN_DIM)
    w = gate(x).weights
    for scale in (1e-3, 0.5, 7.0, 1e4):
        torch.testing.assert_close(gate(scale * x).weights, w, atol=1e-5, rtol=0)
    assert not torch.allclose(gate(-x).weights, w), "a cosine router does see the direction"


def test_xmoe_scores_are_cosines_over_the_learned_temperature():
    torch.manual_seed(7)
    gate = make_gate("xmoe", 6, k=2, temperature=0.5)
    scores = gate.scores(torch.randn(BATCH, IN_DIM))
    assert float(scores.abs().max()) <= 1 / 0.5 + 1e-5
    with torch.no_grad():
        gate.log_temperature.fill_(0.0)  # tau = 1: the scores are the cosines themselves
    assert float(gate.scores(torch.randn(BATCH, IN_DIM)).abs().max()) <= 1 + 1e-5


def test_expert_choice_takes_each_experts_highest_scoring_samples_and_may_leave_some_out():
    torch.manual_seed(8)
    gate = make_gate("expert_choice", 4, k=1)
    x = torch.randn(BATCH, IN_DIM)
    w = gate(x).weights
    scores = torch.softmax(gate.linear(x), dim=-1)
    c = gate.capacity(BATCH)
    for expert in range(4):
        taken = set(torch.nonzero(w[:, expert]).flatten().tolist())
        assert taken == set(scores[:, expert].topk(c).indices.tolist())
        torch.testing.assert_close(w[list(taken), expert], scores[list(taken), expert])
    assert (w != 0).sum(1).min() == 0, "with k = 1 some sample should get no expert"
    assert make_gate("expert_choice", 4, k=1, capacity_factor=2.0).capacity(BATCH) == 2 * c


def test_usmoe_keeps_the_batchs_highest_unified_scores_as_its_weights():
    """The unified score mixes the token-choice softmax and the scaled sigmoid by `rate`; the batch * k best
    token-expert pairs over the whole batch are kept, with their unified score as the weight."""
    torch.manual_seed(9)
    gate = make_gate("usmoe", 4, k=1, rate=0.3)
    x = torch.randn(BATCH, IN_DIM)
    logits = gate.linear(x)
    unified = 0.7 * torch.softmax(logits, -1) + 0.3 * torch.sigmoid(logits) * 2 / 4
    w = gate(x).weights
    kept = torch.zeros(BATCH * 4, dtype=torch.bool)
    kept[unified.flatten().topk(BATCH).indices] = True
    assert torch.equal(w.flatten() != 0, kept)
    torch.testing.assert_close(w.flatten()[kept], unified.flatten()[kept])
    counts = (w != 0).sum(1)
    assert counts.min() == 0 or counts.max() > 1, "the budget is the batch's, not one expert per sample"
    assert float(make_gate("usmoe", 4, k=1, rate=0.0)(x).weights.sum(1).max()) <= 1 + 1e-6, "rate 0: softmax only"


def test_usmoe_rate_out_of_range_is_a_config_error():
    with pytest.raises(ConfigError, match="rate"):
        make_gate("usmoe", 4, rate=1.5)


def test_soft_moe_dispatch_and_combine_are_on_their_simplices():
    """Dispatch: each slot a convex combination of the batch's samples (columns sum to 1 over the samples);
    combine: each sample a convex combination of the slots (rows sum to 1); p slots per expert."""
    torch.manual_seed(10)
    gate = make_gate("soft_moe", 4, slots_per_expert=3)
    out = gate(torch.randn(BATCH, IN_DIM))
    slots = out.slots
    assert slots.dispatch.shape == slots.combine.shape == (BATCH, 12)
    assert (slots.dispatch >= 0).all() and (slots.combine >= 0).all()
    torch.testing.assert_close(slots.dispatch.sum(0), torch.ones(12))
    torch.testing.assert_close(slots.combine.sum(1), torch.ones(BATCH))
    torch.testing.assert_close(out.weights, slots.combine.view(BATCH, 4, 3).sum(2))


def test_soft_moe_normalized_routing_ignores_the_scale_of_its_input():
    torch.manual_seed(11)
    gate = make_gate("soft_moe", 4, normalize=True)
    x = torch.randn(BATCH, IN_DIM)
    torch.testing.assert_close(gate(1e3 * x).slots.dispatch, gate(x).slots.dispatch)
    raw = make_gate("soft_moe", 4)
    assert not torch.allclose(raw(1e3 * x).slots.dispatch, raw(x).slots.dispatch)


def test_noisy_topk_gradients_reach_noise_scale():
    torch.manual_seed(5)
    gate = make_gate("topk", 6, noisy=True).train()
    out = gate(torch.randn(BATCH, IN_DIM))
    (out.weights * torch.randn(out.weights.shape)).sum().backward()
    assert gate.noise.weight.grad.abs().sum() > 0


# --- noisy top-k -------------------------------------------------------------------------------------


def test_noisy_topk_train_differs_from_eval_and_eval_is_deterministic():
    torch.manual_seed(6)
    gate = make_gate("topk", 6, noisy=True)
    x = torch.randn(BATCH, IN_DIM)
    gate.eval()
    eval_a, eval_b = gate(x).weights, gate(x).weights
    assert torch.equal(eval_a, eval_b)
    gate.train()
    train_a, train_b = gate(x).weights, gate(x).weights
    assert not torch.allclose(train_a, eval_a)
    assert not torch.allclose(train_a, train_b)
    assert_on_simplex(train_a)
    assert int((train_a != 0).sum(1).max()) <= 2


def test_plain_topk_is_the_same_in_train_and_eval():
    gate = make_gate("topk", 6)
    x = torch.randn(BATCH, IN_DIM)
    assert torch.equal(gate.train()(x).weights, gate.eval()(x).weights)


# --- hash --------------------------------------------------------------------------------------------


def test_hash_same_id_same_expert_whatever_the_features():
    gate = make_gate("hash", 6)
    ids = torch.tensor([3, 7, 3, 7, 3, 11])
    w = gate(torch.randn(len(ids), IN_DIM), ids).weights
    assert torch.equal(w[0], w[2]) and torch.equal(w[0], w[4])
    assert torch.equal(w[1], w[3])
    assert torch.equal(w.argmax(1), gate.table[ids])
    assert torch.equal(gate(torch.randn(len(ids), IN_DIM), ids).weights, w)


def test_hash_table_is_reproducible_by_seed():
    a = make_gate("hash", 6, n_routing_ids=200, hash_seed=3)
    b = make_gate("hash", 6, n_routing_ids=200, hash_seed=3)
    c = make_gate("hash", 6, n_routing_ids=200, hash_seed=4)
    assert torch.equal(a.table, b.table)
    assert not torch.equal(a.table, c.table)
    assert set(a.table.tolist()) == set(range(6))  # 200 ids reach every expert


def test_hash_table_ignores_the_global_rng():
    torch.manual_seed(0)
    a = make_gate("hash", 6, n_routing_ids=100)
    torch.manual_seed(123)
    b = make_gate("hash", 6, n_routing_ids=100)
    assert torch.equal(a.table, b.table)


def test_hash_rejects_k_other_than_one():
    with pytest.raises(ConfigError, match="k=1"):
        build_gate("hash", IN_DIM, 4, k=2, n_routing_ids=10)


def test_hash_without_routing_ids_is_a_config_error():
    with pytest.raises(ConfigError, match="routing ids"):
        build_gate("hash", IN_DIM, 4, k=1)
    gate = make_gate("hash", 4)
    with pytest.raises(ConfigError, match="routing ids"):
        gate(torch.randn(2, IN_DIM))


# --- smooth-step -------------------------------------------------------------------------------------


@pytest.mark.parametrize("gamma", [0.01, 0.3, 1.0, 10.0])
def test_smooth_step_values(gamma):
    half = gamma / 2
    outside_low = torch.tensor([-half, -half * 1.0001, -gamma, -1e6])
    outside_high = torch.tensor([half, half * 1.0001, gamma, 1e6])
    assert torch.equal(smooth_step(outside_low, gamma), torch.zeros(4))
    assert torch.equal(smooth_step(outside_high, gamma), torch.ones(4))
    assert float(smooth_step(torch.tensor(0.0), gamma)) == 0.5

    t = torch.linspace(-0.99 * half, 0.99 * half, 11, dtype=torch.float64)
    expected = -2 * t**3 / gamma**3 + 3 * t / (2 * gamma) + 0.5
    torch.testing.assert_close(smooth_step(t, gamma), expected)


@pytest.mark.parametrize("gamma", [0.3, 1.0, 10.0])
def test_smooth_step_is_continuous_and_monotone(gamma):
    half = gamma / 2
    eps = 1e-6 * gamma
    edges = torch.tensor([-half + eps, half - eps], dtype=torch.float64)
    torch.testing.assert_close(
        smooth_step(edges, gamma), torch.tensor([0.0, 1.0], dtype=torch.float64), atol=1e-5, rtol=0
    )
    t = torch.linspace(-gamma, gamma, 2001, dtype=torch.float64)
    values = smooth_step(t, gamma)
    assert (values.diff() >= 0).all()
    assert values.min() == 0 and values.max() == 1


def test_smooth_step_gradient_is_zero_outside_the_band():
    t = torch.tensor([-1.0, -0.1, 0.0, 0.1, 1.0], requires_grad=True)
    smooth_step(t, 0.5).sum().backward()
    assert t.grad[0] == 0 and t.grad[-1] == 0
    assert (t.grad[1:4] > 0).all()


# --- comet specifics ---------------------------------------------------------------------------------


@pytest.mark.parametrize("n_experts", [3, 5, 6, 7])
def test_comet_with_non_power_of_two_experts(n_experts):
    torch.manual_seed(7)
    gate = make_gate("comet", n_experts)
    w = gate(torch.randn(BATCH, IN_DIM)).weights
    assert w.shape == (BATCH, n_experts)
    assert_on_simplex(w)


def test_comet_entropy_penalty_vanishes_at_saturation():
    gate = make_gate("comet", 4, gamma=0.1, entropy_weight=1.0)
    x = torch.randn(BATCH, IN_DIM)
    with torch.no_grad():
        unsaturated = float(gate(x).aux_loss)
        gate.node_logits.weight.zero_()
        gate.node_logits.bias.fill_(5.0)  # every node goes left: one leaf per tree
        saturated = float(gate(x).aux_loss)
    assert unsaturated > 0
    assert saturated == 0.0


# --- registry errors ---------------------------------------------------------------------------------


def test_build_gate_unknown_name_names_the_choices():
    with pytest.raises(ConfigError) as info:
        build_gate("nope", IN_DIM, 4, k=2)
    message = str(info.value)
    assert "nope" in message
    for name in GATES:
        assert name in message


@pytest.mark.parametrize("name", GATES)
def test_build_gate_unknown_param_names_it_and_the_accepted_keys(name):
    with pytest.raises(ConfigError) as info:
        make_gate(name, 4, bogus_key=1)
    message = str(info.value)
    assert "bogus_key" in message and "k" in message


@pytest.mark.parametrize("name", ["dselect_k", "comet"])
def test_non_positive_gamma_is_a_config_error(name):
    with pytest.raises(ConfigError, match="gamma"):
        make_gate(name, 4, gamma=0.0)
