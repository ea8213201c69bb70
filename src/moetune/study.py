"""One study = one Hydra job: Ray Tune runs Optuna-sampled trials in parallel, MLflow records them.

The driver validates everything first (config, search space, data, tracking store, Ray resources), so
bad input fails with one line and nothing written to the tracking store. Trials report per-epoch
metrics to Tune; a driver-side callback writes them to MLflow and prints a progress line.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import ray
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig, OmegaConf
from ray import tune
from ray.tune.search import ConcurrencyLimiter, Searcher
from ray.tune.search.optuna import OptunaSearch

from moetune import schema
from moetune.config import StudyConfig, load_study_config, training_configs, trial_seed, weights_label
from moetune.data import load_dataset
from moetune.errors import ConfigError, MoetuneError
from moetune.tracking import StudyTracker, check_tracking_uri
from moetune.trial import DIAGNOSTICS, FINAL, run_trial
from moetune.training import Trainer, validate_train_config

class TrackingCallback(tune.Callback):
    """Driver side: trial lifecycle -> MLflow child runs, plus a live progress line for the study."""

    def __init__(self, tracker: StudyTracker, n_trials: int, label: str, metric: str, mode: str):
        self.tracker, self.n_trials, self.label = tracker, n_trials, label
        self.metric, self.mode = metric, mode
        self.best: float | None = None
        self.started = time.time()
        self.done_at_start = sum(tracker.counts())
        self.last_print = 0.0

    def on_trial_start(self, iteration, trials, trial, **info):
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in trial.config.items()}
        self.tracker.start_trial(trial.trial_id, params)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        if self.tracker.is_done(trial.trial_id):
            return
        if result.get(FINAL):
            return  # logged on completion, with the run's end
        metrics = {k: v for k, v in result.items()
                   if k in (schema.TRAIN_LOSS, schema.VAL_LOSS) or (k.startswith("val_") and isinstance(v, (int, float)))}
        self.tracker.log_epoch(trial.trial_id, int(result["epoch"]), metrics)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.record_complete(trial.trial_id, trial.last_result)
        self.print_progress(force=True)

    def record_complete(self, trial_id: str, result: dict) -> None:
        if self.tracker.is_done(trial_id):
            return
        if not result or not result.get(FINAL):
            return  # stopped before its end (an interrupt): closed as KILLED, re-run on resume
        final_keys = [k for k in result if k.startswith(("best_", "test_")) or k in
                      (schema.WALL_SECONDS, schema.CPU_SECONDS, schema.ACTIVE_EXPERTS, "routing_nmi")]
        metrics = {k: result[k] for k in final_keys if isinstance(result[k], (int, float))}
        self.tracker.finish_trial(trial_id, metrics, json.loads(result[DIAGNOSTICS]))
        value = result.get(self.metric)
        if value is not None and (self.best is None or (value < self.best if self.mode == "min" else value > self.best)):
            self.best = value

    def on_trial_error(self, iteration, trials, trial, **info):
        message = trial_error_message(trial)
        self.record_error(trial.trial_id, message)
        print(f"[{self.label}] trial-{self.tracker.child_index.get(trial.trial_id, -1):03d} FAILED: {message}", flush=True)
        self.print_progress(force=True)

    def record_error(self, trial_id: str, message: str) -> None:
        if not self.tracker.is_done(trial_id):
            self.tracker.fail_trial(trial_id, message)

    def on_step_end(self, iteration, trials, **info):
        self.print_progress()

    def print_progress(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self.last_print < 10:
            return
        self.last_print = now
        finished, failed = self.tracker.counts()
        done = finished + failed
        elapsed = now - self.started
        new = done - self.done_at_start
        eta = f"{elapsed / new * (self.n_trials - done):.0f}s" if new > 0 else "?"
        best = f"{self.best:.4f}" if self.best is not None else "-"
        print(f"[{self.label}] {done}/{self.n_trials} trials done, {failed} failed, best {self.metric} {best}, "
              f"elapsed {elapsed:.0f}s, ETA {eta}", flush=True)


def trial_error_message(trial) -> str:
    """The last line of the trial's error: the exception's own message (e.g. training diverged at epoch 3: ...)."""
    text = ""
    path = getattr(trial, "error_file", None) or ""
    if path and os.path.exists(path):
        text = Path(path).read_text()
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "trial failed (no error message recorded)"


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
        raise ConfigError(f"tuner.ray_address {address!r} is unreachable ({exc}); start the cluster or set tuner.ray_address=null") from None


def start_ray(tuner: dict) -> dict[str, float]:
    """Start (or join) Ray once per process and check the study fits in its resources."""
    check_ray_address(tuner["ray_address"])
    if not ray.is_initialized():
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
        os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")  # workers keep the driver's working directory
        logging.getLogger("ray.tune").setLevel(logging.CRITICAL)  # failed trials get one line from us, not a traceback
        kwargs = dict(include_dashboard=False, log_to_driver=False, configure_logging=True, logging_level="ERROR")
        if tuner["ray_address"]:
            ray.init(address=tuner["ray_address"], **kwargs)
        else:
            ray.init(num_cpus=os.cpu_count(), **kwargs)
    resources = ray.cluster_resources()
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    need_cpu = tuner["concurrency"] * tuner["cpus_per_trial"]
    need_gpu = tuner["concurrency"] * tuner["gpus_per_trial"]
    if need_cpu > cpus or need_gpu > gpus:
        raise ConfigError(f"tuner.concurrency={tuner['concurrency']} needs {need_cpu:g} CPUs and {need_gpu:g} GPUs "
                          f"but Ray has {cpus:g} CPUs and {gpus:g} GPUs; lower tuner.concurrency or the per-trial resources")
    return resources


class SeededTrials(Searcher):
    """Gives every suggested trial its own seed, train.seed = trial_seed(study seed, trial number).

    The seed travels in the trial's config, so it is logged with the sampled parameters and a re-run of
    the trial with them reproduces it; the count of suggestions is saved with the searcher on resume."""

    def __init__(self, searcher: Searcher, study_seed: int):
        self.searcher, self.study_seed, self.suggested = searcher, study_seed, 0
        super().__init__(metric=searcher.metric, mode=searcher.mode)

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return self.searcher.set_search_properties(metric, mode, config, **spec)

    def suggest(self, trial_id: str):
        config = self.searcher.suggest(trial_id)
        if config is None or config == Searcher.FINISHED:
            return config
        config = {**config, "train.seed": trial_seed(self.study_seed, self.suggested)}
        self.suggested += 1
        return config

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        self.searcher.on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        self.searcher.on_trial_complete(trial_id, result=result, error=error)

    # Ray saves a wrapper's own state (get_state) beside its base searcher's (save), and restores both
    def get_state(self) -> dict:
        return {"study_seed": self.study_seed, "suggested": self.suggested}

    def set_state(self, state: dict) -> None:
        self.study_seed, self.suggested = state["study_seed"], state["suggested"]

    def save(self, checkpoint_path: str) -> None:
        self.searcher.save(checkpoint_path)

    def restore(self, checkpoint_path: str) -> None:
        self.searcher.restore(checkpoint_path)


def make_searcher(study: StudyConfig) -> ConcurrencyLimiter:
    tuner = study.plain["tuner"]
    sampler = (optuna.samplers.RandomSampler(seed=tuner["sampler_seed"]) if tuner["sampler"] == "random"
               else optuna.samplers.TPESampler(seed=tuner["sampler_seed"]))
    search = OptunaSearch(space=study.search_space, metric=tuner["metric"], mode=tuner["mode"], sampler=sampler)
    return ConcurrencyLimiter(SeededTrials(search, study.plain["seed"]), max_concurrent=tuner["concurrency"])


def run_study(cfg: DictConfig, sweep_dir: Path) -> dict[str, Any]:
    """Validate, then run (or resume) one study. Returns its summary."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = load_study_config(cfg)
    plain = study.plain
    for key in ("path", "cache_dir"):  # trial workers may run elsewhere: send absolute paths
        if isinstance(plain["dataset"].get(key), str):
            plain["dataset"][key] = str(Path(plain["dataset"][key]).expanduser().resolve())
    data = load_dataset(**plain["dataset"])
    model_cfg, gate_cfg, ls_cfg, train_cfg = training_configs(plain)
    validate_train_config(train_cfg, len(data.tasks), ls_cfg)
    Trainer(data, model_cfg, gate_cfg, ls_cfg, train_cfg)  # builds the model once: catches gate/data mismatches
    check_tracking_uri(plain["tracking"]["uri"])
    start_ray(plain["tuner"])

    tuner_cfg = plain["tuner"]
    tags = {schema.GATE: gate_cfg.name, schema.LOCAL_SEARCH: plain["local_search"]["name"],
            schema.DATASET: plain["dataset"]["name"], schema.TASK_WEIGHTS: weights_label(train_cfg.task_weights),
            schema.SAMPLER: tuner_cfg["sampler"], schema.SEED: str(plain["seed"]), schema.SWEEP: plain["sweep"]["name"],
            schema.HEADLINE_METRIC: "test_" + tuner_cfg["metric"].removeprefix("val_")}
    tracker = StudyTracker(plain["tracking"]["uri"], plain["tracking"]["artifact_root"],
                           plain["tracking"]["experiment"], study.study_key, tags)
    tracker.log_study(study.search_space, OmegaConf.to_yaml(cfg, resolve=True))
    callback = TrackingCallback(tracker, tuner_cfg["n_trials"], study.study_key, tuner_cfg["metric"], tuner_cfg["mode"])

    storage = (sweep_dir / "ray").resolve()
    experiment_path = storage / study.study_key
    trainable = tune.with_resources(tune.with_parameters(run_trial, base=plain),
                                    {"cpu": tuner_cfg["cpus_per_trial"], "gpu": tuner_cfg["gpus_per_trial"]})
    run_config = tune.RunConfig(name=study.study_key, storage_path=str(storage), callbacks=[callback], verbose=0)
    if tune.Tuner.can_restore(str(experiment_path)):
        print(f"[{study.study_key}] resuming from {experiment_path}", flush=True)
        tuner = tune.Tuner.restore(str(experiment_path), trainable, resume_unfinished=True,
                                   resume_errored=False, restart_errored=False)
        tuner._local_tuner._run_config.callbacks = [callback]
    else:
        tune_config = tune.TuneConfig(search_alg=make_searcher(study), num_samples=tuner_cfg["n_trials"],
                                      reuse_actors=True, max_concurrent_trials=tuner_cfg["concurrency"])
        tuner = tune.Tuner(trainable, tune_config=tune_config, run_config=run_config)
    complete = False
    try:
        results = tuner.fit()
        for result in results:
            trial_id = result.metrics.get("trial_id") if result.metrics else None
            if trial_id is None:
                continue
            if result.error is not None:
                callback.record_error(trial_id, str(result.error).strip().splitlines()[-1])
            else:
                callback.record_complete(trial_id, result.metrics)
        finished, failed = tracker.counts()
        complete = finished + failed >= tuner_cfg["n_trials"]
    finally:
        finished, failed = tracker.counts()
        summary = {"trials_finished": finished, "trials_failed": failed}
        if callback.best is not None:
            summary[f"best_{tuner_cfg['metric']}"] = callback.best
        tracker.close(summary, complete)
    if not complete:
        raise KeyboardInterrupt(f"study {study.study_key} interrupted with {finished + failed}/{tuner_cfg['n_trials']} trials done; "
                                f"re-run the same command with sweep.name={plain['sweep']['name']} to resume")
    return {"study": study.study_key, **summary}


class ExportOnMultirunEnd(HydraCallback):
    """At the end of a multirun, write the sweep's budget-vs-quality curves (moetune export) and print the
    answer; when the export cannot run, say why and how to run it, and exit non-zero."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if not config.sweep.export:
            return
        from moetune.export import export_sweep, print_answer

        out = Path(config.hydra.sweep.dir) / "export"
        experiment, uri = config.tracking.experiment, config.tracking.uri
        try:
            print_answer(export_sweep(uri, experiment, out))
        except MoetuneError as exc:
            print(f"error: export failed: {exc}\n  once fixed: moetune export --experiment {experiment} "
                  f"--tracking-uri {uri} --out {out}", file=sys.stderr)
            sys.exit(1)
