"""Training end to end on tiny synthetic data: learning, determinism, early stopping, divergence, metrics."""

from __future__ import annotations

import gc
import math

import pytest
import torch

from moetune import contract
from moetune.config import GateConfig, LocalSearchConfig, ModelConfig, TrainConfig
from moetune.data import load_dataset
from moetune.errors import TrainingDivergedError
from moetune.moe.gates import available_gates
from moetune.training import Trainer

N_EXPERTS = 4
torch.set_num_threads(1)  # tiny models: threads only add contention on a shared machine


@pytest.fixture(scope="module")
def data():
    return load_dataset("synthetic", n_samples=2000)


def fresh_data(n_samples: int = 600):
    """A dataset of its own, for tests that modify it (on CPU the trainer shares the tensors)."""
    return load_dataset("synthetic", n_samples=n_samples)


def model_cfg(**overrides) -> ModelConfig:
    cfg = dict(
        n_experts=N_EXPERTS, expert_hidden=[16], expert_dropout=0.0, embed_dim=16, dense_hidden=[16], head_hidden=[16]
    )
    cfg.update(overrides)
    return ModelConfig(**cfg)


def make_trainer(data, gate="topk", local_search=False, e_perm=2, model=None, **train) -> Trainer:
    train_cfg = dict(lr=3e-3, batch_size=128, max_epochs=4, patience=10, device="cpu")
    train_cfg.update(train)
    return Trainer(
        data,
        model or model_cfg(),
        GateConfig(gate, 1 if gate == "hash" else 2),
        LocalSearchConfig(name="on" if local_search else "off", e_perm=e_perm),
        TrainConfig(**train_cfg),
    )


def without_timings(metrics: dict) -> dict:
    timings = (contract.WALL_SECONDS, contract.CPU_SECONDS, contract.TRAIN_SAMPLES_PER_SECOND)
    return {k: v for k, v in metrics.items() if k not in timings}


# --- learning ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("local_search", [False, True], ids=["off", "on"])
@pytest.mark.parametrize("gate", available_gates())
def test_training_lowers_validation_loss(data, gate, local_search):
    trainer = make_trainer(data, gate, local_search)
    untrained = trainer.evaluate("val")[contract.VAL_LOSS]
    result = trainer.fit()
    val_losses = [h[contract.VAL_LOSS] for h in result.history]
    assert min(val_losses) < untrained
    assert result.val[contract.VAL_LOSS] == pytest.approx(min(val_losses), rel=1e-6)
    assert result.best_epoch == val_losses.index(min(val_losses)) + 1
    if local_search:
        assert sorted(result.diagnostics["permutation"]) == list(range(N_EXPERTS))
    else:
        assert "permutation" not in result.diagnostics


def test_local_search_is_frozen_after_e_perm_epochs(data):
    trainer = make_trainer(data, "topk", local_search=True, e_perm=1, max_epochs=2)
    frozen_at = []
    trainer.fit(lambda epoch, m: frozen_at.append(trainer.model.local_search.hardened))
    assert frozen_at == [True, True]
    assert not trainer.model.local_search.log_weights.requires_grad


# --- determinism -------------------------------------------------------------------------------------


def test_same_seed_same_run_different_seed_different_run(data):
    # noisy gating, dropout and the Gumbel noise of local search all draw random numbers
    def run(seed):
        trainer = Trainer(
            data,
            model_cfg(expert_dropout=0.2),
            GateConfig("topk", 2, {"noisy": True}),
            LocalSearchConfig(name="on", e_perm=1),
            TrainConfig(lr=3e-3, batch_size=256, max_epochs=2, device="cpu", seed=seed),
        )
        return trainer.fit()

    a, b, c = run(1), run(1), run(2)
    assert a.history == b.history
    assert without_timings(a.final_metrics()) == without_timings(b.final_metrics())
    assert a.diagnostics == b.diagnostics
    assert a.history != c.history
    assert without_timings(a.final_metrics()) != without_timings(c.final_metrics())


# --- early stopping ----------------------------------------------------------------------------------


def expected_stop(val_losses: list[float], patience: int, max_epochs: int) -> int:
    best, best_epoch = math.inf, 0
    for epoch, loss in enumerate(val_losses, start=1):
        if loss < best:
            best, best_epoch = loss, epoch
        elif epoch - best_epoch >= patience:
            return epoch
    return max_epochs


def test_early_stopping_respects_patience_when_nothing_improves(data):
    # lr 1e-12 is below float32 resolution of the weights: the model cannot improve after epoch 1
    calls = []
    result = make_trainer(data, lr=1e-12, max_epochs=10, patience=3).fit(lambda e, m: calls.append(e))
    val_losses = [h[contract.VAL_LOSS] for h in result.history]
    assert result.epochs_run == expected_stop(val_losses, 3, 10) < 10
    assert result.epochs_run == 4 and result.best_epoch == 1
    assert calls == list(range(1, result.epochs_run + 1))


def test_early_stopping_restores_the_best_weights():
    # a high lr on little data overfits after a few epochs, so the best epoch is not the last one
    trainer = make_trainer(fresh_data(), lr=3e-2, batch_size=64, max_epochs=10, patience=3)
    result = trainer.fit()
    val_losses = [h[contract.VAL_LOSS] for h in result.history]
    assert result.best_epoch < result.epochs_run, "test setup: expected the run to get worse after its best epoch"
    assert result.epochs_run == expected_stop(val_losses, 3, 10)
    assert result.epochs_run == result.best_epoch + 3
    best = result.history[result.best_epoch - 1]
    for key, value in result.val.items():
        assert value == pytest.approx(best[key], rel=1e-6, abs=1e-7), key
    assert result.val[contract.VAL_LOSS] != pytest.approx(result.history[-1][contract.VAL_LOSS], rel=1e-4)
    assert trainer.evaluate("test") == pytest.approx(result.test)


def test_best_weights_restored_with_local_search():
    trainer = make_trainer(
        fresh_data(), "topk", local_search=True, e_perm=1, lr=3e-2, batch_size=64, max_epochs=8, patience=2
    )
    result = trainer.fit()
    best = result.history[result.best_epoch - 1]
    assert result.val[contract.VAL_LOSS] == pytest.approx(best[contract.VAL_LOSS], rel=1e-6)
    assert trainer.model.local_search.hardened  # best epoch >= e_perm = 1: the frozen permutation came back


# --- divergence --------------------------------------------------------------------------------------


def test_nan_target_in_train_split_raises_diverged_at_epoch_one():
    data = fresh_data()
    observed = data.train.masks[:, 1].nonzero()[0, 0]
    data.train.targets[observed, 1] = float("nan")  # a NaN rating where the rating counts
    with pytest.raises(TrainingDivergedError) as info:
        make_trainer(data).fit()
    assert info.value.epoch == 1 and "epoch 1" in str(info.value)


def test_divergence_names_the_epoch_it_happened_in():
    data = fresh_data()
    trainer = make_trainer(data, max_epochs=5)

    def poison_after_epoch_two(epoch, metrics):
        if epoch == 2:
            trainer.splits["train"].targets[:, 0] = float("nan")

    with pytest.raises(TrainingDivergedError) as info:
        trainer.fit(poison_after_epoch_two)
    assert info.value.epoch == 3 and "epoch 3" in str(info.value)


def test_huge_learning_rate_diverges(data):
    with pytest.raises(TrainingDivergedError) as info:
        make_trainer(data, lr=1e12, max_epochs=3).fit()
    assert info.value.epoch == 1


def test_missing_targets_are_skipped_even_when_nan():
    """A target whose mask is False is missing: whatever it holds (NaN too) must not reach the loss."""
    data = fresh_data()
    for split in data.splits.values():
        split.targets[~split.masks[:, 1], 1] = float("nan")
    result = make_trainer(data, max_epochs=2).fit()
    assert all(math.isfinite(h[contract.TRAIN_LOSS]) and math.isfinite(h[contract.VAL_LOSS]) for h in result.history)


# --- callbacks, metrics, diagnostics -----------------------------------------------------------------


def test_on_epoch_called_once_per_epoch_with_losses(data):
    seen = []
    result = make_trainer(data, max_epochs=3).fit(lambda epoch, metrics: seen.append((epoch, dict(metrics))))
    assert [e for e, _ in seen] == [1, 2, 3] == [h["epoch"] for h in result.history]
    for (epoch, metrics), entry in zip(seen, result.history, strict=False):
        assert math.isfinite(metrics[contract.TRAIN_LOSS]) and math.isfinite(metrics[contract.VAL_LOSS])
        assert {"epoch": epoch, **metrics} == entry


def test_training_keeps_the_objects_alive_before_it_out_of_full_collections_and_leaves_the_collector_as_found(data):
    """The objects alive when fit starts (the process's imports, data, model) are frozen while it runs, so the
    collections that autograd's survivors set off do not walk them; fit unfreezes only what it froze."""
    assert gc.get_freeze_count() == 0
    frozen_during = []
    make_trainer(data, max_epochs=2).fit(lambda epoch, metrics: frozen_during.append(gc.get_freeze_count()))
    assert len(frozen_during) == 2 and min(frozen_during) > 10_000  # the test process's objects
    assert gc.get_freeze_count() == 0

    gc.freeze()  # a caller that froze its own objects keeps them frozen
    try:
        before = gc.get_freeze_count()
        make_trainer(data, max_epochs=1).fit()
        assert gc.get_freeze_count() > before // 2  # not unfrozen (a few frozen objects may have been freed)
    finally:
        gc.unfreeze()


def test_final_metrics_use_schema_names(data):
    result = make_trainer(data, max_epochs=2).fit()
    metrics = result.final_metrics()
    expected = {
        "best_val_loss",
        "test_loss",
        "test_click_auc",
        "test_rating_mse",
        contract.WALL_SECONDS,
        contract.CPU_SECONDS,
        contract.TRAIN_SAMPLES_PER_SECOND,
        contract.ACTIVE_EXPERTS,
        contract.BEST_EPOCH,
        "best_val_click_auc",
        "best_val_rating_mse",
        "routing_nmi",
    }
    assert expected <= metrics.keys()
    assert all(isinstance(v, float) and math.isfinite(v) for v in metrics.values())
    assert 0.0 <= metrics["test_click_auc"] <= 1.0
    assert metrics[contract.WALL_SECONDS] > 0 and metrics[contract.CPU_SECONDS] > 0
    steps_only = 2 * len(data.splits["train"]) / metrics[contract.WALL_SECONDS]  # wall time includes evaluation
    assert metrics[contract.TRAIN_SAMPLES_PER_SECOND] > steps_only
    assert metrics["best_val_loss"] == result.val[contract.VAL_LOSS]
    assert metrics[contract.BEST_EPOCH] == float(result.best_epoch)


def test_val_loss_is_the_task_weighted_sum(data):
    trainer = make_trainer(data, task_weights=[0.0, 1.0])
    metrics = trainer.evaluate("val")
    assert metrics[contract.VAL_LOSS] == pytest.approx(metrics["val_rating_mse"], rel=1e-5)


@pytest.mark.parametrize("gate, k", [("topk", 2), ("hash", 1), ("softmax", N_EXPERTS)])
def test_active_experts_per_sample(data, gate, k):
    result = make_trainer(data, gate, max_epochs=1).fit()
    assert result.diagnostics["active_experts_mean"] == pytest.approx(k)
    assert result.final_metrics()[contract.ACTIVE_EXPERTS] == pytest.approx(k)
    loads = result.diagnostics["expert_load_per_task"]
    assert len(loads) == 2 and all(sum(load) == pytest.approx(k) for load in loads)


def test_routing_nmi_is_one_when_the_gate_routes_like_the_teacher(data):
    trainer = make_trainer(data, "hash", max_epochs=1)
    n_teacher = len(set(data.truth["id_to_expert"]))
    assert n_teacher == N_EXPERTS
    teacher = torch.tensor(data.truth["id_to_expert"])
    trainer.model.gates[0].table.copy_(teacher)
    assert trainer.diagnostics("test")["routing_nmi"] == pytest.approx(1.0)
    relabelled = torch.tensor([2, 3, 0, 1])[teacher]  # NMI ignores expert names
    trainer.model.gates[0].table.copy_(relabelled)
    assert trainer.diagnostics("test")["routing_nmi"] == pytest.approx(1.0)
    shuffled = teacher[torch.randperm(len(teacher), generator=torch.Generator().manual_seed(0))]
    trainer.model.gates[0].table.copy_(shuffled)
    assert trainer.diagnostics("test")["routing_nmi"] < 0.2


@pytest.mark.parametrize("gate", ["expert_choice", "usmoe", "soft_moe"])
def test_batch_level_gates_are_evaluated_in_training_sized_batches(data, gate):
    """A batch-level gate routes a sample by its batch: evaluation uses train.batch_size batches in the split's
    order, the last one ending at the split's end, each sample predicted once, whatever eval_batch_size is."""
    trainer = make_trainer(data, gate, batch_size=96, eval_batch_size=4096)
    split = trainer.splits["val"]
    n = len(split)
    assert n % 96 != 0, "test setup: the last batch must overlap the one before"
    outputs, weights = trainer.predict("val")
    assert outputs[0].shape[0] == weights[0].shape[0] == n
    trainer.model.eval()
    with torch.no_grad():
        first = split.index(torch.arange(96))
        torch.testing.assert_close(outputs[0][:96], trainer.model(first.inputs, first.routing_ids).outputs[0])
        last, new = split.index(torch.arange(n - 96, n)), n % 96  # the rows no earlier batch predicted
        torch.testing.assert_close(outputs[0][-new:], trainer.model(last.inputs, last.routing_ids).outputs[0][-new:])
        whole = trainer.model(split.inputs, split.routing_ids).outputs[0]
    assert not torch.allclose(outputs[0], whole), "evaluated as one batch: the batch size was ignored"


@pytest.mark.parametrize("gate,local_search", [("hash", False), ("topk", True)])
def test_batches_gathered_in_blocks_train_as_batches_gathered_one_by_one(data, monkeypatch, gate, local_search):
    """Batches are views of one gather per BATCHES_PER_GATHER batches: the same rows in the same order as one
    gather per batch, so the same metrics to the bit (600 rows of batch 128: a short last batch in a block)."""
    from moetune.training import trainer as trainer_module

    blocked = make_trainer(data, gate, local_search).fit().report().metrics
    monkeypatch.setattr(trainer_module, "BATCHES_PER_GATHER", 1)
    one_by_one = make_trainer(data, gate, local_search).fit().report().metrics
    monkeypatch.setattr(trainer_module, "BATCHES_PER_GATHER", 3)  # blocks that do not divide the batches
    threes = make_trainer(data, gate, local_search).fit().report().metrics
    assert without_timings(blocked) == without_timings(one_by_one) == without_timings(threes)
