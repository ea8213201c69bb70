"""Planning a sweep on the driver, before anything is written or started: each Hydra job's config
validated into a ``PlannedStudy`` (config, search space, data and model checked, a dense checkpoint
loaded), the studies checked against each other, and the tags each study's record carries."""

from __future__ import annotations

import dataclasses
import io
import json
import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from moetune.config import StudyConfig, check_tasks, weights_label
from moetune.data import MultiTaskData, load_dataset
from moetune.errors import ConfigError, first_line
from moetune.moe import MMoE
from moetune.moe.upcycle import check_checkpoint
from moetune.tracking import build_tracking
from moetune.tracking import tags as T
from moetune.tuning.hydra_config import load_study
from moetune.tuning.search_space import Space
from moetune.tuning.searcher import build_sampler

# settings of the sweep as a whole: every study of a multirun must agree on them
SWEEP_SETTINGS = (
    "sweep",
    "tracking",
    "tuner.concurrency",
    "tuner.cpus_per_trial",
    "tuner.gpus_per_trial",
    "tuner.ray_address",
)


@dataclasses.dataclass
class PlannedStudy:
    """A study validated on the driver, before anything is written or started."""

    config: StudyConfig
    space: Space
    config_yaml: str
    init_state: dict[str, torch.Tensor] | None = None  # the dense checkpoint model.init_from names, checked
    init_source: str | None = None  # which checkpoint that is, in words

    @property
    def key(self) -> str:
        return self.config.study_key


def _absolute_paths(config: StudyConfig) -> StudyConfig:
    """Trial workers may run on other machines or folders: send the dataset's paths absolute."""
    dataset = dict(config.dataset)
    for key in ("path", "cache_dir"):
        if isinstance(dataset.get(key), str):
            dataset[key] = str(Path(dataset[key]).expanduser().resolve())
    return dataclasses.replace(config, dataset=dataset)


def load_checkpoint(config: StudyConfig) -> tuple[dict[str, torch.Tensor], str]:
    """The state dict ``model.init_from`` names: a checkpoint file, or an MLflow run id in the study's
    tracking store (a trial run with saved weights, or a study run: its best trial with saved weights).
    Reads only; every failure is one ConfigError line naming the problem and the fix."""
    ref = str(config.model.init_from)
    path = Path(ref).expanduser()
    try:
        if path.is_file():
            data, source = path.read_bytes(), str(path.resolve())
        elif path.suffix or "/" in ref or os.sep in ref or ref.startswith((".", "~")):
            raise ConfigError(f"no checkpoint file {path}; give an existing file or an MLflow run id")
        else:
            tracking = build_tracking(config.tracking)
            data, source = tracking.load_weights(ref)
    except OSError as exc:
        raise ConfigError(f"model.init_from={ref}: cannot read {path} ({exc.strerror}); fix its permissions") from None
    except ConfigError as exc:
        raise ConfigError(f"model.init_from={ref}: {exc}") from None
    try:
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        first = first_line(exc)
        raise ConfigError(
            f"model.init_from={ref}: {source} is not a torch checkpoint ({first}); give a file saved with "
            "torch.save(model.state_dict()) or a run saved with train.save_weights=true"
        ) from None
    return state, source


def plan_study(
    cfg: DictConfig,
    datasets: dict[str, MultiTaskData] | None = None,
    checkpoints: dict[str, tuple[dict[str, torch.Tensor], str]] | None = None,
) -> PlannedStudy:
    """Validate one composed job config: types and ranges, search space, sampler, data, and the model
    built once on the CPU (catches a gate or expert that does not fit the data); with model.init_from,
    the dense checkpoint loaded (once per multirun: ``checkpoints``) and checked against that model."""
    config, space = load_study(cfg)
    config = _absolute_paths(config)
    datasets = {} if datasets is None else datasets
    data_key = json.dumps(config.dataset, sort_keys=True, default=str)
    if data_key not in datasets:
        datasets[data_key] = load_dataset(**config.dataset)
    data = datasets[data_key]
    check_tasks(config, len(data.tasks))
    trial = config.for_trial()
    model = MMoE(data, trial.model, trial.gate, trial.local_search)
    init_state, init_source = None, None
    if config.model.init_from:
        checkpoints = {} if checkpoints is None else checkpoints
        ref = json.dumps([config.model.init_from, config.tracking], sort_keys=True, default=str)
        if ref not in checkpoints:
            checkpoints[ref] = load_checkpoint(config)
        init_state, init_source = checkpoints[ref]
        check_checkpoint(init_state, model, config.model.init_from)
    build_sampler(config)
    return PlannedStudy(config, space, OmegaConf.to_yaml(cfg, resolve=True), init_state, init_source)


def _setting(config: StudyConfig, dotted: str) -> Any:
    value: Any = config
    for part in dotted.split("."):
        value = getattr(value, part)
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def check_sweep(plans: list[PlannedStudy]) -> None:
    """One driver runs the studies together: they must be distinct and agree on the sweep's settings."""
    for name in SWEEP_SETTINGS:
        values = {json.dumps(_setting(p.config, name), sort_keys=True, default=str) for p in plans}
        if len(values) > 1:
            raise ConfigError(
                f"{name} is a setting of the whole sweep, but its studies differ ({', '.join(sorted(values))}); "
                "run them as separate sweeps"
            )
    keys = [p.key for p in plans]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ConfigError(f"the multirun names study {repeated[0]} more than once; sweep a setting that changes it")


def study_tags(config: StudyConfig) -> dict[str, str]:
    """What a study's record is found and grouped by (moetune.tracking.tags), and how its trials were ranked."""
    tags = {
        T.GATE: config.gate.name,
        T.LOCAL_SEARCH: config.local_search.name,
        T.DATASET: config.dataset["name"],
        T.TASK_WEIGHTS: weights_label(config.train.task_weights),
        T.SAMPLER: config.sampler_name,
        T.SEED: str(config.seed),
        T.SWEEP: config.sweep.name,
        T.HEADLINE_METRIC: "test_" + config.tuner.metric.removeprefix("val_"),
        T.SELECTION_METRIC: config.tuner.selection,
        T.SELECTION_MODE: config.tuner.mode,
    }
    if config.scheduler.enabled:
        tags[T.SCHEDULER] = config.scheduler.name
    return tags
