"""MMoE: sparse and dense expert computation agree (values and gradients); bad configs fail early."""

from __future__ import annotations

import pytest
import torch

from moetune.config import (
    GateConfig,
    LocalSearchConfig,
    ModelConfig,
    StudyConfig,
    TrainConfig,
    check_study,
    check_tasks,
)
from moetune.data.base import MultiTaskData, Split, Task
from moetune.errors import ConfigError
from moetune.moe import MMoE
from moetune.moe.experts import MLPExperts, mix
from moetune.moe.gates import build_gate
from moetune.training import Trainer

from conftest import tabular_data

N_IDS = 30


def image_data(n: int = 24) -> MultiTaskData:
    g = torch.Generator().manual_seed(1)

    def split(rows):
        ids = torch.randint(0, N_IDS, (rows,), generator=g)
        return Split(
            inputs={"image": torch.rand(rows, 1, 12, 12, generator=g)},
            targets=torch.stack(
                [torch.randint(0, 3, (rows,), generator=g).float(), torch.randint(0, 3, (rows,), generator=g).float()],
                1,
            ),
            masks=torch.ones(rows, 2, dtype=torch.bool),
            routing_ids=ids,
        )

    return MultiTaskData(
        "images",
        [Task("left", "multiclass", 3), Task("right", "multiclass", 3)],
        split(n),
        split(8),
        split(8),
        n_routing_ids=N_IDS,
    ).validate()


def small_cfg(**overrides) -> ModelConfig:
    cfg = dict(n_experts=6, expert_hidden=[12, 10], expert_dropout=0.0, embed_dim=4, dense_hidden=[8], head_hidden=[8])
    cfg.update(overrides)
    return ModelConfig(**cfg)


def gate_cfg(name: str, k: int = 2) -> GateConfig:
    return GateConfig(name, 1 if name == "hash" else k)


def outputs_with(model: MMoE, compute: str, split: Split):
    model.cfg.compute = compute
    return model(split.inputs, split.routing_ids)


# --- experts.mix directly ----------------------------------------------------------------------------


def sparse_task_weights(n_rows: int, in_dim: int, n_experts: int) -> list[torch.Tensor]:
    torch.manual_seed(2)
    x = torch.randn(n_rows, in_dim)
    topk = build_gate("topk", in_dim, n_experts, k=2)
    hashed = build_gate("hash", in_dim, n_experts, k=1, n_routing_ids=4)  # 4 ids: some experts get nothing
    return [topk(x).weights, hashed(x, torch.randint(0, 4, (n_rows,))).weights]


def test_mix_sparse_equals_dense_for_two_layer_mlp_experts():
    torch.manual_seed(3)
    experts = MLPExperts(6, 10, [12, 8]).eval()
    x = torch.randn(40, 10)
    weights = sparse_task_weights(40, 10, 6)
    dense = mix(experts, x, weights, sparse=False)
    sparse = mix(experts, x, weights, sparse=True)
    for d, s in zip(dense, sparse, strict=False):
        assert s.shape == (40, 8)
        torch.testing.assert_close(s, d, atol=1e-5, rtol=1e-5)


def test_mix_sparse_equals_dense_gradients_for_mlp_experts():
    torch.manual_seed(4)
    experts = MLPExperts(6, 10, [12, 8]).eval()
    x0 = torch.randn(40, 10)
    logits0 = torch.randn(40, 6)
    grads = {}
    for sparse in (False, True):
        experts.zero_grad()
        x = x0.clone().requires_grad_()
        logits = logits0.clone().requires_grad_()
        top = logits.topk(2, dim=1)
        w = torch.zeros_like(logits).scatter(1, top.indices, torch.softmax(top.values, 1))
        out = mix(experts, x, [w, w.flip(1)], sparse=sparse)
        loss = sum((o * torch.linspace(-1, 1, o.shape[1])).pow(2).sum() for o in out)
        loss.backward()
        grads[sparse] = [x.grad, logits.grad] + [p.grad.clone() for p in experts.parameters()]
    for d, s in zip(grads[False], grads[True], strict=False):
        torch.testing.assert_close(s, d, atol=1e-5, rtol=1e-4)
    assert all(g.abs().sum() > 0 for g in grads[True])


def test_mix_sparse_runs_each_expert_only_on_its_rows():
    """An expert no sample is routed to is never run: poisoning it leaves the sparse result intact
    (the dense path runs it everywhere, and 0 * NaN is NaN)."""
    torch.manual_seed(10)
    experts = MLPExperts(4, 3, [5, 4]).eval()
    with torch.no_grad():
        for b in experts.biases:
            b[1] = float("nan")
    w = torch.zeros(6, 4)
    w[:3, 0] = 1.0
    w[3:, 2] = 0.25
    w[3:, 3] = 0.75
    x = torch.randn(6, 3)
    sparse = mix(experts, x, [w], sparse=True)[0]
    assert torch.isfinite(sparse).all()
    assert not torch.isfinite(mix(experts, x, [w], sparse=False)[0]).all()
    torch.testing.assert_close(sparse[:3], experts.one(0, x[:3]), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        sparse[3:], 0.25 * experts.one(2, x[3:]) + 0.75 * experts.one(3, x[3:]), atol=1e-5, rtol=1e-5
    )


def test_mix_sparse_with_no_active_expert_gives_zeros():
    experts = MLPExperts(3, 4, [5]).eval()
    out = mix(experts, torch.randn(2, 4), [torch.zeros(2, 3)], sparse=True)
    assert torch.equal(out[0], torch.zeros(2, 5))


# --- through the model -------------------------------------------------------------------------------


@pytest.mark.parametrize("gate", ["topk", "hash", "xmoe", "expert_choice", "usmoe"])
@pytest.mark.parametrize("local_search", [False, True])
def test_model_sparse_equals_dense_mlp(gate, local_search):
    torch.manual_seed(5)
    data = tabular_data()
    model = MMoE(
        data, small_cfg(), gate_cfg(gate), LocalSearchConfig(name="on" if local_search else "off", e_perm=1)
    ).eval()
    dense = outputs_with(model, "dense", data.train)
    sparse = outputs_with(model, "sparse", data.train)
    for d, s in zip(dense.outputs, sparse.outputs, strict=False):
        torch.testing.assert_close(s, d, atol=1e-5, rtol=1e-5)
    for d, s in zip(dense.gate_weights, sparse.gate_weights, strict=False):
        assert torch.equal(s, d)


@pytest.mark.parametrize("gate", ["topk", "hash"])
def test_model_sparse_equals_dense_cnn(gate):
    torch.manual_seed(6)
    data = image_data()
    model = MMoE(
        data, small_cfg(n_experts=4, expert_type="cnn", expert_hidden=[8, 8]), gate_cfg(gate), LocalSearchConfig()
    ).eval()
    dense = outputs_with(model, "dense", data.train)
    sparse = outputs_with(model, "sparse", data.train)
    assert dense.outputs[0].shape == (len(data.train), 3)
    for d, s in zip(dense.outputs, sparse.outputs, strict=False):
        torch.testing.assert_close(s, d, atol=1e-5, rtol=1e-5)


def test_model_sparse_equals_dense_gradients_mlp():
    torch.manual_seed(7)
    data = tabular_data()
    model = MMoE(data, small_cfg(), gate_cfg("topk"), LocalSearchConfig()).eval()
    grads = {}
    for compute in ("dense", "sparse"):
        model.zero_grad()
        out = outputs_with(model, compute, data.train)
        sum(o.pow(2).sum() for o in out.outputs).backward()
        grads[compute] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    assert grads["dense"].keys() == grads["sparse"].keys()
    assert any(n.startswith("experts.") for n in grads["sparse"]) and any(
        n.startswith("gates.") for n in grads["sparse"]
    )
    for name in grads["dense"]:
        torch.testing.assert_close(grads["sparse"][name], grads["dense"][name], atol=1e-5, rtol=1e-4, msg=name)


def test_model_output_shapes_and_weights():
    torch.manual_seed(8)
    data = tabular_data()
    model = MMoE(data, small_cfg(), gate_cfg("topk"), LocalSearchConfig()).eval()
    out = model(data.val.inputs, data.val.routing_ids)
    assert [o.shape for o in out.outputs] == [(16, 1), (16, 1)]
    assert len(out.gate_weights) == 2 and all(w.shape == (16, 6) for w in out.gate_weights)
    assert len(model.gates) == 2 and model.gates[0] is not model.gates[1]


def test_model_auto_compute_matches_dense():
    torch.manual_seed(9)
    data = tabular_data()
    model = MMoE(data, small_cfg(n_experts=8), gate_cfg("topk", 1), LocalSearchConfig()).eval()
    auto = outputs_with(model, "auto", data.train)
    assert model.use_sparse_compute(auto.gate_weights)  # 1 of 8 experts per sample: sparse pays off
    dense = outputs_with(model, "dense", data.train)
    for d, a in zip(dense.outputs, auto.outputs, strict=False):
        torch.testing.assert_close(a, d, atol=1e-5, rtol=1e-5)


def test_model_auto_compute_is_sparse_without_counting_when_the_gate_routes_to_at_most_half_by_construction():
    data = tabular_data()  # two tasks
    every_expert = [torch.full((4, 8), 1 / 8)] * 2  # not what such a gate gives: shows nothing was counted
    top1 = MMoE(data, small_cfg(n_experts=8), gate_cfg("topk", 1), LocalSearchConfig()).eval()
    assert top1.use_sparse_compute(every_expert)  # 2 tasks x 1 of 8 experts: at most a quarter
    top3 = MMoE(data, small_cfg(n_experts=8), gate_cfg("topk", 3), LocalSearchConfig()).eval()
    assert not top3.use_sparse_compute(every_expert)  # up to 6 of 8: the routed experts are counted
    assert top3.use_sparse_compute([torch.eye(8)[:4]] * 2)


def test_model_auto_compute_stays_dense_for_dense_gates_and_while_learning_a_permutation():
    data = tabular_data()
    softmax = MMoE(data, small_cfg(), gate_cfg("softmax"), LocalSearchConfig()).eval()
    assert not softmax.use_sparse_compute([torch.full((4, 6), 1 / 6)])
    learning = MMoE(data, small_cfg(), gate_cfg("topk"), LocalSearchConfig(name="on", e_perm=1)).train()
    assert not learning.use_sparse_compute([torch.eye(6)[:4]])


# --- bad configuration -------------------------------------------------------------------------------

# bad sizes and choices fail where the config is made (its type checks them); gate.k against the number
# of experts is a cross-field check (moetune.config.check_study); a gate's own keys are the gate's to check
BAD_MODEL = [
    (dict(n_experts=0), dict(name="topk", k=1), "model.n_experts"),
    (dict(n_experts=0), dict(name="softmax", k=1), "model.n_experts"),
    (dict(expert_hidden=[0]), dict(name="topk", k=2), "model.expert_hidden"),
    (dict(expert_hidden=[8, -3]), dict(name="topk", k=2), "model.expert_hidden"),
    (dict(expert_hidden=[]), dict(name="topk", k=2), "model.expert_hidden"),
    (dict(head_hidden=[0]), dict(name="topk", k=2), "model.head_hidden"),
    (dict(dense_hidden=[-1]), dict(name="topk", k=2), "model.dense_hidden"),
    (dict(embed_dim=0), dict(name="topk", k=2), "model.embed_dim"),
    (dict(expert_dropout=1.0), dict(name="topk", k=2), "model.expert_dropout"),
    (dict(expert_type="rnn"), dict(name="topk", k=2), "model.expert_type"),
    (dict(compute="fast"), dict(name="topk", k=2), "model.compute"),
    (dict(n_experts=4), dict(name="topk", k=0), "gate.k"),
    (dict(n_experts=4), dict(name="comet", k=-1), "gate.k"),
]


@pytest.mark.parametrize("overrides, gate, key", BAD_MODEL)
def test_bad_model_config_is_a_config_error_naming_the_key(overrides, gate, key):
    with pytest.raises(ConfigError) as info:
        MMoE(tabular_data(), small_cfg(**overrides), GateConfig(**gate), LocalSearchConfig())
    assert key in str(info.value)


@pytest.mark.parametrize(
    "n_experts, gate, ok", [(4, "topk", False), (4, "comet", False), (4, "softmax", False), (5, "topk", True)]
)
def test_gate_k_above_the_number_of_experts_is_refused_before_training(n_experts, gate, ok):
    config = StudyConfig(model=small_cfg(n_experts=n_experts), gate=GateConfig(gate, 5))
    if ok:
        check_study(config)
    else:
        with pytest.raises(ConfigError, match=f"gate.k must be between 1 and model.n_experts={n_experts}"):
            check_study(config)


BAD_GATE = [
    (GateConfig("nope", 2), "nope"),
    (GateConfig("hash", 2), "gate.k=1"),
    (GateConfig("comet", 2, {"gamma": 0}), "gamma"),
    (GateConfig("topk", 2, {"bogus": 1}), "bogus"),
]


@pytest.mark.parametrize("gate, key", BAD_GATE)
def test_bad_gate_keys_are_a_config_error_naming_the_key(gate, key):
    with pytest.raises(ConfigError) as info:
        MMoE(tabular_data(), small_cfg(), gate, LocalSearchConfig())
    assert key in str(info.value)


def test_unknown_gate_lists_the_choices():
    with pytest.raises(ConfigError) as info:
        MMoE(tabular_data(), small_cfg(), GateConfig("nope", 2), LocalSearchConfig())
    assert "topk" in str(info.value) and "comet" in str(info.value)


def test_local_search_e_perm_below_one_is_a_config_error():
    with pytest.raises(ConfigError, match="local_search.e_perm"):
        LocalSearchConfig(name="on", e_perm=0)


def test_cnn_experts_without_images_is_a_config_error():
    with pytest.raises(ConfigError, match="expert_type=cnn"):
        MMoE(tabular_data(), small_cfg(expert_type="cnn"), GateConfig("topk", 2), LocalSearchConfig())


def test_hash_gate_on_a_dataset_without_routing_ids_is_a_config_error():
    data = tabular_data()
    data.n_routing_ids = None
    with pytest.raises(ConfigError, match="routing ids"):
        MMoE(data, small_cfg(), GateConfig("hash", 1), LocalSearchConfig())


BAD_TRAIN = [
    (dict(batch_size=0), "train.batch_size"),
    (dict(max_epochs=0), "train.max_epochs"),
    (dict(patience=0), "train.patience"),
    (dict(lr=0.0), "train.lr"),
    (dict(lr=-1e-3), "train.lr"),
    (dict(lr=float("nan")), "train.lr"),
    (dict(device="gpu"), "train.device"),
    (dict(task_weights=[1.0, -1.0]), "train.task_weights"),
]


@pytest.mark.parametrize("overrides, key", BAD_TRAIN)
def test_bad_train_config_is_a_config_error_naming_the_key(overrides, key):
    with pytest.raises(ConfigError) as info:
        TrainConfig(**overrides)
    assert key in str(info.value)


def test_task_weights_need_one_weight_per_task():
    with pytest.raises(ConfigError, match="train.task_weights must be 2 non-negative numbers"):
        check_tasks(StudyConfig(train=TrainConfig(task_weights=[1.0])), n_tasks=2)
    check_tasks(StudyConfig(train=TrainConfig(task_weights=[1.0, 0.5])), n_tasks=2)


def test_e_perm_above_max_epochs_is_refused_and_equal_is_fine():
    ls = LocalSearchConfig(name="on", e_perm=4)
    with pytest.raises(ConfigError, match="local_search.e_perm=4 exceeds train.max_epochs=3"):
        check_study(StudyConfig(local_search=ls, train=TrainConfig(max_epochs=3)))
    check_study(StudyConfig(local_search=ls, train=TrainConfig(max_epochs=4)))
    Trainer(
        tabular_data(),
        small_cfg(),
        GateConfig("topk", 2),
        LocalSearchConfig(name="on", e_perm=3),
        TrainConfig(max_epochs=3, device="cpu"),
    ).fit()


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_is_a_config_error():
    with pytest.raises(ConfigError, match="train.device"):
        Trainer(tabular_data(), small_cfg(), GateConfig("topk", 2), LocalSearchConfig(), TrainConfig(device="cuda"))


# --- Soft MoE: experts on slots ----------------------------------------------------------------------


def soft_moe_reference(model: MMoE, split: Split, to_expert: list[int]) -> list[torch.Tensor]:
    """Soft MoE by its definition, one slot at a time: slot s = sum_b D[b, s] x_b, run by expert
    to_expert[s // p]; sample b's output is sum_s C[b, s] y_s (then the task's head)."""
    features = model.bottom(split.inputs)
    x = split.inputs["image"] if model.cfg.expert_type == "cnn" else features
    outputs = []
    for gate, head in zip(model.gates, model.heads, strict=False):
        slots = gate(features).slots
        ys = []
        for s in range(slots.dispatch.shape[1]):
            slot_input = (slots.dispatch[:, s].view(-1, *[1] * (x.dim() - 1)) * x).sum(0, keepdim=True)
            ys.append(model.experts.one(to_expert[s // slots.slots_per_expert], slot_input))
        outputs.append(head(slots.combine @ torch.cat(ys)))
    return outputs


@pytest.mark.parametrize("expert_type", ["mlp", "cnn"])
def test_soft_moe_model_computes_the_papers_slots(expert_type):
    torch.manual_seed(11)
    if expert_type == "cnn":
        data, cfg = image_data(), small_cfg(n_experts=4, expert_type="cnn", expert_hidden=[8, 8])
    else:
        data, cfg = tabular_data(), small_cfg(n_experts=4)
    model = MMoE(data, cfg, GateConfig("soft_moe", 1, {"slots_per_expert": 2}), LocalSearchConfig()).eval()
    out = model(data.train.inputs, data.train.routing_ids)
    for got, want in zip(out.outputs, soft_moe_reference(model, data.train, [0, 1, 2, 3]), strict=False):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_soft_moe_model_is_permutation_equivariant_in_its_samples():
    """Slots are symmetric functions of the batch, so reordering the batch reorders the outputs, nothing else."""
    torch.manual_seed(12)
    data = tabular_data()
    model = MMoE(data, small_cfg(), GateConfig("soft_moe", 1, {"slots_per_expert": 2}), LocalSearchConfig()).eval()
    order = torch.randperm(len(data.train))
    shuffled = data.train.index(order)
    base = model(data.train.inputs, data.train.routing_ids)
    moved = model(shuffled.inputs, shuffled.routing_ids)
    for b, m in zip(base.outputs, moved.outputs, strict=False):
        torch.testing.assert_close(m, b[order], atol=1e-5, rtol=1e-5)
    part = data.train.index(torch.arange(20))
    assert not torch.allclose(model(part.inputs, part.routing_ids).outputs[0], base.outputs[0][:20]), (
        "a sample's output depends on its batch"
    )


def test_soft_moe_with_a_frozen_permutation_runs_each_slot_group_on_its_permuted_expert():
    torch.manual_seed(13)
    data = tabular_data()
    ls = LocalSearchConfig(name="on", e_perm=1)
    model = MMoE(data, small_cfg(n_experts=4), GateConfig("soft_moe", 1, {"slots_per_expert": 2}), ls)
    with torch.no_grad():
        model.local_search.log_weights.copy_(torch.eye(4)[[2, 0, 3, 1]] * 5)
    model.local_search.freeze()
    model.eval()
    assert model.local_search.permutation() == [2, 0, 3, 1]
    out = model(data.train.inputs, data.train.routing_ids)
    for got, want in zip(out.outputs, soft_moe_reference(model, data.train, [2, 0, 3, 1]), strict=False):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_soft_mix_learning_path_equals_the_hard_path_on_a_permutation():
    """While a permutation is learned every expert runs every slot; on a hard permutation both paths agree."""
    from moetune.moe.experts import soft_mix

    torch.manual_seed(14)
    experts = MLPExperts(4, 6, [10, 8]).eval()
    gates = [build_gate("soft_moe", 6, 4, k=1, slots_per_expert=3) for _ in range(2)]
    x = torch.randn(40, 6)
    slots = [g(x).slots for g in gates]
    perm = torch.eye(4)[[1, 3, 0, 2]]
    hard = soft_mix(experts, x, slots, perm, hard=True)
    every = soft_mix(experts, x, slots, perm, hard=False)
    for h, e in zip(hard, every, strict=False):
        torch.testing.assert_close(h, e, atol=1e-5, rtol=1e-5)
