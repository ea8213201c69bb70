"""End to end through the real command line: Hydra multirun -> Ray Tune + Optuna -> MLflow (sqlite)."""

from __future__ import annotations

import csv
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from moetune import contract
from moetune.config import trial_seed
from moetune.data import load_dataset
from moetune.tracking import tags as T
from moetune.training import Trainer
from moetune.tuning.hydra_config import load_study

from conftest import REPO, TINY, run_cli

pytestmark = pytest.mark.slow


def client_for(workdir) -> MlflowClient:
    return MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")


def runs_of(client: MlflowClient, experiment: str, role: str, deleted: bool = False):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment} missing"
    view = 3 if deleted else 1  # ALL or ACTIVE_ONLY
    return client.search_runs([exp.experiment_id], f"tags.`{T.ROLE}` = '{role}'", run_view_type=view, max_results=1000)


def sweep_experiments(client: MlflowClient) -> list:
    return [e for e in client.search_experiments() if e.name != "Default"]


def test_main_command_without_sweep_name_is_one_experiment_with_its_export(workdir):
    """The README's main command with no sweep.name (only tiny sizes): one experiment, four studies, the
    export and the answer printed; trials start from different initial weights, each one reproducible;
    no Ray process outlives the command (Ray is stopped before the export), and its store is whole in mlflow.db."""
    ray_dir = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # short: Ray's socket paths live under it
    proc = run_cli(
        workdir,
        "-m",
        "gate=topk,hash",
        "local_search=on,off",
        "tuner.n_trials=3",
        "search_space.local_search.e_perm.high=2",
        *TINY,
        env={"RAY_TMPDIR": ray_dir},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    # the command ends without the interpreter's teardown, yet its store is closed: the write-ahead log is
    # folded into mlflow.db and gone (before anything here opens the store)
    assert sorted(p.name for p in (workdir / "mlruns").glob("mlflow.db*")) == ["mlflow.db"]
    left = subprocess.run(["pgrep", "-af", ray_dir], capture_output=True, text=True).stdout
    assert Path(ray_dir, "ray").is_dir() and not left, left  # it ran there, and nothing of it is left
    shutil.rmtree(ray_dir, ignore_errors=True)
    client = client_for(workdir)
    experiments = sweep_experiments(client)
    assert len(experiments) == 1, [e.name for e in experiments]
    sweep = experiments[0].name
    assert experiments[0].tags[T.EXPERIMENT_KIND] == T.MODEL_TRAINING  # the UI opens on the runs
    # the driver's loop writes no per-result files of Tune's own (the record is the store) ...
    assert not [p.name for p in (workdir / "sweeps").rglob("*") if p.name in ("progress.csv", "result.json")]
    # ... and commits to a sqlite store without an fsync each (write-ahead log, synchronous=NORMAL)
    with sqlite3.connect(workdir / "mlruns" / "mlflow.db") as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    studies = runs_of(client, sweep, T.STUDY)
    trials = runs_of(client, sweep, T.TRIAL)
    assert len(studies) == 4 and len(trials) == 12
    combos = {(r.data.tags[T.GATE], r.data.tags[T.LOCAL_SEARCH]) for r in studies}
    assert combos == {("topk", "on"), ("topk", "off"), ("hash", "on"), ("hash", "off")}
    for study in studies:
        tags = study.data.tags
        assert study.info.status == "FINISHED"
        assert tags[T.DATASET] == "synthetic" and tags[T.SAMPLER] == "random" and tags[T.SEED] == "0"
        assert tags[T.TASK_WEIGHTS] == "equal" and tags[T.SWEEP] == sweep
        assert tags[T.VERSION] and tags[T.GIT_COMMIT]
        assert "space.train.lr" in study.data.params
        assert ("space.local_search.e_perm" in study.data.params) == (tags[T.LOCAL_SEARCH] == "on")
        assert study.data.metrics["trials_finished"] == 3 and study.data.metrics["trials_failed"] == 0
        assert "config.yaml" in [a.path for a in client.list_artifacts(study.info.run_id)]
        children = [t for t in trials if t.data.tags["mlflow.parentRunId"] == study.info.run_id]
        assert sorted(int(t.data.tags[T.TRIAL_INDEX]) for t in children) == [0, 1, 2]
        assert len({t.data.params["train.seed"] for t in children}) == 3
        assert len({t.data.tags["init_digest"] for t in children}) == 3, "trials share an initialization"
        for trial in children:
            assert trial.info.status == "FINISHED"
            assert "train.lr" in trial.data.params
            assert ("local_search.e_perm" in trial.data.params) == (tags[T.LOCAL_SEARCH] == "on")
            m = trial.data.metrics
            for key in (
                "best_val_loss",
                "test_loss",
                "test_click_auc",
                "test_rating_mse",
                "best_val_click_auc",
                contract.WALL_SECONDS,
                contract.CPU_SECONDS,
                contract.TRAIN_SAMPLES_PER_SECOND,
                contract.ACTIVE_EXPERTS,
            ):
                assert key in m, key
            assert m[contract.ACTIVE_EXPERTS] == pytest.approx(1.0 if tags[T.GATE] == "hash" else 2.0)
            history = client.get_metric_history(trial.info.run_id, contract.VAL_LOSS)
            assert [h.step for h in sorted(history, key=lambda h: h.step)] == list(range(1, len(history) + 1))
            assert len(history) >= 1 and min(h.value for h in history) == pytest.approx(m["best_val_loss"], rel=1e-5)
            assert ("permutation" in trial.data.tags) == (tags[T.LOCAL_SEARCH] == "on")
            assert "diagnostics.json" in [a.path for a in client.list_artifacts(trial.info.run_id)]
    # a trial re-run from the study's logged config and its logged parameters reproduces its metrics exactly
    study = next(s for s in studies if s.data.tags[T.LOCAL_SEARCH] == "on" and s.data.tags[T.GATE] == "topk")
    trial = next(t for t in trials if t.data.tags["mlflow.parentRunId"] == study.info.run_id)
    config = yaml.safe_load(Path(client.download_artifacts(study.info.run_id, "config.yaml", str(workdir))).read_text())
    sampled = {k: yaml.safe_load(v) for k, v in trial.data.params.items()}
    study_config = load_study(OmegaConf.create(config)).config
    trial_config = study_config.for_trial(sampled)
    threads = torch.get_num_threads()
    torch.set_num_threads(int(study_config.tuner.cpus_per_trial))  # as the trial ran: same float summation order
    try:
        c = trial_config
        rerun = Trainer(load_dataset(**c.dataset), c.model, c.gate, c.local_search, c.train).fit()
    finally:
        torch.set_num_threads(threads)
    assert rerun.diagnostics["init_digest"] == trial.data.tags["init_digest"]
    for key, value in rerun.test.items():
        assert trial.data.metrics[key] == value, key
    # the export: every file, the answer first in summary.md and printed per gate, one export run
    export = workdir / "sweeps" / sweep / "export"
    for name in ("curves.csv", "reductions.csv", "top_trials.csv", "summary.md", "budget_curves.html"):
        assert (export / name).is_file(), name
    with open(export / "reductions.csv") as f:
        assert {(r["gate"], r["arm"]) for r in csv.DictReader(f)} == {("topk", "on"), ("hash", "on")}
    assert (export / "summary.md").read_text().splitlines()[2].startswith("**Answer.** With permutation local search, ")
    out = proc.stdout
    assert f"export: {export.resolve()}" in out
    answers = [line for line in out.splitlines() if line.startswith(("  Top-k (synthetic): ", "  Hash (synthetic): "))]
    assert len(answers) == 2, out[-2000:]
    for line in answers:  # the factor (or "no detectable difference") and, beside it, the paired difference
        assert " to reach test_loss " in line and "; paired on − off test_loss: mean " in line, line
    assert len(runs_of(client, sweep, "export")) == 1
    assert (
        f"then open http://127.0.0.1:5000/#/experiments/{experiments[0].experiment_id}/runs?"
        "workflowType=machine_learning"
    ) in out  # opens on the training runs, not the GenAI overview


def test_task_weights_sweep_and_warmup_arm(workdir):
    """Task weights are swept as study settings, never mixed inside a study; the warm-up arm runs and exports."""
    proc = run_cli(
        workdir,
        "-m",
        "gate=topk",
        "local_search=off,warmup",
        "train.task_weights=[0.1,0.9],[0.9,0.1]",
        "tuner.n_trials=3",
        "search_space.local_search.e_perm.high=2",
        "sweep.name=tw",
        *TINY,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = client_for(workdir)
    studies = runs_of(client, "tw", T.STUDY)
    assert sorted((s.data.tags[T.LOCAL_SEARCH], s.data.tags[T.TASK_WEIGHTS]) for s in studies) == [
        ("off", "0.1_0.9"),
        ("off", "0.9_0.1"),
        ("warmup", "0.1_0.9"),
        ("warmup", "0.9_0.1"),
    ]
    for study in studies:
        weights = [float(w) for w in study.data.tags[T.TASK_WEIGHTS].split("_")]
        assert study.data.tags[T.STUDY_KEY].endswith(f"-tw{study.data.tags[T.TASK_WEIGHTS]}-seed0")
        children = [t for t in runs_of(client, "tw", T.TRIAL) if t.data.tags["mlflow.parentRunId"] == study.info.run_id]
        assert len(children) == 3
        for trial in children:
            assert "train.task_weights" not in trial.data.params
            assert trial.data.tags[T.TASK_WEIGHTS] == study.data.tags[T.TASK_WEIGHTS]
        config = yaml.safe_load(
            Path(client.download_artifacts(study.info.run_id, "config.yaml", str(workdir))).read_text()
        )
        assert config["train"]["task_weights"] == weights
        assert (study.data.tags[T.LOCAL_SEARCH] == "warmup") == ("space.local_search.e_perm" in study.data.params)
    export = workdir / "sweeps" / "tw" / "export"
    with open(export / "reductions.csv") as f:
        rows = list(csv.DictReader(f))
    assert {(r["arm"], r["task_weights"]) for r in rows} == {("warmup", "0.1_0.9"), ("warmup", "0.9_0.1")}
    with open(export / "curves.csv") as f:
        assert len({(r["local_search"], r["task_weights"]) for r in csv.DictReader(f)}) == 4  # not pooled
    summary = (export / "summary.md").read_text()
    assert "### Top-k — synthetic, task weights 0.1, 0.9" in summary and "uniform warm-up (dense start)" in summary


def test_an_export_that_cannot_run_says_why_and_how_to_run_it(workdir):
    proc = run_cli(workdir, "-m", "gate=topk", "tuner.n_trials=1", "sweep.name=short", *TINY)
    assert proc.returncode == 1, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        "error: export failed: study 'topk-ls_off-synthetic-seed0' has 1 finished trial(s) with "
        "best_val_loss out of 1; a curve needs at least 2"
    ]
    assert (
        "moetune export --experiment short --tracking-uri sqlite:///mlruns/mlflow.db --out sweeps/short/export"
        in proc.stderr
    )
    assert not (workdir / "sweeps" / "short" / "export").exists()


def test_interrupted_sweep_resumes_without_duplicates(workdir):
    args = [
        "tuner.n_trials=5",
        "train.max_epochs=40",
        "train.patience=40",
        "dataset.n_samples=1500",
        "sweep.name=resume",
    ]
    (workdir / "mlruns").mkdir()
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    client = client_for(workdir)
    deadline = time.time() + 300
    finished_before: set[str] = set()
    while time.time() < deadline and proc.poll() is None:
        try:
            finished_before = {
                r.data.tags[T.TRIAL_INDEX] for r in runs_of(client, "resume", T.TRIAL) if r.info.status == "FINISHED"
            }
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
    after_interrupt = runs_of(client, "resume", T.TRIAL)
    assert not [r for r in after_interrupt if r.info.status == "RUNNING"], "runs left RUNNING after Ctrl-C"
    assert runs_of(client, "resume", T.STUDY)[0].info.status == "KILLED"
    finished_before = {
        r.data.tags[T.TRIAL_INDEX]: r.info.run_id for r in after_interrupt if r.info.status == "FINISHED"
    }
    assert 1 <= len(finished_before) < 5

    proc = run_cli(workdir, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = runs_of(client, "resume", T.TRIAL)
    assert len(trials) == 5 and all(r.info.status == "FINISHED" for r in trials)
    assert sorted(int(r.data.tags[T.TRIAL_INDEX]) for r in trials) == list(range(5))
    # the resumed searcher goes on numbering trials: five trials, five seeds, none drawn twice
    assert {int(r.data.params["train.seed"]) for r in trials} == {trial_seed(0, n) for n in range(5)}
    by_number = {r.data.tags[T.TRIAL_INDEX]: r.info.run_id for r in trials}
    for number, run_id in finished_before.items():
        assert by_number[number] == run_id, "a finished trial was re-run"
    study = runs_of(client, "resume", T.STUDY)
    assert len(study) == 1 and study[0].info.status == "FINISHED"
    assert study[0].data.metrics["trials_finished"] == 5


def test_failed_trial_is_recorded_and_the_study_finishes(workdir):
    proc = run_cli(
        workdir,
        "tuner.n_trials=6",
        "~search_space.train.lr",
        "+search_space.train.lr={type:categorical,choices:[0.003,1.0e9]}",
        "sweep.name=fails",
        *TINY,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = client_for(workdir)
    trials = runs_of(client, "fails", T.TRIAL)
    assert len(trials) == 6
    failed = [t for t in trials if t.info.status == "FAILED"]
    finished = [t for t in trials if t.info.status == "FINISHED"]
    assert failed and finished, "the seeded sampler should draw both learning rates"
    for t in failed:
        assert float(t.data.params["train.lr"]) == 1e9
        assert "diverged at epoch 1" in t.data.tags[T.ERROR]
    for t in finished:
        assert float(t.data.params["train.lr"]) == 0.003
    study = runs_of(client, "fails", T.STUDY)[0]
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
    (["sampler._target_=optuna.samplers.NoSuchSampler"], "sampler: "),
    (["sampler._target_=collections.OrderedDict"], "is not an Optuna sampler"),
    (["gate=expert_choice", "gate.params.capacity_factor=0"], "gate.params.capacity_factor must be positive"),
    (["gate=xmoe", "gate.params.temperature=-1"], "gate.params.temperature must be positive"),
    (["tuner.metric=val_nonsense"], "tuner.metric must be val_loss or val_<task>_<"),
    (["tracking._target_=collections.OrderedDict"], "is not a moetune.tracking.Tracking"),
]


@pytest.mark.parametrize("args,message", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_clear_line_and_writes_nothing(workdir, args, message):
    proc = run_cli(workdir, "sweep.name=bad", *args)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], proc.stderr[-2000:]
    assert list((workdir / "mlruns").iterdir()) == []


@pytest.mark.parametrize(
    "override,listing",
    [
        ("gate=nope", "Available options in 'gate'"),
        ("dataset=nope", "Available options in 'dataset'"),
        ("sampler=nope", "Available options in 'sampler'"),
    ],
)
def test_unknown_choice_gets_hydras_listing(workdir, override, listing):
    proc = run_cli(workdir, override)
    assert proc.returncode != 0
    assert listing in proc.stderr
    assert list((workdir / "mlruns").iterdir()) == []


def test_frozen_control_arm_through_the_command_line_writes_the_paired_view(workdir):
    """gate=topk local_search=on,off,frozen: the arms share each trial's sampled values and seed, the frozen
    arm's permutation never moves, and the export carries trials.csv, paired.csv, importance and the phase."""
    proc = run_cli(
        workdir,
        "-m",
        "gate=topk",
        "local_search=on,off,frozen",
        "tuner.n_trials=5",
        "search_space.local_search.e_perm.high=2",
        "sweep.name=arms",
        *TINY,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    export = workdir / "sweeps" / "arms" / "export"
    with open(export / "trials.csv") as f:
        trials = list(csv.DictReader(f))
    assert len(trials) == 15
    for column in (
        "study",
        "trial",
        "seed",
        "init_digest",
        "train.lr",
        "e_perm",
        "perm_steps",
        "best_epoch",
        "epochs_run",
        "status",
        "best_val_loss",
        "test_loss",
        "wall_seconds",
        "perm_shift",
        "perm_reassigned",
        "perm_effective_experts_start",
        "perm_effective_experts_end",
    ):
        assert column in trials[0], column
    by_arm = {arm: {int(t["trial"]): t for t in trials if t["local_search"] == arm} for arm in ("on", "off", "frozen")}
    for n in range(5):  # paired: the same lr and seed in every arm; on and frozen share E_perm and init
        assert len({by_arm[a][n]["train.lr"] for a in by_arm}) == 1 and len({by_arm[a][n]["seed"] for a in by_arm}) == 1
        assert by_arm["on"][n]["init_digest"] == by_arm["frozen"][n]["init_digest"]
        assert float(by_arm["frozen"][n]["perm_shift"]) == 0.0 and float(by_arm["frozen"][n]["perm_reassigned"]) == 0
        assert float(by_arm["on"][n]["perm_steps"]) > 0 and by_arm["off"][n]["perm_steps"] == ""
    with open(export / "paired.csv") as f:
        comparisons = {(r["arm"], r["base"]) for r in csv.DictReader(f) if r["metric"] == "test_loss"}
    assert comparisons == {("on", "off"), ("frozen", "off"), ("on", "frozen")}
    with open(export / "importance.csv") as f:
        assert {r["local_search"] for r in csv.DictReader(f)} >= {"on", "frozen"}
    assert (export / "paired_test_loss.png").exists()
    summary = (export / "summary.md").read_text()
    assert "learning the permutation" in summary and "perm_shift" in summary
