"""Short studies on real data through the real command line: MovieLens (COMET layout) and MultiDigits."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from moetune import contract
from moetune.tracking import tags as T

from conftest import SHARED, run_cli

pytestmark = pytest.mark.slow
MOVIELENS = SHARED / "data" / "movielens-comet"


def trial_runs(workdir, experiment):
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name(experiment)
    return client.search_runs([exp.experiment_id], f"tags.`{T.ROLE}` = '{T.TRIAL}'")


def test_movielens_study_with_hash_routing_by_user(workdir):
    if not MOVIELENS.is_dir():
        pytest.skip(f"{MOVIELENS} is absent: these tests read the shared MovieLens split beside the checkout")
    proc = run_cli(
        workdir,
        "experiment=movielens_cpu",
        "gate=hash",
        "local_search=on",
        "local_search.e_perm=1",
        "search_space.local_search.e_perm.high=2",
        f"dataset.path={MOVIELENS}",
        "search_space.train.lr.low=0.01",
        "search_space.train.lr.high=0.02",
        "train.max_epochs=5",
        "tuner.n_trials=2",
        "sweep.name=ml",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = trial_runs(workdir, "ml")
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)
    for t in trials:
        assert t.data.tags[T.DATASET] == "movielens"
        assert 0.5 < t.data.metrics["test_watch_auc"] <= 1.0
        assert t.data.metrics["test_rating_mse"] > 0
        assert t.data.metrics[contract.ACTIVE_EXPERTS] == 1.0
        assert "permutation" in t.data.tags


def test_multidigits_study_with_cnn_experts(workdir):
    proc = run_cli(
        workdir,
        "experiment=multidigits",
        "gate=topk",
        "dataset.n_train=600",
        "dataset.n_val=200",
        "dataset.n_test=200",
        "train.max_epochs=2",
        "tuner.n_trials=2",
        "sweep.name=md",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = trial_runs(workdir, "md")
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)
    for t in trials:
        assert t.data.tags[T.DATASET] == "multidigits"
        for task in ("top_left", "bottom_right"):
            assert 0.0 <= t.data.metrics[f"test_{task}_accuracy"] <= 1.0
        assert t.data.metrics[contract.ACTIVE_EXPERTS] == 2.0


def test_hash_gate_on_images_is_a_clear_error(workdir):
    proc = run_cli(workdir, "experiment=multidigits", "gate=hash", "sweep.name=bad")
    assert proc.returncode == 2
    assert "hash gate needs routing ids" in proc.stderr
    assert list((workdir / "mlruns").iterdir()) == []
