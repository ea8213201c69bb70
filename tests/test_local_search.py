"""Permutation local search: Sinkhorn, hardening, schedules, freezing, applying, checkpointing."""

from __future__ import annotations

import io
import itertools
import math

import pytest
import torch

from moetune.config import GateConfig, LocalSearchConfig, ModelConfig, TrainConfig
from moetune.data.base import MultiTaskData
from moetune.moe import MMoE
from moetune.moe.local_search import PermutationLocalSearch, harden, log_sinkhorn
from moetune.training import Trainer

from conftest import tabular_data


def assert_permutation_matrix(p: torch.Tensor):
    n = p.shape[0]
    assert p.shape == (n, n)
    assert torch.equal(p, p.round()) and set(p.unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(p.sum(0), torch.ones(n)) and torch.equal(p.sum(1), torch.ones(n))


def trained_search(n: int = 5, seed: int = 0, steps: int = 3) -> PermutationLocalSearch:
    """A search whose log-weights are random and whose last soft matrix comes from a few forward passes."""
    torch.manual_seed(seed)
    ls = PermutationLocalSearch(n, e_perm=2)
    with torch.no_grad():
        ls.log_weights.normal_()
    ls.train()
    for step in range(steps):
        ls.progress = step / steps
        ls.matrix()
    return ls


# --- Sinkhorn ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 5, 9])
@pytest.mark.parametrize("tau", [3.0, 1.0, 0.3])  # converges in 200 iterations; colder needs many more
def test_log_sinkhorn_is_doubly_stochastic(n, tau):
    g = torch.Generator().manual_seed(n)
    for _ in range(5):
        p = log_sinkhorn(torch.randn(n, n, generator=g) / tau, n_iters=200)
        assert (p >= 0).all()
        torch.testing.assert_close(p.sum(0), torch.ones(n), atol=1e-4, rtol=0)
        torch.testing.assert_close(p.sum(1), torch.ones(n), atol=1e-4, rtol=0)


def test_log_sinkhorn_batched_and_differentiable():
    x = torch.randn(3, 4, 4, requires_grad=True)
    p = log_sinkhorn(x, n_iters=100)
    torch.testing.assert_close(p.sum(-1), torch.ones(3, 4), atol=1e-4, rtol=0)
    torch.testing.assert_close(p.sum(-2), torch.ones(3, 4), atol=1e-4, rtol=0)
    (p * torch.randn(3, 4, 4)).sum().backward()
    assert x.grad.abs().sum() > 0


def test_log_sinkhorn_at_low_temperature_approaches_the_matching():
    torch.manual_seed(1)
    w = torch.randn(6, 6)
    p = log_sinkhorn(w / 0.01, n_iters=500)
    assert torch.equal(p.round(), harden(w))


# --- hardening ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(5))
def test_harden_is_the_best_permutation(seed):
    n = 5
    w = torch.randn(n, n, generator=torch.Generator().manual_seed(seed))
    p = harden(w)
    assert_permutation_matrix(p)
    best = max(sum(float(w[i, perm[i]]) for i in range(n)) for perm in itertools.permutations(range(n)))
    assert float((w * p).sum()) == pytest.approx(best, abs=1e-5)


def test_harden_keeps_dtype_and_does_not_track_grad():
    w = torch.randn(4, 4, dtype=torch.float64, requires_grad=True)
    p = harden(w)
    assert p.dtype == torch.float64 and not p.requires_grad


# --- schedules ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "progress, tau, iters", [(0.0, 1e-3, 20), (0.5, 1e-5, 85), (1.0, 1e-7, 150), (-0.5, 1e-3, 20), (2.0, 1e-7, 150)]
)
def test_schedule(progress, tau, iters):
    ls = PermutationLocalSearch(4)
    ls.progress = progress
    got_tau, got_iters = ls.schedule()
    assert got_tau == pytest.approx(tau, rel=1e-9)
    assert got_iters == iters


def test_schedule_is_log_linear_in_tau_and_monotone():
    ls = PermutationLocalSearch(4)
    values = []
    for f in [i / 10 for i in range(11)]:
        ls.progress = f
        values.append(ls.schedule())
    log_taus = [math.log10(t) for t, _ in values]
    steps = [b - a for a, b in zip(log_taus, log_taus[1:], strict=False)]
    assert all(s == pytest.approx(-0.4) for s in steps)
    iters = [i for _, i in values]
    assert iters == sorted(iters) and iters[0] == 20 and iters[-1] == 150


# --- learning, freezing, eval ------------------------------------------------------------------------


def test_learning_matrix_is_soft_with_penalty_and_gradient():
    ls = PermutationLocalSearch(4, zeta=1.0).train()
    ls.progress = 0.0
    with torch.no_grad():
        ls.log_weights.normal_(0, 1e-4)  # near-uniform: at tau 1e-3 still clearly soft
    p, penalty = ls.matrix()
    assert p.shape == (4, 4) and (p >= 0).all()
    torch.testing.assert_close(p.sum(0), torch.ones(4), atol=1e-4, rtol=0)
    assert penalty > 0
    ((p * torch.randn(4, 4)).sum() + penalty).backward()
    assert ls.log_weights.grad.abs().sum() > 0


def test_freeze_returns_the_hard_permutation_without_penalty():
    ls = trained_search()
    expected = harden(ls.log_weights)
    ls.freeze()
    assert ls.hardened and bool(ls.is_hard)
    assert not ls.log_weights.requires_grad
    ls.train()
    assert not ls.learning
    for _ in range(2):
        p, penalty = ls.matrix()
        assert_permutation_matrix(p)
        assert torch.equal(p, expected)
        assert float(penalty) == 0.0
    assert ls.permutation() == expected.argmax(1).tolist()


def test_eval_before_freeze_uses_a_hard_permutation():
    ls = trained_search()
    ls.eval()
    p1, penalty = ls.matrix()
    p2, _ = ls.matrix()
    assert_permutation_matrix(p1)
    assert torch.equal(p1, p2)  # no noise in eval
    assert torch.equal(p1, harden(ls.log_weights))
    assert float(penalty) == 0.0
    assert not ls.hardened


# --- apply -------------------------------------------------------------------------------------------


def test_apply_moves_a_one_hot_row_to_the_permuted_expert():
    ls = trained_search(n=5, seed=3)
    ls.freeze()
    perm = ls.permutation()
    assert sorted(perm) == list(range(5))
    p, _ = ls.matrix()
    for i in range(5):
        one_hot = torch.nn.functional.one_hot(torch.tensor([i]), 5).float()
        moved = PermutationLocalSearch.apply(one_hot, p)
        assert moved.argmax(1).item() == perm[i]
        assert torch.equal(moved, torch.nn.functional.one_hot(torch.tensor([perm[i]]), 5).float())


def test_apply_keeps_weights_on_the_simplex_with_a_soft_matrix():
    torch.manual_seed(4)
    w = torch.softmax(torch.randn(32, 6), 1)
    w = w * (torch.rand(32, 6) > 0.5)  # sparse rows
    w[:, 0] += 1e-3
    w = w / w.sum(1, keepdim=True)
    soft = log_sinkhorn(torch.randn(6, 6), 50)
    out = PermutationLocalSearch.apply(w, soft)
    assert (out >= 0).all()
    torch.testing.assert_close(out.sum(1), torch.ones(32), atol=1e-5, rtol=0)


def test_apply_with_a_hard_permutation_permutes_columns():
    w = torch.softmax(torch.randn(8, 4), 1)
    perm = [2, 0, 3, 1]
    p = torch.zeros(4, 4)
    p[range(4), perm] = 1.0
    out = PermutationLocalSearch.apply(w, p)
    for i in range(4):
        torch.testing.assert_close(out[:, perm[i]], w[:, i])


# --- checkpoints -------------------------------------------------------------------------------------


def test_frozen_permutation_survives_state_dict_round_trip():
    ls = trained_search(n=6, seed=5)
    ls.freeze()
    buffer = io.BytesIO()
    torch.save(ls.state_dict(), buffer)
    buffer.seek(0)

    fresh = PermutationLocalSearch(6, e_perm=2)
    assert not fresh.hardened
    fresh.load_state_dict(torch.load(buffer))
    assert fresh.hardened and not fresh.log_weights.requires_grad
    fresh.train()
    p, penalty = fresh.matrix()
    assert torch.equal(p, ls.hard)
    assert float(penalty) == 0.0
    assert fresh.permutation() == ls.permutation()


def test_loading_an_unfrozen_state_unfreezes():
    ls = trained_search(n=4)
    before = {k: v.clone() for k, v in ls.state_dict().items()}
    ls.freeze()
    ls.load_state_dict(before)
    assert not ls.hardened and ls.log_weights.requires_grad
    assert ls.train().learning


# --- in the model ------------------------------------------------------------------------------------


def tiny_data(n: int = 64, n_ids: int = 20) -> MultiTaskData:
    return tabular_data(n, n_ids, n_features=5)


@pytest.mark.parametrize("gate, k", [("topk", 2), ("hash", 1), ("topk", 1)])
def test_k_sparse_gate_stays_k_sparse_after_hardening(gate, k):
    torch.manual_seed(6)
    data = tiny_data()
    cfg = ModelConfig(
        n_experts=6, expert_hidden=[8], embed_dim=4, dense_hidden=[4], head_hidden=[4], expert_dropout=0.0
    )
    model = MMoE(data, cfg, GateConfig(gate, k), LocalSearchConfig(name="on", e_perm=1))
    batch = data.train
    with torch.no_grad():
        model.local_search.log_weights.normal_()
    model.train()
    soft = model(batch.inputs, batch.routing_ids)  # learning phase: soft P, dense weights allowed
    assert all(torch.isfinite(w).all() for w in soft.gate_weights)

    model.eval()  # before freezing: hard P in eval
    for w in model(batch.inputs, batch.routing_ids).gate_weights:
        assert int((w != 0).sum(1).max()) <= k
        torch.testing.assert_close(w.sum(1), torch.ones(len(batch)), atol=1e-5, rtol=0)

    model.local_search.freeze()
    model.train()
    out = model(batch.inputs, batch.routing_ids)
    raw = [g(model.bottom(batch.inputs), batch.routing_ids).weights for g in model.gates]
    perm = model.local_search.permutation()
    for w, r in zip(out.gate_weights, raw, strict=False):
        assert int((w != 0).sum(1).max()) <= k
        torch.testing.assert_close(w[:, perm], r)  # expert i's weight went to perm[i]


def test_model_checkpoint_restores_the_frozen_permutation():
    torch.manual_seed(7)
    data = tiny_data()
    cfg = ModelConfig(
        n_experts=5, expert_hidden=[8], embed_dim=4, dense_hidden=[4], head_hidden=[4], expert_dropout=0.0
    )
    a = MMoE(data, cfg, GateConfig("topk", 2), LocalSearchConfig(name="on", e_perm=1))
    with torch.no_grad():
        a.local_search.log_weights.normal_()
    a.train()(data.train.inputs, data.train.routing_ids)
    a.local_search.freeze()
    b = MMoE(data, cfg, GateConfig("topk", 2), LocalSearchConfig(name="on", e_perm=1))
    b.load_state_dict(a.state_dict())
    assert b.local_search.hardened
    a.eval(), b.eval()
    torch.testing.assert_close(b(data.val.inputs).outputs[0], a(data.val.inputs).outputs[0])


# --- the frozen arm: on without learning L -------------------------------------------------------------


def _arm_trainer(arm: str, seed: int = 3) -> Trainer:
    data = tabular_data(n=96)
    cfg = ModelConfig(n_experts=6, expert_hidden=[8], embed_dim=4, dense_hidden=[], head_hidden=[8])
    return Trainer(
        data,
        cfg,
        GateConfig("topk", 2),
        LocalSearchConfig(name=arm, e_perm=2),
        TrainConfig(lr=5e-2, max_epochs=3, patience=3, batch_size=16, seed=seed),
    )


def test_frozen_arm_keeps_its_draw_gets_no_gradient_and_hardens_like_on():
    on, frozen = _arm_trainer("on"), _arm_trainer("frozen")
    # paired: the same seed gives the same initial weights, L0 included
    assert on.init_digest == frozen.init_digest
    l0 = frozen.model.local_search.log_weights.detach().clone()
    assert not frozen.model.local_search.log_weights.requires_grad
    assert on.model.local_search.log_weights.requires_grad
    hardened = {"on": [], "frozen": []}
    frozen_result = frozen.fit(lambda e, m: hardened["frozen"].append(frozen.model.local_search.hardened))
    on_result = on.fit(lambda e, m: hardened["on"].append(on.model.local_search.hardened))
    assert hardened["frozen"] == hardened["on"] == [False, True, True]  # hardened at e_perm = 2, like on
    ls = frozen.model.local_search
    assert ls.log_weights.grad is None and torch.equal(ls.log_weights.detach(), l0)
    assert ls.permutation() == harden(l0).argmax(1).tolist()
    phase = frozen_result.diagnostics["phase"]
    assert phase["perm_shift"] == 0.0 and phase["perm_reassigned"] == 0.0
    # on learned: its L moved, by a measured fraction of the draw's spread
    assert on_result.diagnostics["phase"]["perm_shift"] > 0.0


def test_phase_report_counts_the_steps_and_is_a_final_metric():
    trainer = _arm_trainer("on")
    result = trainer.fit()
    metrics = result.final_metrics()
    batches = -(-96 // 16)
    assert metrics["e_perm"] == 2.0 and metrics["perm_steps"] == 2 * batches
    assert 1.0 <= metrics["perm_effective_experts_end"] <= metrics["perm_effective_experts_start"] <= 6.0
    assert metrics["best_epoch_after_perm"] == metrics["best_epoch"] - 2
    assert metrics["epochs_run"] == result.epochs_run
    off = Trainer(
        trainer.data,
        ModelConfig(n_experts=6, expert_hidden=[8], embed_dim=4, dense_hidden=[], head_hidden=[8]),
        GateConfig("topk", 2),
        LocalSearchConfig(name="off"),
        TrainConfig(lr=5e-2, max_epochs=2, batch_size=16, seed=3),
    ).fit()
    assert "perm_steps" not in off.final_metrics()


def test_effective_experts_spans_permutation_to_uniform():
    from moetune.moe.local_search import effective_experts

    assert effective_experts(torch.eye(5)) == pytest.approx(1.0)
    assert effective_experts(torch.full((5, 5), 0.2)) == pytest.approx(5.0)


@pytest.mark.parametrize("use_numpy", [True, False])
@pytest.mark.parametrize("n_iters, tau", [(1, 1.0), (20, 1e-3), (150, 1e-7)])
def test_log_sinkhorn_gradient_equals_autograd_through_the_unrolled_iterations(n_iters, tau, use_numpy, monkeypatch):
    """The CPU's numpy loops and the torch loops (what a GPU runs) both give autograd's unrolled gradient."""
    from moetune.moe import local_search

    monkeypatch.setattr(local_search, "USE_NUMPY_ON_CPU", use_numpy)
    torch.manual_seed(n_iters)
    log_weights = torch.empty(6, 6, dtype=torch.float64).uniform_(-0.05, 0.05).requires_grad_()
    weight = torch.randn(6, 6, dtype=torch.float64)

    def plain(x):
        for _ in range(n_iters):
            x = x - torch.logsumexp(x, dim=-1, keepdim=True)
            x = x - torch.logsumexp(x, dim=-2, keepdim=True)
        return x.exp()

    (want,) = torch.autograd.grad((plain(log_weights / tau) * weight).sum(), log_weights)
    p = log_sinkhorn(log_weights / tau, n_iters)
    (got,) = torch.autograd.grad((p * weight).sum(), log_weights)
    torch.testing.assert_close(p, plain(log_weights / tau).detach(), rtol=0, atol=1e-12)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9 * float(want.abs().max()))
