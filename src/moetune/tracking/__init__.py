"""Tracking: where studies and trials are recorded (driver side only), and read back for the report.

A backend is one module with a ``Tracking`` and a ``StudyRecord`` (moetune.tracking.base) and one config
file, conf/tracking/<name>.yaml, naming its class (``_target_``) and its own keys; ``build_tracking``
is the one place a backend is made, for a sweep (Hydra's ``tracking`` node) and for ``moetune export``.
"""

from collections.abc import Mapping
from typing import Any

from moetune.errors import ConfigError, first_line
from moetune.tracking.base import (
    LedgerEntry,
    RecordedStudy,
    RecordedSweep,
    RecordedTrial,
    StudyRecord,
    SweepLock,
    Tracking,
)


def build_tracking(node: Mapping[str, Any], experiment: str | None = None) -> Tracking:
    """The backend a tracking node names (``_target_`` plus its keys), fixed to one experiment (the sweep's
    name: ``experiment``, else the node's own). Any failure is one ConfigError line."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    node = dict(node)
    if experiment is not None:
        node["experiment"] = experiment
    if not node.get("_target_"):
        raise ConfigError("tracking has no _target_; choose a backend with tracking=mlflow (conf/tracking/)")
    try:
        tracking = instantiate(node)
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        raise ConfigError(f"tracking {node['_target_']}: {first_line(cause)}; see conf/tracking/") from None
    if not isinstance(tracking, Tracking):
        raise ConfigError(f"tracking._target_ {node['_target_']!r} is not a moetune.tracking.Tracking")
    return tracking


__all__ = [
    "LedgerEntry",
    "RecordedStudy",
    "RecordedSweep",
    "RecordedTrial",
    "StudyRecord",
    "SweepLock",
    "Tracking",
    "build_tracking",
]
