"""Starting or joining Ray once per driver process, and checking a study fits in its resources."""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

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


def start_ray(tuner: TunerConfig) -> dict[str, float]:
    """Start (or join) Ray once per process and check the sweep fits in its resources (a local instance's
    were checked before anything was written, with ``local_resources``; a cluster's are known once joined).
    The cluster's address was probed before anything was written too (``check_ray_address``)."""
    if not ray.is_initialized():
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # workers keep the driver's working directory
        # no per-result CSV, JSON and TensorBoard files from Tune: written on the driver's loop for every epoch
        # report (the next trial waits on them), and the sweep's record is the tracking store
        os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)  # a failed trial gets one line from us
        kwargs: dict[str, Any] = dict(
            include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="ERROR"
        )
        if tuner.ray_address:
            ray.init(address=tuner.ray_address, **kwargs)
        else:
            _local_only()
            resources = local_resources()
            ray.init(num_cpus=int(resources["CPU"]), num_gpus=int(resources["GPU"]), **kwargs)
    resources = ray.cluster_resources()
    check_fits(tuner, resources)
    return resources


def stop_ray() -> None:
    """Disconnect from Ray, and stop a local instance's processes, once the sweep is over (the export needs no
    Ray): Ray's own exit hook would first sleep half a second. Not in a thread beside the export: Ray's shutdown
    resets SIGTERM to its default action, so it must come before the export installs its signal handlers."""
    if ray.is_initialized():
        ray.shutdown()
