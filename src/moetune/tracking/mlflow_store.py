"""MLflow as moetune's tracking store: a sqlite file on one machine, ``mlflow server`` on many.

Written from the Tune driver only (trial workers never touch the store). Re-running a study finds its
parent run and children by tags, so nothing is duplicated, and runs a killed process left RUNNING
are closed. The layout is in moetune.tracking.tags.
"""

from __future__ import annotations

import math
import os
import sqlite3
import tempfile
from pathlib import Path
from urllib.parse import urlparse

from mlflow.entities import Param, Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from moetune.contract import best_metric, higher_is_better
from moetune.errors import ConfigError, first_line
from moetune.tracking import tags as T
from moetune.tracking.base import RecordedStudy, RecordedSweep, RecordedTrial, StudyRecord, SweepLock, Tracking
from moetune.tracking.mlflow_lock import MlflowSweepLock
from moetune.tracking.mlflow_record import MlflowStudyRecord
from moetune.tracking.mlflow_runs import DONE, SPACE, clean, paged, search, trial_name


def _write_ahead_log() -> None:
    """sqlite stores in write-ahead-log mode with synchronous=NORMAL: a commit is appended to the log without
    an fsync (about 15 commits per trial, each of which otherwise waits on the disk while the driver's
    loop, and so the next trial, waits on it). A killed process loses nothing it committed (the log is in
    the OS's hands); a power cut may lose the last commits but never corrupts the store. The mode stays
    with the file; readers (mlflow ui) work alongside. Not for a store on a network file system."""
    if getattr(_write_ahead_log, "installed", False):
        return
    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    @event.listens_for(Engine, "connect")
    def _pragmas(connection, _record) -> None:
        if isinstance(connection, sqlite3.Connection):
            cursor = connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.close()

    _write_ahead_log.installed = True  # type: ignore[attr-defined]


def close_stores() -> None:
    """Close every connection MLflow's SQL stores hold in this process: sqlite then folds its write-ahead
    log into the database file and removes it, as it does when the process ends the usual way (a copy of
    mlflow.db alone is then the whole store)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for engine in list(getattr(SqlAlchemyStore, "_engine_map", {}).values()):
        engine.dispose()


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
    def __init__(self, uri: str, *, experiment: str, artifact_root: str = "mlruns/artifacts") -> None:
        self.uri, self.artifact_root, self.experiment = uri, artifact_root, experiment
        self._client: MlflowClient | None = None
        # with a server, MLflow prints a "View run ... at" line per run ended: the browse hint says it once
        os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
        os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # no bar per weights download

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            if self.uri.startswith("sqlite:"):
                _write_ahead_log()
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

    def log_export(self, files: list[Path], params: dict[str, str]) -> str | None:
        """Log the files on a new export run, then delete the experiment's older export runs: one per experiment.
        A user who may only read the sweep (a server's READ permission) keeps the files on disk: a note says so."""
        exp = self._experiment()
        old = self._runs(exp.experiment_id, f"tags.`{T.ROLE}` = '{T.EXPORT}'")
        tags = {T.ROLE: T.EXPORT, T.SWEEP: self.experiment}
        try:
            run = self.client.create_run(exp.experiment_id, run_name="export", tags=tags)
        except MlflowException as exc:
            if exc.error_code != "PERMISSION_DENIED":
                raise
            return f"not kept with the sweep in {self.uri}: this user may only read it ({first_line(exc)})"
        try:
            self.client.log_batch(run.info.run_id, params=[Param(k, clean(v)) for k, v in params.items()])
            for path in files:
                self.client.log_artifact(run.info.run_id, str(path))
        except Exception:
            self.client.delete_run(run.info.run_id)
            raise
        self.client.set_terminated(run.info.run_id, "FINISHED")
        for previous in old:
            self.client.delete_run(previous.info.run_id)
        return None

    # ------------------------------------------------------------ reading

    def _experiment(self):
        name = self.experiment
        exp = self.client.get_experiment_by_name(name)
        if exp is None:
            names = sorted(e.name for e in paged(lambda tok: self.client.search_experiments(page_token=tok)))
            raise ConfigError(f"unknown experiment {name!r}; available: {', '.join(names) or '(none)'}")
        return exp

    def _runs(self, experiment_id: str, filter_string: str) -> list[Run]:
        return search(self.client, experiment_id, filter_string)

    def read_sweep(self) -> RecordedSweep:
        self.check(must_exist=True)
        exp = self._experiment()
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
                raise ConfigError(f"{trial_name(run)} has no saved weights ({why}); {fix}")
        else:
            raise ConfigError(f"run {run_id} is not a moetune study or trial run; {fix}")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                data = Path(self.client.download_artifacts(trial.info.run_id, T.WEIGHTS_ARTIFACT, tmp)).read_bytes()
            except (MlflowException, OSError) as exc:
                first = first_line(exc)
                raise ConfigError(
                    f"{trial_name(trial)}: its weights artifact {T.WEIGHTS_ARTIFACT} cannot be read ({first}); {fix}"
                ) from None
        return data, f"{trial_name(trial)}{note}"

    def _best_saved_trial(self, study: Run) -> tuple[Run, str]:
        selection = study.data.tags.get(T.SELECTION_METRIC, best_metric("val_loss"))
        mode = study.data.tags.get(T.SELECTION_MODE) or ("max" if higher_is_better(selection) else "min")
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

    def options(self) -> dict[str, str]:
        return {"uri": self.uri, "artifact_root": self.artifact_root}

    def export_args(self) -> list[str]:
        return ["--tracking-uri", self.uri]

    def browse_hint(self, experiment_id: str) -> str:
        page = f"#/experiments/{experiment_id}/runs?workflowType=machine_learning"
        if self.uri.startswith(("http://", "https://")):
            return f"browse: {self.uri.rstrip('/')}/{page}"
        return (
            f"browse: mlflow ui --backend-store-uri {self.uri} --host 127.0.0.1 --port 5000, "
            f"then open http://127.0.0.1:5000/{page}"
        )
