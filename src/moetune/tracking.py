"""The MLflow record of a study, written from the Tune driver only (trial workers never touch the store).

One experiment per sweep, one parent run per study, one nested child run per trial (names in schema.py).
Re-running a study finds its parent run and children by tags, so nothing is duplicated, and runs a
killed process left RUNNING are closed.
"""
from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from mlflow.entities import Metric, Param, RunTag
from mlflow.tracking import MlflowClient

import moetune
from moetune import schema
from moetune.errors import ConfigError

UNFINISHED = ("RUNNING", "SCHEDULED")
FLUSH_SECONDS = 5.0


def check_tracking_uri(uri: str) -> None:
    """Fail early, writing nothing, when the tracking store cannot be reached."""
    parsed = urlparse(uri)
    if parsed.scheme == "sqlite":
        db = Path(uri[len("sqlite:///"):]) if uri.startswith("sqlite:///") else None
        if db is None or not db.name:
            raise ConfigError(f"tracking.uri {uri!r}: expected sqlite:///path/to/file.db")
        if not db.parent.is_dir():
            raise ConfigError(f"tracking.uri {uri!r}: folder {db.parent} does not exist; create it or set tracking.uri")
    elif parsed.scheme in ("http", "https"):
        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=5)
        except (urllib.error.URLError, OSError) as exc:
            raise ConfigError(f"tracking.uri {uri!r} is unreachable ({exc}); start the MLflow server or set tracking.uri") from None
    elif parsed.scheme in ("", "file"):
        raise ConfigError(f"tracking.uri {uri!r}: use a database store such as sqlite:///mlruns/mlflow.db (MLflow 3 refuses plain folders)")


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(moetune.__file__).resolve().parent)
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def _clean(value) -> str:
    return str(value)[:6000]


class StudyTracker:
    """The parent run of one study and its trial children."""

    def __init__(self, uri: str, artifact_root: str, experiment: str, study_key: str, tags: dict[str, str]):
        self.client = MlflowClient(tracking_uri=uri)
        self.study_key = study_key
        exp = self.client.get_experiment_by_name(experiment)
        if exp is None:
            location = (Path(artifact_root).resolve() / experiment).as_uri()
            self.experiment_id = self.client.create_experiment(
                experiment, artifact_location=location, tags={schema.EXPERIMENT_KIND: schema.MODEL_TRAINING})
        else:
            self.experiment_id = exp.experiment_id
            if exp.tags.get(schema.EXPERIMENT_KIND) != schema.MODEL_TRAINING:
                self.client.set_experiment_tag(self.experiment_id, schema.EXPERIMENT_KIND, schema.MODEL_TRAINING)
        parents = self._search(f"tags.`{schema.ROLE}` = '{schema.STUDY}' and tags.`{schema.STUDY_KEY}` = '{study_key}'")
        if parents:
            self.parent_id = parents[0].info.run_id
            self.client.update_run(self.parent_id, status="RUNNING")
        else:
            all_tags = {schema.ROLE: schema.STUDY, schema.STUDY_KEY: study_key, schema.VERSION: moetune.__version__,
                        schema.GIT_COMMIT: git_commit(), **tags}
            self.parent_id = self.client.create_run(self.experiment_id, tags=all_tags, run_name=study_key).info.run_id
        self.children: dict[str, str] = {}
        self.child_status: dict[str, str] = {}
        self.child_index: dict[str, int] = {}
        for run in self._search(f"tags.`mlflow.parentRunId` = '{self.parent_id}'"):
            trial_id = run.data.tags.get(schema.TRIAL_ID)
            self.children[trial_id] = run.info.run_id
            self.child_status[trial_id] = run.info.status
            self.child_index[trial_id] = int(run.data.tags.get(schema.TRIAL_INDEX, len(self.child_index)))
        self.tags = tags
        self.pending: dict[str, list[Metric]] = {}
        self.last_flush: dict[str, float] = {}

    def _search(self, filter_string: str):
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string, max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def log_study(self, search_space: dict, config_yaml: str) -> None:
        params = [Param(f"space.{k}", _clean(v)) for k, v in sorted(search_space.items())]
        existing = self.client.get_run(self.parent_id).data.params
        params = [p for p in params if p.key not in existing]
        if params:
            self.client.log_batch(self.parent_id, params=params)
        self.client.log_text(self.parent_id, config_yaml, "config.yaml")

    def is_done(self, trial_id: str) -> bool:
        return self.child_status.get(trial_id) in ("FINISHED", "FAILED")

    def start_trial(self, trial_id: str, params: dict) -> None:
        """A child run for the trial; a run left by an interrupted attempt is deleted and started afresh.

        Trials are numbered in the order the tuner started them; a restarted trial keeps its number."""
        if self.is_done(trial_id):
            return
        if trial_id in self.children:
            self.client.delete_run(self.children[trial_id])
        index = self.child_index.setdefault(trial_id, max(self.child_index.values(), default=-1) + 1)
        tags = {schema.ROLE: schema.TRIAL, "mlflow.parentRunId": self.parent_id, schema.TRIAL_ID: trial_id,
                schema.TRIAL_INDEX: str(index), schema.STUDY_KEY: self.study_key, **self.tags}
        run = self.client.create_run(self.experiment_id, tags=tags, run_name=f"trial-{index:03d}")
        self.children[trial_id] = run.info.run_id
        self.child_status[trial_id] = "RUNNING"
        self.client.log_batch(run.info.run_id, params=[Param(k, _clean(v)) for k, v in sorted(params.items())])

    def log_epoch(self, trial_id: str, epoch: int, metrics: dict[str, float]) -> None:
        """Buffer a trial's per-epoch metrics; written every FLUSH_SECONDS and when the trial ends, since
        one store write per epoch costs the driver CPU that the trials on the same machine need."""
        now = time.time()
        self.pending.setdefault(trial_id, []).extend(Metric(k, float(v), int(now * 1000), epoch) for k, v in metrics.items())
        if now - self.last_flush.get(trial_id, 0.0) >= FLUSH_SECONDS:
            self.flush(trial_id)

    def flush(self, trial_id: str) -> None:
        self.last_flush[trial_id] = time.time()
        metrics = self.pending.pop(trial_id, [])
        for start in range(0, len(metrics), 1000):  # MLflow's log_batch limit
            self.client.log_batch(self.children[trial_id], metrics=metrics[start:start + 1000])

    def finish_trial(self, trial_id: str, metrics: dict[str, float], diagnostics: dict) -> None:
        self.flush(trial_id)
        run_id = self.children[trial_id]
        now = int(time.time() * 1000)
        tags = [RunTag("permutation", json.dumps(diagnostics["permutation"]))] if "permutation" in diagnostics else []
        if "init_digest" in diagnostics:
            tags.append(RunTag("init_digest", diagnostics["init_digest"]))
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()], tags=tags)
        self.client.log_dict(run_id, diagnostics, "diagnostics.json")
        self.client.set_terminated(run_id, "FINISHED")
        self.child_status[trial_id] = "FINISHED"

    def fail_trial(self, trial_id: str, error: str) -> None:
        self.flush(trial_id)
        run_id = self.children[trial_id]
        self.client.set_tag(run_id, schema.ERROR, _clean(error))
        self.client.set_terminated(run_id, "FAILED")
        self.child_status[trial_id] = "FAILED"

    def counts(self) -> tuple[int, int]:
        statuses = list(self.child_status.values())
        return statuses.count("FINISHED"), statuses.count("FAILED")

    def close(self, summary: dict[str, float], complete: bool) -> None:
        """End the study: summary metrics on the parent; unfinished children and the parent KILLED if interrupted."""
        for trial_id, status in self.child_status.items():
            if trial_id in self.pending:
                self.flush(trial_id)
            if status in UNFINISHED:
                self.client.set_terminated(self.children[trial_id], "KILLED")
                self.child_status[trial_id] = "KILLED"
        now = int(time.time() * 1000)
        self.client.log_batch(self.parent_id, metrics=[Metric(k, float(v), now, 0) for k, v in summary.items()])
        self.client.set_terminated(self.parent_id, "FINISHED" if complete else "KILLED")
