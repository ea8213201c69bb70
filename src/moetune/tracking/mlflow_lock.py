"""The sweep lock in MLflow: one DRIVER run per sweep names the driver holding it, kept alive by a heartbeat."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

from moetune.errors import SweepLockedError
from moetune.tracking import tags as T
from moetune.tracking.base import SweepLock
from moetune.tracking.mlflow_runs import BATCH


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
