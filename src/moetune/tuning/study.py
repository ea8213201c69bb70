"""One study = one Hydra job: Ray Tune runs Optuna-sampled trials in parallel, the tracker records them.

The driver validates everything first (config, search space, sampler, data, tracking store, Ray
resources), so bad input fails with one line and nothing written to the tracking store.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import optuna
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from ray import tune

from moetune.config import StudyConfig, check_tasks, weights_label
from moetune.data import load_dataset
from moetune.moe import MMoE
from moetune.tracking import Tracking
from moetune.tracking import tags as T
from moetune.tuning.callback import StudyRecorder, recording
from moetune.tuning.hydra_config import load_study
from moetune.tuning.ray_runtime import start_ray
from moetune.tuning.searcher import build_sampler, make_searcher
from moetune.tuning.trial import run_trial


def _absolute_paths(config: StudyConfig) -> StudyConfig:
    """Trial workers may run on other machines or folders: send the dataset's paths absolute."""
    dataset = dict(config.dataset)
    for key in ("path", "cache_dir"):
        if isinstance(dataset.get(key), str):
            dataset[key] = str(Path(dataset[key]).expanduser().resolve())
    return dataclasses.replace(config, dataset=dataset)


def study_tags(config: StudyConfig) -> dict[str, str]:
    return {
        T.GATE: config.gate.name,
        T.LOCAL_SEARCH: config.local_search.name,
        T.DATASET: config.dataset["name"],
        T.TASK_WEIGHTS: weights_label(config.train.task_weights),
        T.SAMPLER: config.sampler_name,
        T.SEED: str(config.seed),
        T.SWEEP: config.sweep.name,
        T.HEADLINE_METRIC: "test_" + config.tuner.metric.removeprefix("val_"),
    }


def run_study(cfg: DictConfig, sweep_dir: Path) -> dict[str, Any]:
    """Validate, then run (or resume) one study. Returns its summary."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    config, space = load_study(cfg)
    config = _absolute_paths(config)
    data = load_dataset(**config.dataset)
    check_tasks(config, len(data.tasks))
    trial = config.for_trial()
    MMoE(data, trial.model, trial.gate, trial.local_search)  # catches a gate or expert that does not fit the data
    build_sampler(config)
    tracking: Tracking = instantiate(dataclasses.asdict(config.tracking))
    tracking.check()
    start_ray(config.tuner)

    key, tuner_cfg = config.study_key, config.tuner
    record = tracking.open_study(
        key, study_tags(config), {k: str(v) for k, v in space.items()}, OmegaConf.to_yaml(cfg, resolve=True)
    )
    recorder = StudyRecorder(record, tuner_cfg.n_trials, key, tuner_cfg.metric, tuner_cfg.mode)
    storage = (sweep_dir / "ray").resolve()
    experiment_path = storage / key
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, study=config),
        {"cpu": tuner_cfg.cpus_per_trial, "gpu": tuner_cfg.gpus_per_trial},
    )
    complete = False
    with recording(recorder) as callback:
        if tune.Tuner.can_restore(str(experiment_path)):
            print(f"[{key}] resuming from {experiment_path}", flush=True)
            tuner = tune.Tuner.restore(
                str(experiment_path), trainable, resume_unfinished=True, resume_errored=False, restart_errored=False
            )
        else:
            tune_config = tune.TuneConfig(
                search_alg=make_searcher(config, space),
                num_samples=tuner_cfg.n_trials,
                reuse_actors=True,
                max_concurrent_trials=tuner_cfg.concurrency,
            )
            run_config = tune.RunConfig(name=key, storage_path=str(storage), callbacks=[callback], verbose=0)
            tuner = tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)
        try:
            tuner.fit()
            finished, failed = record.counts()
            complete = finished + failed >= tuner_cfg.n_trials
        finally:
            finished, failed = record.counts()
            summary = {"trials_finished": finished, "trials_failed": failed}
            if recorder.best is not None:
                summary[f"best_{tuner_cfg.metric}"] = recorder.best
            record.close(summary, complete)
    if not complete:
        raise KeyboardInterrupt(
            f"study {key} interrupted with {finished + failed}/{tuner_cfg.n_trials} trials done; "
            f"re-run the same command with sweep.name={config.sweep.name} to resume"
        )
    return {"study": key, **summary}
