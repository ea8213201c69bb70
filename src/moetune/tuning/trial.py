"""The Ray Tune trainable: what runs in a trial worker. It imports only what training needs (no MLflow,
Hydra, Optuna or plotting), which keeps each worker's start short, and reports by moetune.contract."""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import ray
import torch
from ray import tune

from moetune.config import StudyConfig
from moetune.contract import NODE, STOPPED_AT, WEIGHTS_ERROR, EpochReport, FinalReport, epochs_to_tune
from moetune.data import MultiTaskData, load_dataset
from moetune.training import Trainer
from moetune.tuning.weights import send_weights, weights_key

STUDY, NUMBER = "moetune.study", "moetune.trial"  # keys of a trial's config naming its study and number
REPORT_SECONDS = 5.0  # a trial's epochs go to Tune at most this often (and with its final report)

_DATA_CACHE: dict[str, MultiTaskData] = {}


def cached_dataset(params: dict) -> MultiTaskData:
    """Load a dataset once per process (Ray reuses trial actors, so once per worker)."""
    key = json.dumps(params, sort_keys=True, default=str)
    if key not in _DATA_CACHE:
        _DATA_CACHE.clear()
        _DATA_CACHE[key] = load_dataset(**params)
    return _DATA_CACHE[key]


class EpochSender:
    """A trial's epochs to Tune in batches: Tune holds a trial at every report until the driver's loop has
    taken it (tens of milliseconds), which for one report per epoch of a short trial costs more than its
    training. A batch goes at most every ``every`` seconds; the final report carries the epochs left, and a
    trial that raises inside ``with sender:`` sends them first, so its record keeps the epochs before the
    failure."""

    def __init__(
        self,
        selection: str,
        send: Callable[[dict[str, Any]], None] = tune.report,
        every: float = REPORT_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.selection, self.send, self.every, self.clock = selection, send, every, clock
        self.pending: list[EpochReport] = []
        self.sent_at = clock()

    def epoch(self, epoch: int, metrics: dict[str, float]) -> None:
        self.pending.append(EpochReport(epoch, metrics))
        if self.clock() - self.sent_at >= self.every:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            self.send(epochs_to_tune(self.pending, self.selection))
        self.pending, self.sent_at = [], self.clock()

    def final(self, report: FinalReport) -> None:
        self.send(report.to_tune(self.selection, self.pending))
        self.pending = []

    def __enter__(self) -> EpochSender:
        return self

    def __exit__(self, kind: type[BaseException] | None, *exc: object) -> None:
        if kind is not None and issubclass(kind, Exception):
            with contextlib.suppress(Exception):  # the trial's own error is what gets recorded
                self.flush()


def run_trial(
    trial_config: dict[str, Any],
    studies: dict[str, StudyConfig],
    inits: dict[str, dict[str, torch.Tensor]] | None = None,
    inbox: Any = None,
    rungs: Any = None,
) -> None:
    """Train one sampled configuration of its study: its EpochReports (in batches), then the FinalReport.
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
    sender = EpochSender(selection)

    def on_epoch(epoch: int, metrics: dict[str, float]) -> bool:
        sender.epoch(epoch, metrics)
        return scheduled and bool(ray.get(rungs.report.remote(key, number, epoch, metrics[selection])))

    with sender:
        result = trainer.fit(on_epoch=on_epoch)
    report = result.report()
    if result.stopped_at is not None:
        report.diagnostics[STOPPED_AT] = result.stopped_at
    report.diagnostics[NODE] = ray.get_runtime_context().get_node_id()  # where it ran, on a cluster
    if config.train.save_weights:  # the best epoch's weights: fit restored them
        error = send_weights(inbox, weights_key(key, number), trainer.model) if inbox is not None else "no inbox"
        if error is not None:
            report.diagnostics[WEIGHTS_ERROR] = error
    sender.final(report)
