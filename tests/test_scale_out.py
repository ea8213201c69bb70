"""Scale-out, end to end: a sweep on a two-node Ray cluster started with ``ray start``, logging as a signed-in
user to ``mlflow server`` with MLflow's authentication app, on PostgreSQL with password authentication,
with served artifacts; the worker node killed mid-sweep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest
from mlflow.tracking import MlflowClient
from services import RayCluster, mlflow_server, postgres, postgres_available

from moetune import contract
from moetune.tracking import tags as T

from conftest import REPO, run_cli

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not postgres_available(), reason="PostgreSQL 15 (postgresql-15) is not installed"),
]
N_TRIALS = 6


@pytest.fixture(scope="module")
def authenticated():
    with postgres() as database, mlflow_server(database) as server:
        yield server, server.add_user("sweeper")


@pytest.fixture(scope="module")
def server(authenticated) -> str:
    return authenticated[0].uri


@pytest.fixture(scope="module")
def cluster():
    ray_cluster = RayCluster(cpus_per_node=1).start()
    try:
        yield ray_cluster
    finally:
        ray_cluster.stop()


@pytest.fixture(autouse=True)
def token_auth(monkeypatch, authenticated):
    monkeypatch.setenv("RAY_AUTH_MODE", "token")  # the driver joins a cluster that `ray start --head` secured
    for name, value in authenticated[1].items():  # the driver, the export and this test sign in as one user
        monkeypatch.setenv(name, value)


def sweep_args(cluster: RayCluster, server: str, name: str, epochs: int = 3) -> list[str]:
    return [
        "-m",
        "gate=topk,hash",
        f"tuner.n_trials={N_TRIALS}",
        "dataset.n_samples=600",
        f"train.max_epochs={epochs}",
        f"train.patience={epochs}",
        "tuner.concurrency=4",  # four trials at once on the two 1-CPU nodes: concurrent logging
        "tuner.cpus_per_trial=0.5",
        f"tuner.ray_address={cluster.address}",
        f"tracking.uri={server}",
        f"sweep.name={name}",
    ]


def trials_of(server: str, name: str):
    client = MlflowClient(server)
    exp = client.get_experiment_by_name(name)
    return client, client.search_runs([exp.experiment_id], f"tags.`{T.ROLE}` = '{T.TRIAL}'", max_results=1000)


def test_sweep_on_two_nodes_records_every_trial_and_metric_through_the_server(workdir, server, cluster):
    proc = run_cli(workdir, *sweep_args(cluster, server, "scale"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "View run" not in proc.stdout  # MLflow's per-run URL lines are replaced by one browse line
    assert f"browse: {server}/#/experiments/" in proc.stdout
    client, trials = trials_of(server, "scale")
    assert len(trials) == 2 * N_TRIALS and all(t.info.status == "FINISHED" for t in trials)
    placement = Counter(t.data.tags[T.NODE] for t in trials)
    print(f"trials per node: {sorted(placement.values())}")
    assert len(placement) == 2, f"trials ran on one node only: {placement}"
    logged = 0
    for trial in trials:  # per-epoch metrics from concurrent trials: none lost
        history = client.get_metric_history(trial.info.run_id, contract.VAL_LOSS)
        assert sorted(h.step for h in history) == [1, 2, 3]  # patience = max_epochs: every epoch runs
        logged += len(history)
        assert "diagnostics.json" in [a.path for a in client.list_artifacts(trial.info.run_id)]
    print(f"val_loss points read back through the server: {logged}")
    out = workdir / "exported"
    export = subprocess.run(
        [
            sys.executable,
            "-m",
            "moetune.cli.main",
            "export",
            "--experiment",
            "scale",
            "--tracking-uri",
            server,
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=workdir,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    assert (out / "summary.md").is_file() and (out / "curves.csv").is_file()


def test_worker_node_killed_mid_sweep_loses_no_trial(workdir, server, cluster):
    (workdir / "mlruns").mkdir(exist_ok=True)
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *sweep_args(cluster, server, "node-lost", epochs=30)],
        cwd=workdir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            if sum(t.info.status == "FINISHED" for t in trials_of(server, "node-lost")[1]) >= 2:
                break
        except Exception:
            pass
        time.sleep(0.5)
    os.kill(cluster.worker_raylet_pid(), signal.SIGKILL)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    _, trials = trials_of(server, "node-lost")
    statuses = Counter(t.info.status for t in trials)
    print(f"after the worker node died: {dict(statuses)}")
    assert len(trials) == 2 * N_TRIALS
    assert set(statuses) <= {"FINISHED", "FAILED"}
