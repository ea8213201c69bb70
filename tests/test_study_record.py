"""The MLflow study record: a resumed sweep reopens it (a complete study keeps its own end time), and a
trial's epochs, final metrics and tags all land, however many there are."""

from __future__ import annotations

import time

from moetune.contract import STOPPED_AT, EpochReport, FinalReport, Outcome
from moetune.tracking import tags as T
from moetune.tracking.mlflow_store import MlflowTracking


def _run_trials(record, numbers) -> None:
    for number in numbers:
        record.start_trial(number, {}, {}, f"t{number}")
        record.end_trial(number, Outcome.FINISHED, FinalReport({"best_val_loss": 0.1 * number}, {}))


def test_a_complete_study_reopened_by_a_resumed_sweep_keeps_its_end_time(tmp_path):
    tracking = MlflowTracking(
        f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "artifacts"), experiment="resumed"
    )
    config = "tuner:\n  n_trials: 2\n"
    record = tracking.open_study("topk-ls_on", {}, {}, config)
    _run_trials(record, [0, 1])
    record.close({"trials_finished": 2}, True)
    parent = tracking.client.get_run(record.parent_id)
    assert parent.info.status == "FINISHED"
    ended = parent.info.end_time

    time.sleep(0.05)
    again = tracking.open_study("topk-ls_on", {}, {}, config)  # a later driver with nothing left to run
    assert again.parent_id == record.parent_id and again.counts() == (2, 0)
    again.close({"trials_finished": 2}, True)
    parent = tracking.client.get_run(record.parent_id)
    assert (parent.info.status, parent.info.end_time) == ("FINISHED", ended)
    assert len(tracking.client.get_metric_history(record.parent_id, "trials_finished")) == 1

    time.sleep(0.05)
    grown = tracking.open_study("topk-ls_on", {}, {}, "tuner:\n  n_trials: 3\n")  # the budget raised: one more trial
    _run_trials(grown, [2])
    grown.close({"trials_finished": 3}, True)
    parent = tracking.client.get_run(record.parent_id)
    assert parent.info.status == "FINISHED" and parent.info.end_time > ended
    assert parent.data.metrics["trials_finished"] == 3


def test_every_epoch_and_final_metric_lands_with_the_outcome_tags_past_one_batch(tmp_path):
    """300 epochs x 4 metrics and the final metrics go in the end-of-trial write: more than MLflow's 1,000
    entities a batch, so it is split, and the tags still land."""
    tracking = MlflowTracking(
        f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "artifacts"), experiment="long"
    )
    record = tracking.open_study("topk-ls_off", {}, {}, "tuner:\n  n_trials: 2\n")
    names = ("train_loss", "val_loss", "val_click_auc", "val_rating_mse")
    for number, outcome in ((0, Outcome.PRUNED), (1, Outcome.FAILED)):
        record.start_trial(number, {}, {}, f"t{number}")
        for epoch in range(1, 301):
            record.log_epoch(number, EpochReport(epoch, {k: epoch + i / 10 for i, k in enumerate(names)}))
        final = FinalReport({"best_val_loss": 0.25, "test_loss": 0.3}, {STOPPED_AT: 300})
        record.end_trial(number, outcome, final if outcome is Outcome.PRUNED else None, "diverged at epoch 301")
    stopped, failed = (tracking.client.get_run(record.runs[n]) for n in (0, 1))
    for run in (stopped, failed):
        for i, name in enumerate(names):
            history = tracking.client.get_metric_history(run.info.run_id, name)
            assert sorted((m.step, m.value) for m in history) == [(e, e + i / 10) for e in range(1, 301)]
    assert stopped.data.metrics["best_val_loss"] == 0.25 and stopped.data.metrics["test_loss"] == 0.3
    assert (stopped.info.status, stopped.data.tags[T.OUTCOME], stopped.data.tags[T.STOPPED_AT]) == (
        "FINISHED",
        T.OUTCOME_STOPPED,
        "300",
    )
    assert (failed.info.status, failed.data.tags[T.OUTCOME]) == ("FAILED", T.OUTCOME_FAILED)
    assert failed.data.tags[T.ERROR] == "diverged at epoch 301"


def test_a_short_trials_epochs_go_in_the_same_write_as_its_end(tmp_path, monkeypatch):
    """Epochs are buffered from the trial's start (FLUSH_SECONDS): a trial shorter than that writes its epochs,
    final metrics and tags in one batch."""
    tracking = MlflowTracking(
        f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "artifacts"), experiment="short"
    )
    record = tracking.open_study("hash-ls_off", {}, {}, "tuner:\n  n_trials: 1\n")
    record.start_trial(0, {"train.lr": 0.01}, {}, "t0")
    batches = []
    log_batch = tracking.client.log_batch
    monkeypatch.setattr(tracking.client, "log_batch", lambda *a, **k: batches.append(k) or log_batch(*a, **k))
    for epoch in range(1, 13):
        record.log_epoch(0, EpochReport(epoch, {"val_loss": 1.0 / epoch}))
    record.end_trial(0, Outcome.FINISHED, FinalReport({"best_val_loss": 1 / 12}, {}))
    assert len(batches) == 1 and len(batches[0]["metrics"]) == 13 and batches[0]["tags"]
    history = tracking.client.get_metric_history(record.runs[0], "val_loss")
    assert sorted(m.step for m in history) == list(range(1, 13))
