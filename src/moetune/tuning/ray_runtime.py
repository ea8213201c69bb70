"""Starting or joining Ray once per driver process (in a thread of its own, which stops it too), and checking a
study fits in its resources."""

from __future__ import annotations

import atexit
import gc
import logging
import os
import socket
import threading
from concurrent.futures import Future

import ray

from moetune.config import TunerConfig
from moetune.errors import ConfigError


def check_ray_address(address: str | None) -> None:
    """A quick TCP probe so an unreachable Ray address fails in seconds with one line."""
    if not address or address == "auto":
        return
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=5):
            pass
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"tuner.ray_address {address!r} is unreachable ({exc}); start the cluster or set tuner.ray_address=null"
        ) from None


def _local_only() -> None:
    """Ray's local-only mode (its default on macOS and Windows): the node's address is 127.0.0.1, so the
    GCS, raylet, workers and agents it starts listen on loopback only. Ray has no authentication, and
    joining a cluster is the explicit ``tuner.ray_address``. Ray reads the switch when imported (this
    process) and when its processes start (the environment they inherit)."""
    from ray._private import ray_constants

    os.environ[ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False


def _no_crash_handler() -> None:
    """Ray's C++ crash handler (stack traces on SIGSEGV and the like) also takes SIGTERM in this process, and
    sets it back to the default when Ray stops: Ray stops while the export runs (``RayThread``), and a SIGTERM
    then would kill the command instead of stopping it cleanly (moetune.tuning.signals). Only the driver goes
    without it; Ray's own processes keep theirs."""
    from ray._private import ray_constants

    ray_constants.RAY_DISABLE_FAILURE_SIGNAL_HANDLER = True


def local_resources() -> dict[str, float]:
    """What a Ray instance moetune starts on this machine gets: every CPU, every CUDA GPU torch sees."""
    import torch

    return {"CPU": float(os.cpu_count() or 1), "GPU": float(torch.cuda.device_count())}


def check_fits(tuner: TunerConfig, resources: dict[str, float]) -> None:
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    need_cpu = tuner.concurrency * tuner.cpus_per_trial
    need_gpu = tuner.concurrency * tuner.gpus_per_trial
    if need_cpu > cpus or need_gpu > gpus:
        raise ConfigError(
            f"tuner.concurrency={tuner.concurrency} needs {need_cpu:g} CPUs and {need_gpu:g} GPUs "
            f"but Ray has {cpus:g} CPUs and {gpus:g} GPUs; lower tuner.concurrency or the per-trial resources"
        )


# Tune runs each trial's actor in a placement group, which Ray gives a worker started for it: the idle
# worker per CPU that Ray starts for a new instance's first driver would only take CPU from the driver's
# start-up and then be stopped unused
NO_PRESTART = {"prestart_worker_first_driver": False}


def start_ray(tuner: TunerConfig) -> dict[str, float]:
    """Start (or join) Ray once per process; returns its resources (``RayThread.wait`` checks the sweep fits in
    them: a local instance's were checked before anything was written, with ``local_resources``; a cluster's
    are known once joined). The cluster's address was probed before anything was written too
    (``check_ray_address``)."""
    if not ray.is_initialized():
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # workers keep the driver's working directory
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)  # a failed trial gets one line from us
        _no_crash_handler()
        kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="ERROR")
        if tuner.ray_address:
            ray.init(address=tuner.ray_address, **kwargs)
        else:
            _local_only()
            resources = local_resources()
            cpus, gpus = int(resources["CPU"]), int(resources["GPU"])
            ray.init(num_cpus=cpus, num_gpus=gpus, _system_config=NO_PRESTART, **kwargs)
    return ray.cluster_resources()


class RayThread:
    """This process's Ray, started and stopped by a thread of its own, beside the driver's work.

    ray.init mostly waits for Ray's processes to come up: time the driver spends opening its records (the
    MLflow store's creation, the first time). Stopping Ray takes seconds too (each process gets a SIGTERM and
    up to a second to exit), which the export can use (``stop_ray``). The thread lives until Ray stops: Linux
    ends a process's children when the thread that started them ends (Ray asks for that, so that its
    processes never outlive the driver). The studies of a multirun run one by one share it; it is stopped at
    exit at the latest, before Ray's own exit handler runs.
    """

    _current: RayThread | None = None  # this process's

    def __init__(self, tuner: TunerConfig) -> None:
        self.started: Future[dict[str, float]] = Future()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(tuner,), name="moetune-ray", daemon=True)
        self._thread.start()
        atexit.register(self.stop, wait=True)  # Ray's own exit handler, registered before, runs after

    @classmethod
    def start(cls, tuner: TunerConfig) -> RayThread:
        """This process's Ray thread: a new one unless one is up or coming up."""
        current = cls._current
        if current is None or current._stop.is_set() or (current.started.done() and current.started.exception()):
            if current is not None:
                current.stop(wait=True)
            cls._current = current = cls(tuner)
        return current

    def _run(self, tuner: TunerConfig) -> None:
        owner = not ray.is_initialized()  # a Ray the caller started is theirs to stop
        try:
            self.started.set_result(start_ray(tuner))
        except Exception as exc:
            self.started.set_exception(exc)
        self._stop.wait()
        try:
            if owner and ray.is_initialized():
                ray.shutdown()
        finally:
            gc.enable()

    def wait(self, tuner: TunerConfig) -> dict[str, float]:
        """Ray's resources once it is up (or the error that stopped it), checked against the sweep's needs."""
        resources = self.started.result()
        check_fits(tuner, resources)
        return resources

    def stop(self, wait: bool = False) -> None:
        """Stop Ray, once up, in the background (``wait``: and wait for it)."""
        if not self._stop.is_set():
            # no garbage collection while the thread disconnects from Ray: one would free Ray's objects this
            # process dropped (in reference cycles) against a half-stopped Ray; the thread turns it back on
            gc.disable()
            self._stop.set()
        if wait:
            self._thread.join()


def stop_ray() -> None:
    """Stop this process's Ray in the background (a multirun's trials are done), if moetune started it."""
    if RayThread._current is not None:
        RayThread._current.stop()
