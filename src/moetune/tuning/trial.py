"""The Ray Tune trainable: what runs in a trial worker. It imports only what training needs (no MLflow,
Hydra, Optuna or plotting), which keeps each worker's start short, and reports by moetune.contract."""

from __future__ import annotations

import json
from typing import Any

import ray
import torch
from ray import tune

from moetune.config import StudyConfig
from moetune.contract import NODE, STOPPED_AT, WEIGHTS_ERROR, EpochReport
from moetune.data import MultiTaskData, load_dataset
from moetune.training import Trainer
from moetune.tuning.weights import send_weights, weights_key

STUDY, NUMBER = "moetune.study", "moetune.trial"  # keys of a trial's config naming its study and number

_DATA_CACHE: dict[str, MultiTaskData] = {}


def cached_dataset(params: dict) -> MultiTaskData:
    """Load a dataset once per process (Ray reuses trial actors, so once per worker)."""
    key = json.dumps(params, sort_keys=True, default=str)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = load_dataset(**params)
    return _DATA_CACHE[key]


def run_trial(
    trial_config: dict[str, Any],
    studies: dict[str, StudyConfig],
    inits: dict[str, dict[str, torch.Tensor]] | None = None,
    inbox: Any = None,
    rungs: Any = None,
) -> None:
    """Train one sampled configuration of its study: an EpochReport every epoch, then the FinalReport.
    ``inits``: the dense checkpoint of each upcycled study (model.init_from), loaded and checked by the
    driver; ``inbox``: where a study with train.save_weights hands its best weights (moetune.tuning.weights);
    ``rungs``: the handle of the scheduler's actor (moetune.tuning.scheduler.RungsActor, studies with
    scheduler=asha|hyperband), asked after each epoch whether the trial goes on. A trial it stops restores
    its best epoch, is tested there and sends its FinalReport with the epoch it stopped at (STOPPED_AT)."""
    key, number = trial_config[STUDY], trial_config[NUMBER]
    study = studies[key]
    sampled = {k: v for k, v in trial_config.items() if k not in (STUDY, NUMBER)}
    torch.set_num_threads(max(1, int(study.tuner.cpus_per_trial)))
    config = study.for_trial(sampled)
    selection = study.tuner.metric
    data = cached_dataset(config.dataset)
    init = (inits or {}).get(key)
    trainer = Trainer(data, config.model, config.gate, config.local_search, config.train, init_state=init)
    scheduled = rungs is not None and study.scheduler.enabled

    def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
        tune.report(EpochReport(epoch, metrics).to_tune(selection))
        return scheduled and bool(ray.get(rungs.report.remote(key, number, epoch, metrics[selection])))

    result = trainer.fit(on_epoch=on_epoch)
    report = result.report()
    if result.stopped_at is not None:
        report.diagnostics[STOPPED_AT] = result.stopped_at
    report.diagnostics[NODE] = ray.get_runtime_context().get_node_id()  # where it ran, on a cluster
    if config.train.save_weights:  # the best epoch's weights: fit restored them
        error = send_weights(inbox, weights_key(key, number), trainer.model) if inbox is not None else "no inbox"
        if error is not None:
            report.diagnostics[WEIGHTS_ERROR] = error
    tune.report(report.to_tune(selection))
