"""The MLflow study record as a resumed sweep reopens it: a complete study keeps its own end time."""

from __future__ import annotations

import time

from moetune.contract import FinalReport, Outcome
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
