"""The Ray Tune trainable. Kept apart from the driver's modules so trial workers import only what training
needs (no MLflow, Hydra or plotting), which keeps each worker's start short."""
from __future__ import annotations

import json
from typing import Any

import torch
from ray import tune

from moetune import schema
from moetune.config import apply_sampled, training_configs
from moetune.data import MultiTaskData, load_dataset
from moetune.training import Trainer

FINAL = "final"  # marks the last result a trial reports: its final metrics
DIAGNOSTICS = "diagnostics_json"

_DATA_CACHE: dict[str, MultiTaskData] = {}


def cached_dataset(params: dict) -> MultiTaskData:
    """Load a dataset once per process (Ray reuses trial actors, so once per worker)."""
    key = json.dumps(params, sort_keys=True, default=str)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = load_dataset(**params)
    return _DATA_CACHE[key]


def run_trial(sampled: dict[str, Any], base: dict) -> None:
    """The Ray Tune trainable: train one sampled configuration, report every epoch, then the final metrics."""
    torch.set_num_threads(max(1, int(base["tuner"]["cpus_per_trial"])))
    cfg = apply_sampled(base, sampled)
    data = cached_dataset(cfg["dataset"])
    model_cfg, gate_cfg, ls_cfg, train_cfg = training_configs(cfg)
    trainer = Trainer(data, model_cfg, gate_cfg, ls_cfg, train_cfg)
    result = trainer.fit(on_epoch=lambda epoch, metrics: tune.report({"epoch": epoch, **metrics}))
    tune.report({**result.final_metrics(), schema.VAL_LOSS: result.val[schema.VAL_LOSS], FINAL: 1,
                 DIAGNOSTICS: json.dumps(result.diagnostics)})
