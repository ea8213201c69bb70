"""MLflow as moetune's tracking store: a sqlite file on one machine, ``mlflow server`` on many.

Written from the Tune driver only (trial workers never touch the store). Re-running a study finds its
parent run and children by tags, so nothing is duplicated, and runs a killed process left RUNNING
are closed. The layout is in moetune.tracking.tags.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import yaml
from mlflow.entities import Metric, Param, Run, RunTag
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

import moetune
from moetune.contract import NODE, WEIGHTS_ERROR, EpochReport, FinalReport, Outcome
from moetune.errors import ConfigError, SweepLockedError
from moetune.tracking import tags as T
from moetune.tracking.base import (
    LedgerEntry,
    RecordedStudy,
    RecordedSweep,
    RecordedTrial,
    StudyRecord,
    SweepLock,
    Tracking,
)

UNFINISHED = ("RUNNING", "SCHEDULED")
DONE = ("FINISHED", "FAILED")
FLUSH_SECONDS = 5.0
BATCH = 1000  # MLflow's log_batch and search_runs page limit
SPACE = "space."  # a study run's params: its search space, one "space.<name>" per entry


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


def _check_sqlite_writable(uri: str, db: Path) -> None:
    """Try the writes sqlite needs (a file beside the database for its journal, a write lock on the
    database itself), so a read-only store fails before any work, not minutes into a sweep."""
    try:
        with tempfile.NamedTemporaryFile(dir=db.parent, prefix=".write-check-"):
            pass
        if db.exists():
            connection = sqlite3.connect(f"file:{db}?mode=rw", uri=True, timeout=30)
            try:  # sqlite opens a write-protected file read-only without a word: try a write, rolled back
                connection.execute("BEGIN IMMEDIATE")
                connection.execute("CREATE TABLE moetune_write_check (x INTEGER)")
                connection.rollback()
            finally:
                connection.close()
    except (OSError, sqlite3.Error) as exc:
        raise ConfigError(
            f"tracking.uri {uri!r} is not writable ({exc}); fix the permissions of {db} and its folder "
            "or set tracking.uri"
        ) from None


class MlflowTracking(Tracking):
    def __init__(self, uri: str, artifact_root: str = "mlruns/artifacts", experiment: str = "moetune") -> None:
        self.uri, self.artifact_root, self.experiment = uri, artifact_root, experiment
        self._client: MlflowClient | None = None
        # with a server, MLflow prints a "View run ... at" line per run ended: the browse hint says it once
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar per weights download

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.uri)
        return self._client

    # ------------------------------------------------------------ checks

    def check(self, must_exist: bool = False, writable: bool = False) -> None:
        """Fail early, writing nothing, when the store cannot be reached; ``must_exist`` (for reading) also
        refuses a sqlite file that is not there, which MLflow would silently create empty; ``writable``
        refuses a sqlite file or folder the driver cannot write (sqlite writes a journal beside the file)."""
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
            if writable:
                _check_sqlite_writable(uri, db)
        elif parsed.scheme in ("http", "https"):
            from moetune.tracking import mlflow_access  # reachable, a login it accepts, and for a sweep a writer

            mlflow_access.check_server(uri, self.experiment, writable)
        elif parsed.scheme.split("+")[0] in ("postgresql", "mysql", "mssql", "oracle"):
            from moetune.tracking import mlflow_access

            mlflow_access.check_database(uri)
        elif parsed.scheme in ("", "file"):
            raise ConfigError(
                f"tracking.uri {uri!r}: use a database store such as sqlite:///mlruns/mlflow.db "
                "(MLflow 3 refuses plain folders)"
            )

    # ------------------------------------------------------------ writing

    def lock_sweep(self) -> SweepLock:
        return MlflowSweepLock(self.client, self._experiment_id(), self.experiment)

    def _experiment_id(self) -> str:
        """The sweep's experiment, created tagged for model training (MLflow's UI opens it on its runs)."""
        exp = self.client.get_experiment_by_name(self.experiment)
        if exp is None:
            # a server keeps the artifacts it serves (--artifacts-destination); a local store, under artifact_root
            served = urlparse(self.uri).scheme in ("http", "https")
            location = None if served else (Path(self.artifact_root).resolve() / self.experiment).as_uri()
            experiment_id = self.client.create_experiment(
                self.experiment, artifact_location=location, tags={T.EXPERIMENT_KIND: T.MODEL_TRAINING}
            )
        else:
            experiment_id = exp.experiment_id
            if exp.tags.get(T.EXPERIMENT_KIND) != T.MODEL_TRAINING:
                self.client.set_experiment_tag(experiment_id, T.EXPERIMENT_KIND, T.MODEL_TRAINING)
        return experiment_id

    def open_study(
        self, study_key: str, tags: dict[str, str], search_space: dict[str, str], config_yaml: str
    ) -> StudyRecord:
        record = MlflowStudyRecord(self.client, self._experiment_id(), study_key, tags)
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
            r.info.run_id: RecordedStudy(
                r.data.tags.get(T.STUDY_KEY, r.info.run_id),
                dict(r.data.tags),
                space={k.removeprefix(SPACE): v for k, v in r.data.params.items() if k.startswith(SPACE)},
            )
            for r in self._runs(exp.experiment_id, f"tags.`{T.ROLE}` = '{T.STUDY}'")
        }
        for run in self._runs(exp.experiment_id, f"tags.`{T.ROLE}` = '{T.TRIAL}'"):
            study = studies.get(run.data.tags.get(T.PARENT_RUN_ID))
            if study is None or run.info.status not in DONE:
                continue  # an orphan, or a trial still running or killed by an interruption (re-run on resume)
            run_tags = run.data.tags
            index = int(run_tags.get(T.TRIAL_INDEX, run.info.start_time or 0))
            study.trials.append(
                RecordedTrial(
                    index,
                    run.info.status,
                    dict(run.data.metrics),
                    dict(run.data.params),
                    run_tags.get(T.INIT_DIGEST),
                    run_tags.get(T.ERROR),
                )
            )
        for study in studies.values():
            study.trials.sort(key=lambda t: t.index)
        return RecordedSweep(exp.name, exp.experiment_id, sorted(studies.values(), key=lambda s: s.key))

    def load_weights(self, run_id: str) -> tuple[bytes, str]:
        """A trial run's saved weights, or a study run's best finished trial's among those saved (by the
        study's own selection metric, best_<tuner.metric> in its tuner.mode); reads only."""
        fix = "give a checkpoint path, or the run id of a study or trial run saved with train.save_weights=true"
        try:
            self.check(must_exist=True)
        except ConfigError:
            raise ConfigError(
                f"no checkpoint file by that name, and no tracking store at {self.uri} to find it in as a run id; {fix}"
            ) from None
        try:
            run = self.client.get_run(run_id)
        except MlflowException:
            run = None
        if run is None or run.info.lifecycle_stage == "deleted":
            raise ConfigError(f"no checkpoint file by that name, and no run with that id in {self.uri}; {fix}")
        role = run.data.tags.get(T.ROLE)
        if role == T.STUDY:
            trial, note = self._best_saved_trial(run)
        elif role == T.TRIAL:
            trial, note = run, ""
            if T.WEIGHTS not in run.data.tags:
                why = run.data.tags.get(T.WEIGHTS_ERROR, "its study ran without train.save_weights=true")
                raise ConfigError(f"{_trial_name(run)} has no saved weights ({why}); {fix}")
        else:
            raise ConfigError(f"run {run_id} is not a moetune study or trial run; {fix}")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                data = Path(self.client.download_artifacts(trial.info.run_id, T.WEIGHTS_ARTIFACT, tmp)).read_bytes()
            except (MlflowException, OSError) as exc:
                first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                raise ConfigError(
                    f"{_trial_name(trial)}: its weights artifact {T.WEIGHTS_ARTIFACT} cannot be read ({first}); {fix}"
                ) from None
        return data, f"{_trial_name(trial)}{note}"

    def _best_saved_trial(self, study: Run) -> tuple[Run, str]:
        metric, mode = "val_loss", "min"
        with tempfile.TemporaryDirectory() as tmp, contextlib.suppress(Exception):
            recorded = Path(self.client.download_artifacts(study.info.run_id, "config.yaml", tmp))
            tuner = yaml.safe_load(recorded.read_text())["tuner"]
            metric, mode = tuner["metric"], tuner["mode"]
        selection = "best_" + metric
        children = self._runs(
            study.info.experiment_id,
            f"tags.`{T.PARENT_RUN_ID}` = '{study.info.run_id}' and tags.`{T.ROLE}` = '{T.TRIAL}'",
        )
        saved = [
            r
            for r in children
            if r.info.status == "FINISHED"
            and T.WEIGHTS in r.data.tags
            and math.isfinite(r.data.metrics.get(selection, math.nan))
        ]
        if not saved:
            key = study.data.tags.get(T.STUDY_KEY, study.info.run_id)
            raise ConfigError(
                f"study {key} (run {study.info.run_id}) has no finished trial with saved weights; "
                "run it with train.save_weights=true, or give a checkpoint path"
            )
        sign = 1.0 if mode == "min" else -1.0
        best = min(saved, key=lambda r: (sign * r.data.metrics[selection], int(r.data.tags.get(T.TRIAL_INDEX, 0))))
        return best, f", the best of {len(saved)} with saved weights by {selection}={best.data.metrics[selection]:.6g}"

    def browse_hint(self, experiment_id: str) -> str:
        page = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        if self.uri.startswith(("http://", "https://")):
            return f"browse: {self.uri.rstrip('/')}/{page}"
        return (
            f"browse: mlflow ui --backend-store-uri {self.uri} --host 127.0.0.1 --port 5000, "
            f"then open http://127.0.0.1:5000/{page}"
        )


def _trial_name(run: Run) -> str:
    """e.g. "trial-003 of study softmax-ls_off-synthetic-seed0 (run 1f2e...)"."""
    tags = run.data.tags
    index = int(tags.get(T.TRIAL_INDEX, -1))
    return f"trial-{index:03d} of study {tags.get(T.STUDY_KEY, '?')} (run {run.info.run_id})"


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
            self._ledger.append(LedgerEntry(number, run.info.status, sampled, dict(run.data.metrics)))
        self._ledger.sort(key=lambda e: e.number)
        self.pending: dict[int, list[Metric]] = {}
        self.last_flush: dict[int, float] = {}

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

    def ledger(self) -> list[LedgerEntry]:
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
        self._finished_at = None
        self.client.log_batch(run.info.run_id, params=[Param(k, _clean(v)) for k, v in sorted(params.items())])

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
        metrics = self.pending.pop(number, [])
        for start in range(0, len(metrics), BATCH):
            self.client.log_batch(self.runs[number], metrics=metrics[start : start + BATCH])

    def end_trial(
        self, number: int, outcome: Outcome, final: FinalReport | None = None, error: str | None = None
    ) -> None:
        """FINISHED: final metrics, permutation and init tags, diagnostics.json. FAILED: the error as a tag.
        STOPPED: the run stays open until ``close`` marks it KILLED (it is re-run on resume)."""
        if not self._open(number) or outcome is Outcome.STOPPED:
            return
        self._flush(number)
        run_id = self.runs[number]
        if outcome is Outcome.FINISHED:
            assert final is not None
            now = int(time.time() * 1000)
            diagnostics = final.diagnostics
            tags = (
                [RunTag(T.PERMUTATION, json.dumps(diagnostics["permutation"]))] if "permutation" in diagnostics else []
            )
            if T.INIT_DIGEST in diagnostics:
                tags.append(RunTag(T.INIT_DIGEST, diagnostics[T.INIT_DIGEST]))
            if NODE in diagnostics:
                tags.append(RunTag(T.NODE, str(diagnostics[NODE])))
            if WEIGHTS_ERROR in diagnostics:
                tags.append(RunTag(T.WEIGHTS_ERROR, _clean(diagnostics[WEIGHTS_ERROR])))
            metrics = [Metric(k, float(v), now, 0) for k, v in final.metrics.items()]
            self.client.log_batch(run_id, metrics=metrics, tags=tags)
            self.client.log_dict(run_id, diagnostics, "diagnostics.json")
        else:
            self.client.set_tag(run_id, T.ERROR, _clean(error))
        self.client.set_terminated(run_id, outcome.value)
        self.status[number] = outcome.value

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


class MlflowSweepLock(SweepLock):
    """A sweep's lock as a run in its experiment (tag ROLE=DRIVER): create, then the oldest live one wins.

    Works on any MLflow store (sqlite, or a server on PostgreSQL) without a lock service: two drivers
    starting at once both create their run and both read the same order. A heartbeat tag is renewed
    every HEARTBEAT_SECONDS; a lock whose heartbeat is older than STALE_SECONDS, or whose process is dead
    on this host, is deleted by the next driver and taken over."""

    HEARTBEAT_SECONDS = 10.0
    STALE_SECONDS = 60.0

    def __init__(self, client: MlflowClient, experiment_id: str, sweep: str) -> None:
        self.client, self.experiment_id, self.sweep = client, experiment_id, sweep
        self.host, self.pid = socket.gethostname(), os.getpid()
        self._remove_stale()
        tags = {
            T.ROLE: T.DRIVER,
            T.SWEEP: sweep,
            T.DRIVER_PID: str(self.pid),
            T.DRIVER_HOST: self.host,
            T.DRIVER_HEARTBEAT: f"{time.time():.0f}",
        }
        self.run_id = client.create_run(experiment_id, tags=tags, run_name=f"driver pid {self.pid}").info.run_id
        holder = self._drivers()[0]
        if holder.info.run_id != self.run_id:
            client.delete_run(self.run_id)
            tags_of = holder.data.tags
            age = time.time() - float(tags_of.get(T.DRIVER_HEARTBEAT, 0))
            raise SweepLockedError(
                f"sweep {sweep!r} is being run by another driver (pid {tags_of.get(T.DRIVER_PID)} on "
                f"{tags_of.get(T.DRIVER_HOST)}, heartbeat {age:.0f}s ago); wait for it to end or stop it"
            )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="moetune-sweep-lock", daemon=True)
        self._thread.start()

    def _drivers(self) -> list[Run]:
        runs = self.client.search_runs([self.experiment_id], f"tags.`{T.ROLE}` = '{T.DRIVER}'", max_results=BATCH)
        return sorted(runs, key=lambda r: (r.info.start_time, r.info.run_id))

    def _stale(self, run: Run) -> bool:
        tags = run.data.tags
        if time.time() - float(tags.get(T.DRIVER_HEARTBEAT, 0)) > self.STALE_SECONDS:
            return True
        if tags.get(T.DRIVER_HOST) == self.host:
            try:
                os.kill(int(tags.get(T.DRIVER_PID, "0")), 0)
            except ProcessLookupError:
                return True
            except (PermissionError, ValueError):
                return False
        return False

    def _remove_stale(self) -> None:
        for run in self._drivers():
            if self._stale(run):
                self.client.delete_run(run.info.run_id)

    def _beat(self) -> None:
        while not self._stop.wait(self.HEARTBEAT_SECONDS):
            with contextlib.suppress(Exception):  # a missed beat is retried; staleness takes six
                self.client.set_tag(self.run_id, T.DRIVER_HEARTBEAT, f"{time.time():.0f}")

    def release(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(Exception):
            self.client.delete_run(self.run_id)
