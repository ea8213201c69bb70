"""Datasets by name: the module moetune.data.<name> exposes load(**params) -> MultiTaskData."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from moetune.data.base import MultiTaskData, Split, Task, split_indices
from moetune.errors import ConfigError

__all__ = ["MultiTaskData", "Split", "Task", "available_datasets", "load_dataset", "split_indices"]

_NOT_DATASETS = {"base"}


def available_datasets() -> list[str]:
    return sorted(
        m.name for m in pkgutil.iter_modules(__path__) if m.name not in _NOT_DATASETS and not m.name.startswith("_")
    )


def load_dataset(name: str, **params) -> MultiTaskData:
    """Load dataset `name` with its params; unknown names and params are ConfigErrors."""
    if name not in available_datasets():
        raise ConfigError(f"unknown dataset {name!r}; choose one of {available_datasets()}")
    module = importlib.import_module(f"moetune.data.{name}")
    try:
        inspect.signature(module.load).bind(**params)
    except TypeError as exc:
        raise ConfigError(f"dataset {name!r}: {exc}; see conf/dataset/{name}.yaml for its parameters") from exc
    return module.load(**params).validate()
