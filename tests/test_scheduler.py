"""Multi-fidelity tuning (scheduler=asha|hyperband): Optuna's pruners per study, a stopped trial's outcome,
and the pruner's state rebuilt from the ledger on resume."""

from __future__ import annotations

import dataclasses
import random
import signal
import time

import optuna
import pytest
from mlflow.entities import Run
from test_driver import Sweep
from test_protocol import composed

from moetune.config import (
    GateConfig,
    LocalSearchConfig,
    ModelConfig,
    SchedulerConfig,
    StudyConfig,
    TrainConfig,
    check_study,
)
from moetune.contract import (
    EPOCHS_RUN,
    STOPPED_AT,
    VAL_LOSS,
    EpochReport,
    FinalReport,
    Outcome,
    epochs_to_tune,
    outcome_of,
)
from moetune.errors import ConfigError
from moetune.tracking import LedgerEntry
from moetune.tracking import tags as T
from moetune.training import Trainer
from moetune.tuning.hydra_config import load_study
from moetune.tuning.progress import StudyProgress
from moetune.tuning.scheduler import RungsSpec, StudyRungs
from moetune.tuning.searcher import StudySampler

from conftest import run_cli, tabular_data

SCHEDULERS = {
    "asha": SchedulerConfig("asha", min_resource=1, reduction_factor=3),
    "hyperband": SchedulerConfig("hyperband", min_resource=1, reduction_factor=2),
}


def _curves(n: int, epochs: int, seed: int) -> dict[int, list[float]]:
    """Decreasing validation losses, one curve per trial number, of different levels."""
    rng = random.Random(seed)
    curves = {}
    for number in range(n):
        level, drop = rng.uniform(0.5, 1.5), rng.uniform(0.05, 0.3)
        curves[number] = [level + drop / e + rng.uniform(0, 0.02) for e in range(1, epochs + 1)]
    return curves


def _live(spec: RungsSpec, curves: dict[int, list[float]], concurrency: int, seed: int):
    """A live study: ``concurrency`` trials at a time, interleaved at random; a stopped trial reports no more.
    Returns the rungs and each trial's per-epoch values as the ledger keeps them."""
    rungs = StudyRungs(spec)
    rng = random.Random(seed)
    todo, running, history = list(curves), {}, {}
    while todo or running:
        while todo and len(running) < concurrency:
            number = todo.pop(0)
            running[number], history[number] = 0, {}
        number = rng.choice(sorted(running))
        epoch = running[number] + 1
        value = curves[number][epoch - 1]
        history[number][epoch] = value
        stop = rungs.report(number, epoch, value)
        running[number] = epoch
        if (stop and epoch < spec.max_epochs) or epoch == spec.max_epochs:
            del running[number]
    return rungs, history


@pytest.mark.parametrize("name", list(SCHEDULERS))
def test_rungs_rebuilt_from_a_ledger_equal_the_live_ones(name):
    """A pruner rebuilt from the recorded trials' per-epoch values holds the same rung values as the one that
    saw them live (interleaved, in another order), so it gives a new trial the same answers."""
    epochs, n = 9, 14
    spec = RungsSpec("topk-ls_off-synthetic-seed0", "minimize", SCHEDULERS[name], epochs, n_trials=n)
    curves = _curves(n, epochs, seed=1)
    live, history = _live(spec, curves, concurrency=3, seed=2)
    stopped = [k for k, h in history.items() if len(h) < epochs]
    assert stopped and len(stopped) < n, "the live study should stop some trials, not all"
    rebuilt = StudyRungs(dataclasses.replace(spec, history=history))
    assert rebuilt.rung_values() == live.rung_values()
    answers: dict[str, list[list[bool]]] = {"live": [], "rebuilt": []}
    for i, level in enumerate((0.4, 0.9, 1.2, 1.6, 1.0, 0.7)):  # new trials n, n+1, ..., good and bad
        for label, rungs in (("live", live), ("rebuilt", rebuilt)):
            answers[label].append([rungs.report(n + i, e, level + 0.1 / e) for e in range(1, epochs + 1)])
    assert answers["live"] == answers["rebuilt"]
    assert any(any(a) for a in answers["live"]) and not all(any(a) for a in answers["live"])
    assert rebuilt.rung_values() == live.rung_values()


def test_rungs_are_per_study_and_numbered_as_moetune_numbers():
    spec = RungsSpec("hash-ls_on-synthetic-seed0", "minimize", SCHEDULERS["hyperband"], 9, n_trials=4)
    rungs = StudyRungs(dataclasses.replace(spec, history={6: {1: 0.5, 2: 0.4}}))  # a number past n_trials
    assert [rungs.trials[k].number for k in range(7)] == list(range(7))
    assert rungs.rung_values()[6]["completed_rung_0"] == 0.5


def test_a_final_report_with_stopped_at_is_pruned_and_counts_as_finished():
    stopped = FinalReport({"best_val_loss": 0.5}, {STOPPED_AT: 3}).to_tune("val_loss")
    finished = FinalReport({"best_val_loss": 0.5}, {}).to_tune("val_loss")
    assert outcome_of(stopped) is Outcome.PRUNED and Outcome.PRUNED.status == "FINISHED"
    assert outcome_of(finished) is Outcome.FINISHED
    assert outcome_of(stopped, "boom") is Outcome.FAILED
    assert outcome_of(epochs_to_tune([EpochReport(2, {"val_loss": 1.0})], "val_loss")) is Outcome.STOPPED


def test_tpe_is_told_a_stopped_trial_as_pruned_with_its_epochs_live_and_on_resume():
    """Not as COMPLETE with its low-fidelity best (what a Tune scheduler stopping an Optuna trial reports):
    TPE ranks pruned trials by how far they got. A resumed study's sampler holds the same trials as the live
    one, so its next draw is the same."""
    study = load_study(composed("experiment=quick", "sampler=tpe", "scheduler=asha", "gate=topk"))
    rng = random.Random(0)
    live = StudySampler(study.config, study.space)
    ledger = []
    for number in range(12):
        sampled = live.ask(number)
        epochs = {e: rng.uniform(0.5, 1.5) for e in range(1, rng.choice([2, 4, 10]))}
        stopped, best = len(epochs) < 9, min(epochs.values())
        live.tell(number, best, epochs if stopped else None)
        ledger.append(LedgerEntry(number, "FINISHED", sampled, {study.config.tuner.selection: best}, stopped, epochs))
    trials = live.study.get_trials(deepcopy=False)
    pruned = [t for t in trials if t.state is optuna.trial.TrialState.PRUNED]
    assert pruned and all(len(t.intermediate_values) < 9 for t in pruned)
    assert all(t.state is optuna.trial.TrialState.COMPLETE for t in trials if len(t.intermediate_values) == 0)

    resumed = StudySampler(study.config, study.space)
    resumed.replay(ledger)

    def held(sampler):
        return [(t.state, t.params, t.intermediate_values) for t in sampler.study.get_trials(deepcopy=False)]

    assert held(resumed) == held(live)
    assert resumed.ask(12) == live.ask(12)


def test_the_live_line_counts_stopped_trials_of_a_scheduled_study_only():
    scheduled = StudyProgress(key="s", total=8, metric="val_loss", done=3, failed=1, stopped=2, best=0.5)
    plain = StudyProgress(key="p", total=8, metric="val_loss", done=3, failed=1, best=0.5)
    assert "1 failed, 2 stopped, best val_loss 0.5000" in scheduled.line(0.0)
    assert "stopped" not in plain.line(0.0)


def test_scheduler_config_is_checked():
    with pytest.raises(ConfigError, match="scheduler must be one of none, asha, hyperband"):
        SchedulerConfig("median")
    with pytest.raises(ConfigError, match="reduction_factor must be at least 2"):
        SchedulerConfig("asha", reduction_factor=1)
    config = StudyConfig(train=TrainConfig(max_epochs=3), scheduler=SchedulerConfig("asha", min_resource=3))
    with pytest.raises(ConfigError, match="min_resource=3 must be below train.max_epochs=3"):
        check_study(config)
    config = StudyConfig(train=TrainConfig(max_epochs=3), scheduler=SchedulerConfig("hyperband", max_resource=5))
    with pytest.raises(ConfigError, match="max_resource=5 exceeds train.max_epochs=3"):
        check_study(config)
    check_study(StudyConfig(train=TrainConfig(max_epochs=3), scheduler=SchedulerConfig("asha", min_resource=2)))


def test_the_trainer_stops_when_on_epoch_says_so_and_restores_its_best_epoch():
    model = ModelConfig(
        n_experts=4, expert_hidden=[8], expert_dropout=0.0, embed_dim=4, dense_hidden=[8], head_hidden=[8]
    )
    train = TrainConfig(max_epochs=6, patience=6, device="cpu", seed=3)

    def fit(stop_after: int | None):
        trainer = Trainer(tabular_data(), model, GateConfig("topk", 2), LocalSearchConfig(), train)
        return trainer.fit(on_epoch=lambda epoch, metrics: stop_after is not None and epoch >= stop_after)

    full, stopped, last = fit(None), fit(3), fit(6)
    assert full.stopped_at is None and full.epochs_run == 6
    assert stopped.stopped_at == 3 and stopped.epochs_run == 3
    assert stopped.history == full.history[:3]  # the same run until it stopped
    best = min(range(3), key=lambda i: full.history[i]["val_loss"])
    assert stopped.best_epoch == best + 1
    assert stopped.val["val_loss"] == pytest.approx(full.history[best]["val_loss"], rel=1e-5)
    assert last.stopped_at is None and last.epochs_run == 6  # asked to stop at the last epoch: it finished


# ---------------------------------------------------------------- through the real command line

ASHA = [
    "gate=topk",
    "local_search=off",
    "scheduler=asha",
    "tuner.n_trials=8",
    "train.max_epochs=9",
    "train.patience=9",
    "dataset.n_samples=600",
]


def _trials(sweep: Sweep) -> dict[int, Run]:
    """The sweep's trial runs (active ones), by number; a number twice fails."""
    runs = sweep.runs(T.TRIAL)
    numbers = [int(r.data.tags[T.TRIAL_INDEX]) for r in runs]
    assert len(numbers) == len(set(numbers)), f"a trial number was recorded twice: {sorted(numbers)}"
    return dict(zip(numbers, runs, strict=True))


def _decisions(trials: dict[int, Run]) -> dict[int, tuple[str, int, float]]:
    return {
        n: (r.data.tags[T.OUTCOME], int(r.data.metrics[EPOCHS_RUN]), round(r.data.metrics["best_val_loss"], 5))
        for n, r in trials.items()
    }


def _check_study(sweep: Sweep, n_trials: int = 8, max_epochs: int = 9, scheduler: str = "asha") -> dict[int, Run]:
    """n_trials runs numbered 0..n-1, all FINISHED (stopped ones too), each stopped one with fewer epochs
    than the maximum, its per-epoch history, its stop epoch, and its best epoch's validation and test metrics."""
    trials = _trials(sweep)
    assert sorted(trials) == list(range(n_trials))
    for number, run in trials.items():
        tags, metrics = run.data.tags, run.data.metrics
        assert run.info.status == "FINISHED", number
        history = sweep.client.get_metric_history(run.info.run_id, VAL_LOSS)
        assert sorted(h.step for h in history) == list(range(1, int(metrics[EPOCHS_RUN]) + 1))
        assert min(h.value for h in history) == pytest.approx(metrics["best_val_loss"], rel=1e-5)
        assert "test_loss" in metrics and metrics["best_epoch"] <= metrics[EPOCHS_RUN]
        if tags[T.OUTCOME] == T.OUTCOME_STOPPED:
            assert metrics[EPOCHS_RUN] < max_epochs and int(tags[T.STOPPED_AT]) == metrics[EPOCHS_RUN]
        else:
            assert tags[T.OUTCOME] == T.OUTCOME_FINISHED and T.STOPPED_AT not in tags
    study = sweep.runs(T.STUDY)[0]
    assert study.info.status == "FINISHED" and study.data.tags[T.SCHEDULER] == scheduler
    assert study.data.metrics["trials_finished"] == n_trials  # stopped trials are spent budget
    return trials


@pytest.mark.slow
@pytest.mark.parametrize("scheduler", ["asha", "hyperband"])
def test_a_scheduler_stops_some_trials_which_count_in_the_budget(workdir, scheduler):
    sweep = Sweep(workdir, scheduler, [*ASHA, f"scheduler={scheduler}"])
    started = time.time()
    proc = run_cli(workdir, *sweep.args, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = _check_study(sweep, scheduler=scheduler)
    outcomes = [r.data.tags[T.OUTCOME] for r in trials.values()]
    assert 0 < outcomes.count(T.OUTCOME_STOPPED) < len(outcomes), outcomes
    assert f"8/8 trials done, 0 failed, {outcomes.count(T.OUTCOME_STOPPED)} stopped" in proc.stdout  # the live view
    print(f"{scheduler}: {outcomes.count(T.OUTCOME_STOPPED)}/8 stopped, {time.time() - started:.0f}s")


@pytest.mark.slow
def test_a_study_killed_mid_way_resumes_to_the_decisions_of_an_uninterrupted_one(workdir):
    """kill -9 of the driver mid-study, then the same command: trials 0..n-1 each run once, the stopped ones
    never again, and (one trial at a time, so no timing differs) the same trials stopped at the same epochs
    as in a study that was never interrupted: the rungs were rebuilt from the ledger before any new trial."""
    serial = [*ASHA, "tuner.concurrency=1"]
    whole = Sweep(workdir, "whole", serial)
    proc = run_cli(workdir, *whole.args, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    expected = _decisions(_check_study(whole))

    killed = Sweep(workdir, "killed", serial)
    proc = killed.start()
    assert killed.wait_for(proc, lambda: killed.trial_statuses().count("FINISHED") >= 3, timeout=240)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    before = {n: r.info.run_id for n, r in _trials(killed).items() if r.info.status == "FINISHED"}
    assert 3 <= len(before) < 8, before
    proc = killed.start()
    assert proc.wait(timeout=300) == 0, killed.output(proc)[-3000:]
    trials = _check_study(killed)
    assert {n: trials[n].info.run_id for n in before} == before, "a recorded trial was run again"
    assert _decisions(trials) == expected
    assert "RUNNING" not in killed.trial_statuses() and "KILLED" not in killed.trial_statuses()
