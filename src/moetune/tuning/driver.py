"""The sweep driver: every study of a multirun at once on one Ray instance, one Tune run.

Each study keeps its own Optuna sampler and seed (moetune.tuning.searcher), its own record (its MLflow
parent run) and its own budget of n_trials; a free slot goes to the study with the smallest share of its
budget started. The tracking store is the ledger: a trial's record is written before it runs and when it
ends, so a driver killed at any point is resumed by running the same command again (cut-off attempts
are run again, nothing is trained twice once recorded). One driver holds a sweep at a time (its lock
is in the store). Everything is validated before Ray starts: bad input costs seconds and writes nothing.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import optuna
from ray import tune
from ray.tune.search import Searcher

from moetune.config import StudyConfig, trial_seed
from moetune.contract import WEIGHTS_ERROR, FinalReport, Outcome, outcome_of, parse_report, reported_epochs
from moetune.errors import first_line
from moetune.tracking import StudyRecord, build_tracking
from moetune.tracking import tags as T
from moetune.tuning.callback import RecordingCallback, SweepSearcher, live
from moetune.tuning.planning import PlannedStudy, check_sweep, study_tags
from moetune.tuning.progress import StudyProgress, SweepProgress
from moetune.tuning.ray_runtime import check_fits, check_ray_address, local_resources, start_ray
from moetune.tuning.scheduler import RungsSpec, epoch_history, start_rungs
from moetune.tuning.searcher import StudySampler
from moetune.tuning.signals import StopSignals
from moetune.tuning.trial import NUMBER, STUDY, run_trial
from moetune.tuning.weights import WeightsInbox, take_weights, weights_key


class SweepInterrupted(Exception):
    """The sweep stopped before every study had its trials: a signal, or trials cut off."""

    def __init__(self, sweep: str, done: int, total: int, exit_code: int):
        self.sweep, self.done, self.total, self.exit_code = sweep, done, total, exit_code
        super().__init__(f"sweep {sweep} stopped with {done}/{total} trials done")


class LiveStudy:
    """One study inside a running driver: its record, sampler, and the trial numbers still to run."""

    def __init__(self, plan: PlannedStudy, record: StudyRecord):
        self.plan, self.config, self.record = plan, plan.config, record
        # with a scheduler, the recorded trials' per-epoch values too: its rungs are rebuilt from them
        ledger = record.ledger_epochs(self.config.tuner.metric) if self.config.scheduler.enabled else record.ledger()
        self.history = epoch_history(ledger)
        self.sampler = StudySampler(plan.config, plan.space)
        self.sampler.replay(ledger)
        done = {entry.number for entry in ledger}
        self.todo = [n for n in range(self.config.tuner.n_trials) if n not in done]
        values = [e.metrics.get(self.sampler.selection) for e in ledger if e.status == "FINISHED"]
        finite = [v for v in values if v is not None]
        best = (min if self.config.tuner.mode == "min" else max)(finite) if finite else None
        failed = sum(e.status == "FAILED" for e in ledger)
        self.progress = StudyProgress(
            key=plan.key,
            total=self.config.tuner.n_trials,
            metric=self.config.tuner.metric,
            done=len(done),
            failed=failed,
            stopped=sum(e.stopped for e in ledger) if self.config.scheduler.enabled else None,
            best=best,
            done_at_start=len(done),
        )

    def rungs_spec(self) -> RungsSpec:
        """What the scheduler's actor builds this study's pruner from (moetune.tuning.scheduler)."""
        return RungsSpec(
            key=self.plan.key,
            direction=self.config.tuner.direction,
            scheduler=self.config.scheduler,
            max_epochs=self.config.train.max_epochs,
            n_trials=self.config.tuner.n_trials,
            history=self.history,
        )

    @property
    def share_started(self) -> float:
        n = self.config.tuner.n_trials
        return (n - len(self.todo)) / n

    def summary(self) -> dict[str, Any]:
        finished, failed = self.record.counts()
        summary: dict[str, Any] = {"trials_finished": finished, "trials_failed": failed}
        if self.progress.best is not None:
            summary[self.config.tuner.selection] = self.progress.best
        return summary

    @property
    def complete(self) -> bool:
        return sum(self.record.counts()) >= self.config.tuner.n_trials


class Driver:
    """The live sweep Tune's hooks call into (moetune.tuning.callback). ``inbox``: where trials of studies
    with train.save_weights leave their best weights (moetune.tuning.weights)."""

    def __init__(self, studies: list[LiveStudy], inbox: Any = None):
        self.studies = {s.plan.key: s for s in studies}
        self.inbox = inbox
        self.attempts: dict[str, tuple[LiveStudy, int]] = {}  # Tune's trial id -> (study, trial number)
        self.epochs: dict[str, dict[int, float]] = {}  # Tune's trial id -> {epoch: tuner.metric} so far
        self.progress = SweepProgress([s.progress for s in studies])

    def suggest(self, trial_id: str) -> dict[str, Any] | None | str:
        waiting = [s for s in self.studies.values() if s.todo]
        if not waiting:
            return Searcher.FINISHED
        study = min(waiting, key=lambda s: s.share_started)
        number = study.todo.pop(0)
        sampled = study.sampler.ask(number)
        seed = trial_seed(study.config.seed, number)
        logged = {k: list(v) if isinstance(v, tuple) else v for k, v in sampled.items()}
        study.record.start_trial(number, {**logged, "train.seed": seed}, logged, trial_id)
        self.attempts[trial_id] = (study, number)
        return {STUDY: study.plan.key, NUMBER: number, **sampled, "train.seed": seed}

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        """A trial's epochs, from a batch or its final report (which comes here before ``on_trial_end``)."""
        if trial_id not in self.attempts:
            return
        study, number = self.attempts[trial_id]
        for report in reported_epochs(result):
            study.record.log_epoch(number, report)
            self.epochs.setdefault(trial_id, {})[report.epoch] = report.metrics[study.config.tuner.metric]

    def on_trial_end(self, trial_id: str, last_result: dict | None, error: str | None) -> None:
        """Record the trial's one outcome; a STOPPED one (interrupted) stays open and is closed KILLED. A
        PRUNED one (its scheduler stopped it, and it sent its final report) is recorded like a FINISHED one."""
        if trial_id not in self.attempts:
            return
        study, number = self.attempts.pop(trial_id)
        epochs = self.epochs.pop(trial_id, {})
        outcome = outcome_of(last_result, error)
        if outcome is Outcome.STOPPED:
            return
        final = parse_report(last_result) if outcome in (Outcome.FINISHED, Outcome.PRUNED) else None
        if study.config.train.save_weights:
            self._keep_weights(study, number, final)
        study.record.end_trial(number, outcome, final, error)
        value = final.metrics.get(study.sampler.selection) if final is not None else None
        stopped = outcome is Outcome.PRUNED
        study.sampler.tell(number, value, epochs if stopped else None)
        if error is not None:
            self.progress.message(f"[{study.plan.key}] trial-{number:03d} FAILED: {error}")
        self.progress.trial_ended(study.plan.key, outcome is Outcome.FAILED, value, study.config.tuner.mode, stopped)

    def _keep_weights(self, study: LiveStudy, number: int, final: FinalReport | None) -> None:
        """Log a finished trial's weights on its record; a failure goes into its diagnostics (recorded as a
        tag) and gets a line. The weights of a trial that did not finish are dropped from the inbox."""
        data, why = take_weights(self.inbox, weights_key(study.plan.key, number)) if self.inbox else (None, "no inbox")
        if final is None:
            return
        why = final.diagnostics.get(WEIGHTS_ERROR) or why
        if data is not None and WEIGHTS_ERROR not in final.diagnostics:
            try:
                study.record.log_weights(number, data)
                return
            except Exception as exc:
                why = first_line(exc, with_type=True)
        final.diagnostics[WEIGHTS_ERROR] = why
        self.progress.message(f"[{study.plan.key}] trial-{number:03d}: weights not saved: {why}")

    def on_step(self) -> None:
        self.progress.tick()


def run_sweep(plans: list[PlannedStudy], sweep_dir: Path) -> list[dict[str, Any]]:
    """Run (or resume) every planned study at once. Returns each study's summary; raises SweepInterrupted
    when stopped early, ConfigError or SweepLockedError before anything starts."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    check_sweep(plans)
    first = plans[0].config
    tracking = build_tracking(first.tracking)
    tracking.check(writable=True)  # the output folder was checked before Hydra wrote to it (CheckOutputFolder)
    if first.tuner.ray_address:
        check_ray_address(first.tuner.ray_address)
    else:
        check_fits(first.tuner, local_resources())
    studies: list[LiveStudy] = []
    with StopSignals() as signals, tracking.lock_sweep():
        try:
            for plan in plans:
                space = {k: str(v) for k, v in plan.space.items()}
                tags = study_tags(plan.config)
                if plan.init_source:
                    tags[T.INIT_FROM] = plan.init_source
                record = tracking.open_study(plan.key, tags, space, plan.config_yaml)
                studies.append(LiveStudy(plan, record))
            if any(s.todo for s in studies):
                _fit(studies, first, sweep_dir, signals)
        except KeyboardInterrupt:
            pass  # a second Ctrl-C, or a signal outside the fit: the records are closed all the same
        finally:
            for study in studies:
                study.record.close(study.summary(), study.complete)
    done = sum(sum(s.record.counts()) for s in studies)
    total = sum(s.config.tuner.n_trials for s in studies)
    if done < total:
        raise SweepInterrupted(first.sweep.name, done, total, signals.exit_code)
    return [{"study": s.plan.key, **s.summary()} for s in studies]


def _fit(studies: list[LiveStudy], first: StudyConfig, sweep_dir: Path, signals: StopSignals) -> None:
    tuner_cfg = first.tuner
    start_ray(tuner_cfg)
    signals.install()
    total = sum(s.config.tuner.n_trials for s in studies)
    todo = sum(len(s.todo) for s in studies)
    print(
        f"sweep {first.sweep.name}: {len(studies)} {'study' if len(studies) == 1 else 'studies'}, "
        f"{total - todo}/{total} trials done, "
        f"{tuner_cfg.concurrency} at a time",
        flush=True,
    )
    for study in studies:
        if study.plan.init_source and study.todo:
            print(f"[{study.plan.key}] experts upcycled from {study.plan.init_source}", flush=True)
    inbox = WeightsInbox.remote() if any(s.config.train.save_weights for s in studies) else None
    # the scheduler's rungs, rebuilt from the ledger before any trial starts (studies with scheduler=asha|hyperband)
    rungs = start_rungs([s.rungs_spec() for s in studies if s.config.scheduler.enabled])
    driver = Driver(studies, inbox)
    inits = {s.plan.key: s.plan.init_state for s in studies if s.plan.init_state is not None}
    scheduled = {"rungs": rungs} if rungs is not None else {}
    trainable = tune.with_resources(
        tune.with_parameters(
            run_trial, studies={s.plan.key: s.config for s in studies}, inits=inits or None, inbox=inbox, **scheduled
        ),
        {"cpu": tuner_cfg.cpus_per_trial, "gpu": tuner_cfg.gpus_per_trial},
    )
    name = first.sweep.name
    tune_config = tune.TuneConfig(
        search_alg=SweepSearcher(name), num_samples=-1, reuse_actors=True, max_concurrent_trials=tuner_cfg.concurrency
    )
    # a fresh Tune run per driver: the ledger is the tracking store, never Tune's saved state
    run_config = tune.RunConfig(
        name=f"driver-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}",
        storage_path=str((sweep_dir / "ray").resolve()),
        callbacks=[RecordingCallback(name)],
        verbose=0,
    )
    try:
        with live(name, driver):
            tune.Tuner(trainable, tune_config=tune_config, run_config=run_config).fit()
    finally:
        driver.progress.close()
