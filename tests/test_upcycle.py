"""Sparse upcycling: a dense (one-expert) model's weights start an MoE (moetune.moe.upcycle), and trials
keep their best weights in MLflow (train.save_weights) so a dense study can seed an upcycled one."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
import torch
from test_cli import client_for, runs_of

from moetune.config import GateConfig, LocalSearchConfig, ModelConfig, StudyConfig, TrainConfig, check_study
from moetune.contract import WEIGHTS_ERROR, FinalReport, Outcome
from moetune.data.base import MultiTaskData, Split, Task
from moetune.errors import ConfigError
from moetune.moe import MMoE
from moetune.moe.upcycle import check_checkpoint, upcycle
from moetune.tracking import tags as T
from moetune.tracking.mlflow_store import MlflowTracking
from moetune.training import Trainer
from moetune.tuning.driver import Driver
from moetune.tuning.progress import StudyProgress

from conftest import TINY, run_cli, tabular_data

# two expert layers: the flat first layer and a stacked later one are both copied
DENSE = ModelConfig(
    n_experts=1, expert_hidden=[8, 6], expert_dropout=0.0, embed_dim=4, dense_hidden=[8], head_hidden=[8]
)


def dense_model(data, cfg: ModelConfig = DENSE, seed: int = 0) -> MMoE:
    torch.manual_seed(seed)
    return MMoE(data, cfg, GateConfig("softmax", k=1), LocalSearchConfig()).eval()


def moe(data, n: int = 4, gate: str = "softmax", cfg: ModelConfig = DENSE) -> MMoE:
    torch.manual_seed(1)
    return MMoE(data, dataclasses.replace(cfg, n_experts=n), GateConfig(gate, k=2), LocalSearchConfig()).eval()


def expert_outputs(model: MMoE, x: torch.Tensor) -> list[torch.Tensor]:
    return [model.experts.one(e, x) for e in range(model.cfg.n_experts)]


@torch.no_grad()
def test_upcycled_experts_equal_the_dense_expert_and_a_softmax_moe_computes_the_dense_model():
    data = tabular_data()
    dense, model = dense_model(data), moe(data)
    gates_before = {k: v.clone() for k, v in model.state_dict().items() if k.startswith("gates.")}
    upcycle(model, dense.state_dict())
    x = torch.randn(7, model.bottom.out_dim)
    (want,) = expert_outputs(dense, x)
    for got in expert_outputs(model, x):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    # any convex mix of identical experts is that expert: the MoE's outputs are the dense model's
    split = data.splits["test"]
    for got, want in zip(model(split.inputs).outputs, dense(split.inputs).outputs, strict=True):
        torch.testing.assert_close(got, want)
    # the gates stay as freshly initialised (the router is new), and they are not uniform
    for key, value in gates_before.items():
        torch.testing.assert_close(model.state_dict()[key], value, rtol=0, atol=0)
    assert not torch.allclose(model(split.inputs).gate_weights[0], torch.full((len(split), 4), 0.25))


@torch.no_grad()
def test_upcycling_with_a_sparse_gate_still_computes_the_dense_model():
    """Top-k weights renormalised over the chosen experts sum to one: identical experts, the dense output."""
    data = tabular_data()
    dense, model = dense_model(data), moe(data, gate="topk")
    upcycle(model, dense.state_dict())
    split = data.splits["test"]
    for got, want in zip(model(split.inputs).outputs, dense(split.inputs).outputs, strict=True):
        torch.testing.assert_close(got, want)


@torch.no_grad()
def test_noise_makes_experts_differ_by_a_relative_scale_and_follows_the_seed():
    data = tabular_data()
    dense = dense_model(data)
    x = torch.randn(7, dense.bottom.out_dim)
    (want,) = expert_outputs(dense, x)
    runs = {}
    for seed in (3, 3, 4):
        model = moe(data)
        upcycle(model, dense.state_dict(), noise=0.05, seed=seed)
        outs = expert_outputs(model, x)
        assert all(not torch.equal(a, b) for i, a in enumerate(outs) for b in outs[i + 1 :])  # experts differ
        assert all(0 < (out - want).abs().max() < 0.5 for out in outs)  # near the dense expert
        runs.setdefault(seed, []).append(model.experts.weights[0].clone())
    torch.testing.assert_close(runs[3][0], runs[3][1], rtol=0, atol=0)  # same seed, same noise
    assert not torch.equal(runs[3][0], runs[4][0])  # another trial's seed, other noise
    # the relative scale: a tensor's noise std is init_noise x that tensor's std
    model = moe(data)
    upcycle(model, dense.state_dict(), noise=0.05, seed=5)
    first = dense.experts.weights[0]
    drift = model.experts.expert_weight(0) - first.unsqueeze(0)
    assert drift.std().item() == pytest.approx(0.05 * first.std(correction=0).item(), rel=0.15)


def image_data(rows: int = 8) -> MultiTaskData:
    g = torch.Generator().manual_seed(0)

    def split():
        return Split(
            inputs={"image": torch.rand(rows, 1, 12, 12, generator=g)},
            targets=torch.randint(0, 3, (rows, 1), generator=g).float(),
            masks=torch.ones(rows, 1, dtype=torch.bool),
        )

    return MultiTaskData("images", [Task("digit", "multiclass", 3)], split(), split(), split()).validate()


@torch.no_grad()
def test_cnn_experts_upcycle_too():
    data = image_data()
    cfg = ModelConfig(n_experts=1, expert_type="cnn", expert_hidden=[8], expert_dropout=0.0, head_hidden=[8])
    dense, model = dense_model(data, cfg), moe(data, n=3, cfg=cfg)
    upcycle(model, dense.state_dict())
    x = data.splits["test"].inputs["image"]
    (want,) = expert_outputs(dense, x)
    assert all(torch.equal(out, want) for out in expert_outputs(model, x))
    inputs = data.splits["test"].inputs
    for got, want in zip(model(inputs).outputs, dense(inputs).outputs, strict=True):
        torch.testing.assert_close(got, want)


def test_the_trainer_upcycles_before_its_init_digest():
    data = tabular_data()
    dense = dense_model(data)
    cfg = dataclasses.replace(DENSE, n_experts=3, init_from="dense.pt")
    train = TrainConfig(max_epochs=1, device="cpu", seed=7)
    plain = Trainer(data, cfg, GateConfig("softmax", k=3), LocalSearchConfig(), train)
    upcycled = Trainer(data, cfg, GateConfig("softmax", k=3), LocalSearchConfig(), train, init_state=dense.state_dict())
    assert upcycled.init_digest != plain.init_digest
    x = torch.randn(5, dense.bottom.out_dim)
    with torch.no_grad():
        assert all(torch.equal(out, expert_outputs(dense, x)[0]) for out in expert_outputs(upcycled.model, x))
    upcycled.fit()  # and it trains


def test_incompatible_checkpoints_are_one_line_naming_the_problem():
    data = tabular_data()
    model = moe(data)
    cases = [
        (moe(data, n=3).state_dict(), "not a dense checkpoint: it holds 3 experts"),
        (
            dense_model(data, dataclasses.replace(DENSE, expert_hidden=[8, 5])).state_dict(),
            "tensor experts.weights.1 is [1, 8, 5] in the checkpoint but [1, 8, 6] in this study's model",
        ),
        (
            dense_model(data, dataclasses.replace(DENSE, head_hidden=[8, 8])).state_dict(),
            "tensor heads.0.2.weight is [8, 8] in the checkpoint but [1, 8]",
        ),
        ({**dense_model(data).state_dict(), "heads.0.9.weight": torch.zeros(1)}, "heads.0.9.weight has no place"),
        (
            {k: v for k, v in dense_model(data).state_dict().items() if k != "heads.1.0.bias"},
            "no tensor heads.1.0.bias",
        ),
        ({"weights": [1, 2]}, "not a model state dict"),
    ]
    for state, message in cases:
        with pytest.raises(ConfigError) as info:
            check_checkpoint(state, model, "ckpt.pt")
        text = str(info.value)
        assert "\n" not in text and text.startswith("model.init_from=ckpt.pt: ") and message in text, text


def test_one_expert_models_are_allowed_local_search_on_one_expert_is_not():
    check_study(StudyConfig(model=ModelConfig(n_experts=1), gate=GateConfig("softmax", k=1)))
    with pytest.raises(ConfigError, match="gate.k must be between 1 and model.n_experts=1"):
        check_study(StudyConfig(model=ModelConfig(n_experts=1), gate=GateConfig("topk", k=2)))
    with pytest.raises(ConfigError, match="local_search=on needs at least 2 experts"):
        check_study(
            StudyConfig(
                model=ModelConfig(n_experts=1),
                gate=GateConfig("softmax", k=1),
                local_search=LocalSearchConfig(name="on", e_perm=1),
            )
        )
    with pytest.raises(ConfigError, match="model.init_noise must be a non-negative number"):
        ModelConfig(init_noise=-0.1)


def test_a_dense_model_with_two_expert_layers_computes_and_trains_like_its_sparse_path():
    """One expert of two layers: the dense path's fused epilogue must get a fresh tensor, not a view."""
    data = tabular_data()
    model = dense_model(data)
    assert len(model.experts.weights) >= 2, "test setup: two expert layers"
    model.cfg.compute = "dense"
    dense = model(data.train.inputs, data.train.routing_ids).outputs
    model.cfg.compute = "sparse"
    sparse = model(data.train.inputs, data.train.routing_ids).outputs
    for d, s in zip(dense, sparse, strict=True):
        torch.testing.assert_close(d, s, atol=1e-5, rtol=1e-5)
    trainer = Trainer(data, DENSE, GateConfig("softmax", k=1), LocalSearchConfig(), TrainConfig(max_epochs=2))
    untrained = trainer.evaluate("val")["val_loss"]
    assert trainer.fit().val["val_loss"] < untrained


# ---------------------------------------------------------------- saving and finding weights in the store


def test_a_study_run_gives_its_best_trial_with_saved_weights_and_failures_are_recorded(tmp_path):
    tracking = MlflowTracking(
        f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "artifacts"), experiment="dense"
    )
    record = tracking.open_study("softmax-dense", {}, {}, "tuner:\n  metric: val_loss\n  mode: min\n")
    losses = {0: 0.5, 1: 0.3, 2: 0.1, 3: 0.4}  # trial 2 is best but its weights were not saved
    for number, loss in losses.items():
        record.start_trial(number, {}, {}, f"t{number}")
        if number != 2:
            record.log_weights(number, f"weights of {number}".encode())
        diagnostics = {WEIGHTS_ERROR: "OSError: disk full"} if number == 2 else {}
        record.end_trial(number, Outcome.FINISHED, FinalReport({"best_val_loss": loss}, diagnostics))
    record.close({}, True)
    data, source = tracking.load_weights(record.parent_id)
    assert data == b"weights of 1" and source.startswith("trial-001 of study softmax-dense")
    assert "the best of 3 with saved weights by best_val_loss=0.3" in source
    assert tracking.load_weights(record.runs[3])[0] == b"weights of 3"  # a trial run: its own
    with pytest.raises(ConfigError, match=r"trial-002 .* has no saved weights \(OSError: disk full\)"):
        tracking.load_weights(record.runs[2])
    with pytest.raises(ConfigError, match="no run with that id"):
        tracking.load_weights("0" * 32)


class _Record:
    def __init__(self, fails: bool):
        self.fails, self.logged = fails, {}

    def log_weights(self, number, data):
        if self.fails:
            raise OSError("artifact store unreachable")
        self.logged[number] = data


class _Inbox:
    def __init__(self, held):
        self.pop = type("Remote", (), {"remote": staticmethod(lambda key: held.pop(key, None))})()


def test_the_driver_records_why_a_trials_weights_were_not_saved(monkeypatch):
    monkeypatch.setattr("moetune.tuning.weights.ray.get", lambda value: value)
    for fails, held, worker_error, why in [
        (False, {"s/0": b"w"}, None, None),
        (True, {"s/0": b"w"}, None, "OSError: artifact store unreachable"),
        (False, {}, None, "the trial's weights never reached the driver"),
        (False, {}, "RayActorError: the inbox died", "RayActorError: the inbox died"),
    ]:
        study = type("Study", (), {"plan": type("Plan", (), {"key": "s"}), "record": _Record(fails)})()
        study.progress = StudyProgress(key="s", total=1, metric="val_loss")
        driver = Driver([study], inbox=_Inbox(held))
        messages = []
        monkeypatch.setattr(driver.progress, "message", messages.append)
        final = FinalReport({}, {WEIGHTS_ERROR: worker_error} if worker_error else {})
        driver._keep_weights(study, 0, final)
        assert final.diagnostics.get(WEIGHTS_ERROR) == why
        assert study.record.logged == ({} if why else {0: b"w"})
        assert messages == ([f"[s] trial-000: weights not saved: {why}"] if why else [])


# ---------------------------------------------------------------- through the command line

STUDY_ARGS = ["tuner.n_trials=2", "tuner.concurrency=2", *TINY]


@pytest.mark.slow
def test_dense_study_saves_weights_and_seeds_an_upcycled_study_by_its_run_id(workdir):
    dense = run_cli(
        workdir,
        "-m",
        "gate=softmax",
        "model.n_experts=1",
        "train.save_weights=true",
        "sweep.name=dense",
        "sweep.export=false",
        *STUDY_ARGS,
    )
    assert dense.returncode == 0, dense.stderr[-3000:]
    client = client_for(workdir)
    (study,) = runs_of(client, "dense", T.STUDY)
    trials = runs_of(client, "dense", T.TRIAL)
    assert len(trials) == 2
    for trial in trials:
        assert trial.info.status == "FINISHED" and trial.data.tags[T.WEIGHTS] == T.WEIGHTS_ARTIFACT
        assert T.WEIGHTS_ERROR not in trial.data.tags
        assert [a.path for a in client.list_artifacts(trial.info.run_id, "weights")] == [T.WEIGHTS_ARTIFACT]
    best = min(trials, key=lambda r: r.data.metrics["best_val_loss"])
    saved = Path(client.download_artifacts(best.info.run_id, T.WEIGHTS_ARTIFACT, str(workdir)))
    state = torch.load(io.BytesIO(saved.read_bytes()), weights_only=True)
    assert state["experts.biases.0"].shape[0] == 1 and all(v.device.type == "cpu" for v in state.values())

    upcycled = run_cli(
        workdir,
        "-m",
        "gate=topk",
        f"model.init_from={study.info.run_id}",
        "model.init_noise=0.01",
        "sweep.name=upcycled",
        "sweep.export=false",
        *STUDY_ARGS,
    )
    assert upcycled.returncode == 0, upcycled.stderr[-3000:]
    assert f"experts upcycled from trial-{int(best.data.tags[T.TRIAL_INDEX]):03d}" in upcycled.stdout
    (study,) = runs_of(client, "upcycled", T.STUDY)
    assert best.info.run_id in study.data.tags[T.INIT_FROM]
    trials = runs_of(client, "upcycled", T.TRIAL)
    assert [t.info.status for t in trials] == ["FINISHED", "FINISHED"]
    assert len({t.data.tags[T.INIT_DIGEST] for t in trials}) == 2  # fresh gates and noise per trial seed
    assert not any(T.WEIGHTS in t.data.tags for t in trials)  # saving is opt-in

    # the saved file works as a path too; a wrong model size is one line, before anything runs
    mismatch = run_cli(workdir, f"model.init_from={saved}", "model.expert_hidden=[16]", "sweep.name=m", *STUDY_ARGS)
    errors = [line for line in mismatch.stderr.splitlines() if line.startswith("error:")]
    assert mismatch.returncode == 2 and len(errors) == 1, mismatch.stderr[-2000:]
    assert "tensor experts.weights.0 is [40, 32] in the checkpoint but [40, 16]" in errors[0]
    assert client.get_experiment_by_name("m") is None


@pytest.mark.slow
def test_missing_run_id_is_one_line_exit_2_and_writes_nothing(workdir):
    proc = run_cli(workdir, "-m", "model.init_from=0123456789abcdef0123456789abcdef", "sweep.name=bad", *TINY)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr[-2000:]
    assert errors[0].startswith("error: model.init_from=0123456789abcdef0123456789abcdef: no checkpoint file")
    assert list((workdir / "mlruns").iterdir()) == []
    assert not (workdir / "sweeps" / "bad" / "ray").exists()
