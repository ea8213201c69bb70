"""End to end through the real command line: Hydra multirun -> Ray Tune + Optuna -> MLflow (sqlite)."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import REPO, TINY, run_cli
from moetune import schema

pytestmark = pytest.mark.slow


def client_for(workdir) -> MlflowClient:
    return MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")


def runs_of(client: MlflowClient, experiment: str, role: str, deleted: bool = False):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment} missing"
    view = 3 if deleted else 1  # ALL or ACTIVE_ONLY
    return client.search_runs([exp.experiment_id], f"tags.`{schema.ROLE}` = '{role}'", run_view_type=view, max_results=1000)


def test_multirun_logs_studies_and_trials(workdir):
    proc = run_cli(workdir, "-m", "gate=topk,hash", "local_search=on,off", "tuner.n_trials=3",
                   "local_search.e_perm=1", "search_space.local_search.e_perm.high=2", "sweep.name=tiny", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = client_for(workdir)
    studies = runs_of(client, "tiny", schema.STUDY)
    trials = runs_of(client, "tiny", schema.TRIAL)
    assert len(studies) == 4 and len(trials) == 12
    combos = {(r.data.tags[schema.GATE], r.data.tags[schema.LOCAL_SEARCH]) for r in studies}
    assert combos == {("topk", "on"), ("topk", "off"), ("hash", "on"), ("hash", "off")}
    for study in studies:
        tags = study.data.tags
        assert study.info.status == "FINISHED"
        assert tags[schema.DATASET] == "synthetic" and tags[schema.SAMPLER] == "random" and tags[schema.SEED] == "0"
        assert tags[schema.VERSION] and tags[schema.GIT_COMMIT]
        assert "space.train.lr" in study.data.params
        assert ("space.local_search.e_perm" in study.data.params) == (tags[schema.LOCAL_SEARCH] == "on")
        assert study.data.metrics["trials_finished"] == 3 and study.data.metrics["trials_failed"] == 0
        assert "config.yaml" in [a.path for a in client.list_artifacts(study.info.run_id)]
        children = [t for t in trials if t.data.tags["mlflow.parentRunId"] == study.info.run_id]
        assert sorted(int(t.data.tags[schema.TRIAL_INDEX]) for t in children) == [0, 1, 2]
        for trial in children:
            assert trial.info.status == "FINISHED"
            assert "train.lr" in trial.data.params
            assert ("local_search.e_perm" in trial.data.params) == (tags[schema.LOCAL_SEARCH] == "on")
            m = trial.data.metrics
            for key in ("best_val_loss", "test_loss", "test_click_auc", "test_rating_mse", "best_val_click_auc",
                        schema.WALL_SECONDS, schema.CPU_SECONDS, schema.ACTIVE_EXPERTS):
                assert key in m, key
            assert m[schema.ACTIVE_EXPERTS] == pytest.approx(1.0 if tags[schema.GATE] == "hash" else 2.0)
            history = client.get_metric_history(trial.info.run_id, schema.VAL_LOSS)
            assert [h.step for h in sorted(history, key=lambda h: h.step)] == list(range(1, len(history) + 1))
            assert len(history) >= 1 and min(h.value for h in history) == pytest.approx(m["best_val_loss"], rel=1e-5)
            assert ("permutation" in trial.data.tags) == (tags[schema.LOCAL_SEARCH] == "on")
            assert "diagnostics.json" in [a.path for a in client.list_artifacts(trial.info.run_id)]
    export = workdir / "sweeps" / "tiny" / "export"
    assert (export / "curves.csv").exists() and (export / "summary.md").exists()


def test_interrupted_sweep_resumes_without_duplicates(workdir):
    args = ["tuner.n_trials=5", "train.max_epochs=40", "train.patience=40", "dataset.n_samples=1500", "sweep.name=resume"]
    (workdir / "mlruns").mkdir()
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), *args], cwd=workdir,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    client = client_for(workdir)
    deadline = time.time() + 300
    finished_before: set[str] = set()
    while time.time() < deadline and proc.poll() is None:
        try:
            finished_before = {r.data.tags[schema.TRIAL_ID] for r in runs_of(client, "resume", schema.TRIAL)
                               if r.info.status == "FINISHED"}
        except (AssertionError, Exception):
            finished_before = set()
        if finished_before:
            break
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=300)
    if proc.returncode == 0:
        pytest.fail("the study finished before it could be interrupted; make the trials longer:\n" + out[-2000:])
    assert proc.returncode == 130, out[-3000:]
    assert "sweep.name=resume" in out
    after_interrupt = runs_of(client, "resume", schema.TRIAL)
    assert not [r for r in after_interrupt if r.info.status == "RUNNING"], "runs left RUNNING after Ctrl-C"
    assert runs_of(client, "resume", schema.STUDY)[0].info.status == "KILLED"
    finished_before = {r.data.tags[schema.TRIAL_ID]: r.info.run_id for r in after_interrupt if r.info.status == "FINISHED"}
    assert 1 <= len(finished_before) < 5

    proc = run_cli(workdir, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = runs_of(client, "resume", schema.TRIAL)
    assert len(trials) == 5 and all(r.info.status == "FINISHED" for r in trials)
    assert sorted(int(r.data.tags[schema.TRIAL_INDEX]) for r in trials) == list(range(5))
    by_trial = {r.data.tags[schema.TRIAL_ID]: r.info.run_id for r in trials}
    for trial_id, run_id in finished_before.items():
        assert by_trial[trial_id] == run_id, "a finished trial was re-run"
    study = runs_of(client, "resume", schema.STUDY)
    assert len(study) == 1 and study[0].info.status == "FINISHED"
    assert study[0].data.metrics["trials_finished"] == 5


def test_failed_trial_is_recorded_and_the_study_finishes(workdir):
    proc = run_cli(workdir, "tuner.n_trials=6", "~search_space.train.lr",
                   "+search_space.train.lr={type:categorical,choices:[0.003,1.0e9]}", "sweep.name=fails", *TINY)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = client_for(workdir)
    trials = runs_of(client, "fails", schema.TRIAL)
    assert len(trials) == 6
    failed = [t for t in trials if t.info.status == "FAILED"]
    finished = [t for t in trials if t.info.status == "FINISHED"]
    assert failed and finished, "the seeded sampler should draw both learning rates"
    for t in failed:
        assert float(t.data.params["train.lr"]) == 1e9
        assert "diverged at epoch 1" in t.data.tags[schema.ERROR]
    for t in finished:
        assert float(t.data.params["train.lr"]) == 0.003
    study = runs_of(client, "fails", schema.STUDY)[0]
    assert study.info.status == "FINISHED"
    assert study.data.metrics["trials_failed"] == len(failed)
    assert study.data.metrics["trials_finished"] == len(finished)
    assert "FAILED: moetune.errors.TrainingDivergedError: training diverged" in proc.stdout + proc.stderr


BAD_INPUTS = [
    (["tuner.n_trials=0"], "tuner.n_trials must be at least 1"),
    (["search_space.train.lr.low=0.1", "search_space.train.lr.high=0.01"], "empty or inverted range"),
    (["tuner.concurrency=64"], "lower tuner.concurrency"),
    (["tracking.uri=sqlite:///no/such/folder/mlflow.db"], "does not exist"),
    (["tracking.uri=http://127.0.0.1:9"], "unreachable"),
    (["tuner.ray_address=127.0.0.1:9"], "tuner.ray_address"),
    (["gate.k=20"], "gate.k must be between 1 and model.n_experts"),
    (["train.lr=abc"], "train.lr"),
    (["local_search=on", "local_search.e_perm=50"], "exceeds train.max_epochs"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_line_and_writes_nothing(workdir, args, message):
    proc = run_cli(workdir, "sweep.name=bad", *args)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert list((workdir / "mlruns").iterdir()) == []


@pytest.mark.parametrize("override,listing", [("gate=nope", "Available options in 'gate'"),
                                              ("dataset=nope", "Available options in 'dataset'")])
def test_unknown_choice_gets_hydras_listing(workdir, override, listing):
    proc = run_cli(workdir, override)
    assert proc.returncode != 0
    assert listing in proc.stderr
    assert list((workdir / "mlruns").iterdir()) == []
