"""MLflow as moetune's tracking store: a sqlite file on one machine, ``mlflow server`` on many.

Written from the Tune driver only (trial workers never touch the store). Re-running a study finds its
parent run and children by tags, so nothing is duplicated, and runs a killed process left RUNNING
are closed. The layout is in moetune.tracking.tags.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.tracking import MlflowClient

import moetune
from moetune.contract import EpochReport, FinalReport, Outcome
from moetune.errors import ConfigError
from moetune.tracking import tags as T
from moetune.tracking.base import RecordedStudy, RecordedSweep, RecordedTrial, StudyRecord, Tracking

UNFINISHED = ("RUNNING", "SCHEDULED")
DONE = ("FINISHED", "FAILED")
FLUSH_SECONDS = 5.0
BATCH = 1000  # MLflow's log_batch and search_runs page limit


def _clean(value: Any) -> str:
    return str(value)[:6000]


def _paged(fetch: Callable[[str | None], Any]) -> Iterator[Any]:
    """Every item of a paged MLflow search."""
    token = None
    while True:
        page = fetch(token)
        yield from page
        token = page.token
        if not token:
            return


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(moetune.__file__).resolve().parent,
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


class MlflowTracking(Tracking):
    def __init__(self, uri: str, artifact_root: str = "mlruns/artifacts", experiment: str = "moetune") -> None:
        self.uri, self.artifact_root, self.experiment = uri, artifact_root, experiment
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    # ------------------------------------------------------------ checks

    def check(self, must_exist: bool = False) -> None:
        """Fail early, writing nothing, when the store cannot be reached; ``must_exist`` (for reading) also
        refuses a sqlite file that is not there, which MLflow would silently create empty."""
        uri = self.uri
        parsed = urlparse(uri)
        if parsed.scheme == "sqlite":
            db = Path(uri[len("sqlite:///") :]) if uri.startswith("sqlite:///") else None
            if db is None or not db.name:
                raise ConfigError(f"tracking.uri {uri!r}: expected sqlite:///path/to/file.db")
            if must_exist and not db.is_file():
                raise ConfigError(f"no MLflow store at {db} (tracking URI {uri}); pass --tracking-uri")
            if not db.parent.is_dir():
                raise ConfigError(
                    f"tracking.uri {uri!r}: folder {db.parent} does not exist; create it or set tracking.uri"
                )
        elif parsed.scheme in ("http", "https"):
            try:
                urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5)
            except (urllib.error.URLError, OSError) as exc:
                raise ConfigError(
                    f"tracking.uri {uri!r} is unreachable ({exc}); start the MLflow server or set tracking.uri"
                ) from None
        elif parsed.scheme in ("", "file"):
            raise ConfigError(
                f"tracking.uri {uri!r}: use a database store such as sqlite:///mlruns/mlflow.db "
                "(MLflow 3 refuses plain folders)"
            )

    # ------------------------------------------------------------ writing

    def open_study(
        self, study_key: str, tags: dict[str, str], search_space: dict[str, str], config_yaml: str
    ) -> StudyRecord:
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            location = (Path(self.artifact_root).resolve() / self.experiment).as_uri()
            experiment_id = self.client.create_experiment(
                self.experiment, artifact_location=location, tags={T.EXPERIMENT_KIND: T.MODEL_TRAINING}
            )
        else:
            experiment_id = exp.experiment_id
            if exp.tags.get(T.EXPERIMENT_KIND) != T.MODEL_TRAINING:
                self.client.set_experiment_tag(experiment_id, T.EXPERIMENT_KIND, T.MODEL_TRAINING)
        record = MlflowStudyRecord(self.client, experiment_id, study_key, tags)
        record.log_study(search_space, config_yaml)
        return record

    def log_export(self, experiment: str, files: list[Path], params: dict[str, str]) -> None:
        """Log the files on a new export run, then delete the experiment's older export runs: one per experiment."""
        exp = self._experiment(experiment)
        old = self._runs(exp.experiment_id, f"tags.`{T.ROLE}` = '{T.EXPORT}'")
        run = self.client.create_run(exp.experiment_id, run_name="export", tags={T.ROLE: T.EXPORT, T.SWEEP: experiment})
        try:
            self.client.log_batch(run.info.run_id, params=[Param(k, _clean(v)) for k, v in params.items()])
            for path in files:
                self.client.log_artifact(run.info.run_id, str(path))
        except Exception:
            self.client.delete_run(run.info.run_id)
            raise
        self.client.set_terminated(run.info.run_id, "FINISHED")
        for previous in old:
            self.client.delete_run(previous.info.run_id)

    # ------------------------------------------------------------ reading

    def _experiment(self, name: str):
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            names = sorted(e.name for e in _paged(lambda tok: self.client.search_experiments(page_token=tok)))
            raise ConfigError(f"unknown experiment {name!r}; available: {', '.join(names) or '(none)'}")
        return exp

    def _runs(self, experiment_id: str, filter_string: str) -> list[Run]:
        return list(
            _paged(
                lambda tok: self.client.search_runs(
                    [experiment_id], filter_string=filter_string, max_results=BATCH, page_token=tok
                )
            )
        )

    def read_sweep(self, experiment: str) -> RecordedSweep:
        self.check(must_exist=True)
        exp = self._experiment(experiment)
        studies = {
            r.info.run_id: RecordedStudy(r.data.tags.get(T.STUDY_KEY, r.info.run_id), dict(r.data.tags))
            for r in self._runs(exp.experiment_id, f"tags.`{T.ROLE}` = '{T.STUDY}'")
        }
        for run in self._runs(exp.experiment_id, f"tags.`{T.ROLE}` = '{T.TRIAL}'"):
            study = studies.get(run.data.tags.get(T.PARENT_RUN_ID))
            if study is None or run.info.status not in DONE:
                continue  # an orphan, or a trial still running or killed by an interruption (re-run on resume)
            index = int(run.data.tags.get(T.TRIAL_INDEX, run.info.start_time or 0))
            study.trials.append(RecordedTrial(index, run.info.status, dict(run.data.metrics)))
        for study in studies.values():
            study.trials.sort(key=lambda t: t.index)
        return RecordedSweep(exp.name, exp.experiment_id, sorted(studies.values(), key=lambda s: s.key))

    def browse_hint(self, experiment_id: str) -> str:
        page = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        if self.uri.startswith(("http://", "https://")):
            return f"browse: {self.uri.rstrip('/')}/{page}"
        return (
            f"browse: mlflow ui --backend-store-uri {self.uri} --host 127.0.0.1 --port 5000, "
            f"then open http://127.0.0.1:5000/{page}"
        )


class MlflowStudyRecord(StudyRecord):
    """The parent run of one study and its trial children."""

    def __init__(self, client: MlflowClient, experiment_id: str, study_key: str, tags: dict[str, str]) -> None:
        self.client, self.experiment_id, self.study_key, self.tags = client, experiment_id, study_key, tags
        parents = self._search(f"tags.`{T.ROLE}` = '{T.STUDY}' and tags.`{T.STUDY_KEY}` = '{study_key}'")
        if parents:
            self.parent_id = parents[0].info.run_id
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
        self.children: dict[str, str] = {}
        self.child_status: dict[str, str] = {}
        self.child_index: dict[str, int] = {}
        for run in self._search(f"tags.`{T.PARENT_RUN_ID}` = '{self.parent_id}'"):
            trial_id = run.data.tags.get(T.TRIAL_ID)
            if trial_id is None:
                continue  # not a trial of this study (no tuner id)
            self.children[trial_id] = run.info.run_id
            self.child_status[trial_id] = run.info.status
            self.child_index[trial_id] = int(run.data.tags.get(T.TRIAL_INDEX, len(self.child_index)))
        self.pending: dict[str, list[Metric]] = {}
        self.last_flush: dict[str, float] = {}

    def _search(self, filter_string: str) -> list[Run]:
        return list(
            _paged(
                lambda tok: self.client.search_runs(
                    [self.experiment_id], filter_string, max_results=BATCH, page_token=tok
                )
            )
        )

    def log_study(self, search_space: dict[str, str], config_yaml: str) -> None:
        params = [Param(f"space.{k}", _clean(v)) for k, v in sorted(search_space.items())]
        existing = self.client.get_run(self.parent_id).data.params
        params = [p for p in params if p.key not in existing]
        if params:
            self.client.log_batch(self.parent_id, params=params)
        self.client.log_text(self.parent_id, config_yaml, "config.yaml")

    def is_done(self, trial_id: str) -> bool:
        return self.child_status.get(trial_id) in DONE

    def trial_number(self, trial_id: str) -> int:
        return self.child_index.get(trial_id, -1)

    def start_trial(self, trial_id: str, params: dict) -> None:
        """A child run for the trial; a run left by an interrupted attempt is deleted and started afresh.

        Trials are numbered in the order the tuner started them; a restarted trial keeps its number."""
        if self.is_done(trial_id):
            return
        if trial_id in self.children:
            self.client.delete_run(self.children[trial_id])
        index = self.child_index.setdefault(trial_id, max(self.child_index.values(), default=-1) + 1)
        tags = {
            T.ROLE: T.TRIAL,
            T.PARENT_RUN_ID: self.parent_id,
            T.TRIAL_ID: trial_id,
            T.TRIAL_INDEX: str(index),
            T.STUDY_KEY: self.study_key,
            **self.tags,
        }
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=f"trial-{index:03d}")
        self.children[trial_id] = run.info.run_id
        self.child_status[trial_id] = "RUNNING"
        self.client.log_batch(run.info.run_id, params=[Param(k, _clean(v)) for k, v in sorted(params.items())])

    def log_epoch(self, trial_id: str, report: EpochReport) -> None:
        """Buffer a trial's per-epoch metrics; written every FLUSH_SECONDS and when the trial ends, since
        one store write per epoch costs the driver CPU that the trials on the same machine need."""
        if self.is_done(trial_id) or trial_id not in self.children:
            return
        now = time.time()
        self.pending.setdefault(trial_id, []).extend(
            Metric(k, float(v), int(now * 1000), report.epoch) for k, v in report.metrics.items()
        )
        if now - self.last_flush.get(trial_id, 0.0) >= FLUSH_SECONDS:
            self._flush(trial_id)

    def _flush(self, trial_id: str) -> None:
        self.last_flush[trial_id] = time.time()
        metrics = self.pending.pop(trial_id, [])
        for start in range(0, len(metrics), BATCH):
            self.client.log_batch(self.children[trial_id], metrics=metrics[start : start + BATCH])

    def end_trial(
        self, trial_id: str, outcome: Outcome, final: FinalReport | None = None, error: str | None = None
    ) -> None:
        """FINISHED: final metrics, permutation and init tags, diagnostics.json. FAILED: the error as a tag.
        STOPPED: the run stays open until ``close`` marks it KILLED (it is re-run on resume)."""
        if self.is_done(trial_id) or trial_id not in self.children or outcome is Outcome.STOPPED:
            return
        self._flush(trial_id)
        run_id = self.children[trial_id]
        if outcome is Outcome.FINISHED:
            assert final is not None
            now = int(time.time() * 1000)
            diagnostics = final.diagnostics
            tags = (
                [RunTag(T.PERMUTATION, json.dumps(diagnostics["permutation"]))] if "permutation" in diagnostics else []
            )
            if T.INIT_DIGEST in diagnostics:
                tags.append(RunTag(T.INIT_DIGEST, diagnostics[T.INIT_DIGEST]))
            metrics = [Metric(k, float(v), now, 0) for k, v in final.metrics.items()]
            self.client.log_batch(run_id, metrics=metrics, tags=tags)
            self.client.log_dict(run_id, diagnostics, "diagnostics.json")
        else:
            self.client.set_tag(run_id, T.ERROR, _clean(error))
        self.client.set_terminated(run_id, outcome.value)
        self.child_status[trial_id] = outcome.value

    def counts(self) -> tuple[int, int]:
        statuses = list(self.child_status.values())
        return statuses.count("FINISHED"), statuses.count("FAILED")

    def close(self, summary: dict[str, float], complete: bool) -> None:
        for trial_id, status in self.child_status.items():
            if trial_id in self.pending:
                self._flush(trial_id)
            if status in UNFINISHED:
                self.client.set_terminated(self.children[trial_id], "KILLED")
                self.child_status[trial_id] = "KILLED"
        now = int(time.time() * 1000)
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()])
        self.client.set_terminated(self.parent_id, "FINISHED" if complete else "KILLED")
