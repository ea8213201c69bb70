"""One study's record in MLflow: its parent run and one child run per trial, keyed by trial number.
The record is the study's ledger: a resumed sweep reads which numbers ended and closes the cut-off ones."""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.tracking import MlflowClient

import moetune
from moetune import contract
from moetune.contract import EpochReport, FinalReport, Outcome
from moetune.tracking import tags as T
from moetune.tracking.base import LedgerEntry, StudyRecord
from moetune.tracking.mlflow_runs import BATCH, DONE, UNFINISHED, clean, git_commit, search

FLUSH_SECONDS = 5.0  # per-epoch metrics are buffered and written at most this often per trial


class MlflowStudyRecord(StudyRecord):
    """The parent run of one study and its trial children, keyed by trial number."""

    def __init__(self, client: MlflowClient, experiment_id: str, study_key: str, tags: dict[str, str]) -> None:
        self.client, self.experiment_id, self.study_key, self.tags = client, experiment_id, study_key, tags
        parents = self._search(f"tags.`{T.ROLE}` = '{T.STUDY}' and tags.`{T.STUDY_KEY}` = '{study_key}'")
        # a study already FINISHED keeps its end time unless a trial runs again (a resumed sweep reopens every
        # study; its complete ones would otherwise seem to have lasted until the new driver ended)
        self._finished_at: int | None = None
        if parents:
            self.parent_id = parents[0].info.run_id
            if parents[0].info.status == "FINISHED":
                self._finished_at = parents[0].info.end_time
            self.client.update_run(self.parent_id, status="RUNNING")
        else:
            all_tags = {
                T.ROLE: T.STUDY,
                T.STUDY_KEY: study_key,
                T.VERSION: moetune.__version__,
                T.GIT_COMMIT: git_commit(),
                **tags,
            }
            self.parent_id = self.client.create_run(experiment_id, tags=all_tags, run_name=study_key).info.run_id
        self.runs: dict[int, str] = {}  # trial number -> run id
        self.status: dict[int, str] = {}
        self._ledger: list[LedgerEntry] = []
        for run in self._search(f"tags.`{T.PARENT_RUN_ID}` = '{self.parent_id}'"):
            if T.TRIAL_INDEX not in run.data.tags:
                continue  # not a trial of this study
            number = int(run.data.tags[T.TRIAL_INDEX])
            if run.info.status not in DONE or number in self.status:
                # an attempt a killed or interrupted driver cut off (or a duplicate of an older version):
                # it does not count, and the number is run again
                self.client.delete_run(run.info.run_id)
                continue
            self.runs[number], self.status[number] = run.info.run_id, run.info.status
            sampled = json.loads(run.data.tags.get(T.SAMPLED, "{}"))
            stopped = run.data.tags.get(T.OUTCOME) == T.OUTCOME_STOPPED
            self._ledger.append(LedgerEntry(number, run.info.status, sampled, dict(run.data.metrics), stopped))
        self._ledger.sort(key=lambda e: e.number)
        self.pending: dict[int, list[Metric]] = {}
        self.last_flush: dict[int, float] = {}

    def _search(self, filter_string: str) -> list[Run]:
        return search(self.client, self.experiment_id, filter_string)

    def log_study(self, search_space: dict[str, str], config_yaml: str) -> None:
        params = [Param(f"space.{k}", clean(v)) for k, v in sorted(search_space.items())]
        existing = self.client.get_run(self.parent_id).data.params
        params = [p for p in params if p.key not in existing]
        if params:
            self.client.log_batch(self.parent_id, params=params)
        self.client.log_text(self.parent_id, config_yaml, "config.yaml")

    def ledger(self) -> list[LedgerEntry]:
        return list(self._ledger)

    def ledger_epochs(self, metric: str) -> list[LedgerEntry]:
        """The ledger with each trial's per-epoch ``metric`` (logged by ``log_epoch``, step = epoch): one
        metric-history query per recorded trial (MLflow's client has no query across runs)."""
        for entry in self._ledger:
            history = self.client.get_metric_history(self.runs[entry.number], metric)
            entry.epochs = {int(m.step): float(m.value) for m in history if m.step >= 1}
        return list(self._ledger)

    def _open(self, number: int) -> bool:
        return number in self.runs and self.status.get(number) not in DONE

    def start_trial(self, number: int, params: dict, sampled: dict, tuner_trial_id: str) -> None:
        if number in self.runs:
            raise RuntimeError(f"trial {number} of study {self.study_key} is already recorded")
        tags = {
            T.ROLE: T.TRIAL,
            T.PARENT_RUN_ID: self.parent_id,
            T.TRIAL_ID: tuner_trial_id,
            T.TRIAL_INDEX: str(number),
            T.STUDY_KEY: self.study_key,
            T.SAMPLED: json.dumps(sampled),
            **self.tags,
        }
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=f"trial-{number:03d}")
        self.runs[number], self.status[number] = run.info.run_id, "RUNNING"
        self.last_flush[number] = time.time()  # its first epochs wait for the next flush, or go with its end
        self._finished_at = None
        self.client.log_batch(run.info.run_id, params=[Param(k, clean(v)) for k, v in sorted(params.items())])

    def log_epoch(self, number: int, report: EpochReport) -> None:
        """Buffer a trial's per-epoch metrics; written every FLUSH_SECONDS and when the trial ends, since
        one store write per epoch costs the driver CPU that the trials on the same machine need."""
        if not self._open(number):
            return
        now = time.time()
        self.pending.setdefault(number, []).extend(
            Metric(k, float(v), int(now * 1000), report.epoch) for k, v in report.metrics.items()
        )
        if now - self.last_flush.get(number, 0.0) >= FLUSH_SECONDS:
            self._flush(number)

    def _flush(self, number: int) -> None:
        self.last_flush[number] = time.time()
        self._log_batch(self.runs[number], self.pending.pop(number, []))

    def _log_batch(self, run_id: str, metrics: list[Metric], tags: list[RunTag] | None = None) -> None:
        """Metrics and tags in as few writes as MLflow's limit of entities per batch allows."""
        tags = tags or []
        first = BATCH - len(tags)
        if metrics or tags:
            self.client.log_batch(run_id, metrics=metrics[:first], tags=tags)
        for start in range(first, len(metrics), BATCH):
            self.client.log_batch(run_id, metrics=metrics[start : start + BATCH])

    def end_trial(
        self, number: int, outcome: Outcome, final: FinalReport | None = None, error: str | None = None
    ) -> None:
        """FINISHED and PRUNED: final metrics, permutation and init tags, diagnostics.json; a PRUNED run ends
        FINISHED with the epoch it stopped at (tag). FAILED: the error as a tag. Each gets its outcome tag
        (finished, stopped, failed). STOPPED: the run stays open until ``close`` marks it KILLED (it is re-run
        on resume)."""
        if not self._open(number) or outcome is Outcome.STOPPED:
            return
        run_id = self.runs[number]
        epochs = self.pending.pop(number, [])  # written with the final metrics: one store write fewer
        if outcome in (Outcome.FINISHED, Outcome.PRUNED):
            assert final is not None
            now = int(time.time() * 1000)
            diagnostics = final.diagnostics
            tags = (
                [RunTag(T.PERMUTATION, json.dumps(diagnostics[contract.PERMUTATION]))]
                if contract.PERMUTATION in diagnostics
                else []
            )
            if contract.INIT_DIGEST in diagnostics:
                tags.append(RunTag(T.INIT_DIGEST, diagnostics[contract.INIT_DIGEST]))
            if contract.NODE in diagnostics:
                tags.append(RunTag(T.NODE, str(diagnostics[contract.NODE])))
            if contract.WEIGHTS_ERROR in diagnostics:
                tags.append(RunTag(T.WEIGHTS_ERROR, clean(diagnostics[contract.WEIGHTS_ERROR])))
            if outcome is Outcome.PRUNED:
                tags.append(RunTag(T.STOPPED_AT, str(diagnostics.get(contract.STOPPED_AT))))
            tags.append(RunTag(T.OUTCOME, T.OUTCOME_STOPPED if outcome is Outcome.PRUNED else T.OUTCOME_FINISHED))
            metrics = epochs + [Metric(k, float(v), now, 0) for k, v in final.metrics.items()]
            self._log_batch(run_id, metrics, tags)
            self.client.log_dict(run_id, diagnostics, "diagnostics.json")
        else:
            self._log_batch(run_id, epochs, [RunTag(T.ERROR, clean(error)), RunTag(T.OUTCOME, T.OUTCOME_FAILED)])
        self.client.set_terminated(run_id, outcome.status)
        self.status[number] = outcome.status

    def log_weights(self, number: int, data: bytes) -> None:
        run_id = self.runs[number]
        folder, name = T.WEIGHTS_ARTIFACT.rsplit("/", 1)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / name
            path.write_bytes(data)
            self.client.log_artifact(run_id, str(path), folder)
        self.client.set_tag(run_id, T.WEIGHTS, T.WEIGHTS_ARTIFACT)

    def counts(self) -> tuple[int, int]:
        statuses = list(self.status.values())
        return statuses.count("FINISHED"), statuses.count("FAILED")

    def close(self, summary: dict[str, float], complete: bool) -> None:
        for number, status in self.status.items():
            if number in self.pending:
                self._flush(number)
            if status in UNFINISHED:
                self.client.set_terminated(self.runs[number], "KILLED")
                self.status[number] = "KILLED"
        if complete and self._finished_at is not None:  # nothing ran: the study ends as it had
            self.client.set_terminated(self.parent_id, "FINISHED", end_time=self._finished_at)
            return
        now = int(time.time() * 1000)
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()])
        self.client.set_terminated(self.parent_id, "FINISHED" if complete else "KILLED")
