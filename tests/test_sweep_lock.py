"""The sweep lock on a real sqlite MLflow store, stop signals, and the resource check (fast: no Ray, no sweep)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from moetune.errors import SweepLockedError
from moetune.tracking import tags as T
from moetune.tracking.mlflow_store import MlflowSweepLock, MlflowTracking
from moetune.tuning.signals import StopSignals


@pytest.fixture
def tracking(tmp_path) -> MlflowTracking:
    return MlflowTracking(
        f"sqlite:///{tmp_path}/mlflow.db", artifact_root=str(tmp_path / "artifacts"), experiment="locked"
    )


def _foreign_driver(tracking: MlflowTracking, heartbeat_age: float) -> str:
    """A lock run left by a driver on another host (its PID cannot be checked from here)."""
    experiment_id = tracking._experiment_id()
    tags = {
        T.ROLE: T.DRIVER,
        T.DRIVER_PID: "4242",
        T.DRIVER_HOST: "elsewhere",
        T.DRIVER_HEARTBEAT: f"{time.time() - heartbeat_age:.0f}",
    }
    return tracking.client.create_run(experiment_id, tags=tags, run_name="driver pid 4242").info.run_id


def _drivers(tracking: MlflowTracking) -> list:
    experiment_id = tracking._experiment_id()
    return tracking.client.search_runs([experiment_id], f"tags.`{T.ROLE}` = '{T.DRIVER}'")


def test_second_lock_is_refused_naming_the_holder_and_released_locks_are_gone(tracking):
    with tracking.lock_sweep():
        with pytest.raises(SweepLockedError, match=f"pid {os.getpid()} on "):
            tracking.lock_sweep()
        assert len(_drivers(tracking)) == 1  # the refused driver removed its own attempt
    assert _drivers(tracking) == []
    with tracking.lock_sweep():  # free again
        pass


def test_live_foreign_lock_is_refused_and_a_stale_one_taken_over(tracking):
    live = _foreign_driver(tracking, heartbeat_age=5)
    with pytest.raises(SweepLockedError, match=r"pid 4242 on elsewhere, heartbeat [5-9]s ago"):  # 5 s + the wait
        tracking.lock_sweep()
    tracking.client.delete_run(live)
    _foreign_driver(tracking, heartbeat_age=MlflowSweepLock.STALE_SECONDS + 5)
    with tracking.lock_sweep():
        holders = _drivers(tracking)
        assert [r.data.tags[T.DRIVER_PID] for r in holders] == [str(os.getpid())]


def test_lock_of_a_dead_process_on_this_host_is_taken_over_at_once(tracking):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    experiment_id = tracking._experiment_id()
    tags = {
        T.ROLE: T.DRIVER,
        T.DRIVER_PID: dead.stdout.strip(),
        T.DRIVER_HOST: socket.gethostname(),
        T.DRIVER_HEARTBEAT: f"{time.time():.0f}",  # fresh: only the dead PID says it is stale
    }
    tracking.client.create_run(experiment_id, tags=tags)
    with tracking.lock_sweep():
        assert [r.data.tags[T.DRIVER_PID] for r in _drivers(tracking)] == [str(os.getpid())]


@pytest.mark.parametrize(("signum", "code"), [(signal.SIGTERM, 143), (signal.SIGHUP, 130)])
def test_sigterm_and_sighup_stop_like_ctrl_c(signum, code):
    before = signal.getsignal(signum)
    with StopSignals() as signals:
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signum)
            time.sleep(1)  # the handler runs between bytecodes
        assert signals.exit_code == code
    assert signal.getsignal(signum) is before


def test_stop_signal_goes_to_the_sigint_handler_in_force():
    """During a Tune fit SIGINT is Tune's (stop the trials, return from fit): SIGTERM must reach it too."""
    calls = []
    previous = signal.signal(signal.SIGINT, lambda s, f: calls.append(s))
    try:
        with StopSignals() as signals:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
        assert calls == [signal.SIGINT] and signals.exit_code == 143
    finally:
        signal.signal(signal.SIGINT, previous)


def test_fractional_gpus_share_a_gpu_and_an_overfull_request_is_one_line():
    from moetune.config import TunerConfig
    from moetune.errors import ConfigError
    from moetune.tuning.ray_runtime import check_fits

    one_gpu = {"CPU": 16.0, "GPU": 1.0}
    check_fits(TunerConfig(concurrency=4, cpus_per_trial=2, gpus_per_trial=0.25), one_gpu)  # four trials per GPU
    with pytest.raises(ConfigError, match="needs 16 CPUs and 2 GPUs but Ray has 16 CPUs and 1 GPUs"):
        check_fits(TunerConfig(concurrency=8, cpus_per_trial=2, gpus_per_trial=0.25), one_gpu)
