"""Multi-fidelity tuning (``scheduler=asha|hyperband``): Optuna's pruners decide, at each epoch's end, whether
a trial goes on. Driver side only (Optuna): trial workers hold just the actor's handle.

Each study keeps its own in-memory Optuna study holding the pruner (``StudyRungs``), so rungs are per study:
trials of different studies sharing the slots never compete. One small Ray actor (``RungsActor``, no CPU)
holds them all; a trial calls ``report`` after each epoch with its selection value (``tuner.metric``) and
gets the answer of ``trial.report(value, epoch); trial.should_prune()``. The actor is single-threaded, so
every answer is taken against one definite state.

Optuna's trial numbers are moetune's: the Optuna study creates its trials 0..n-1 in number order before any
report (Hyperband draws a trial's bracket from the study's name, the study key, and the trial's number).

On resume the state is rebuilt from the ledger before any trial starts (``rebuild``): each recorded trial's
per-epoch values are reported again, epoch by epoch, through the pruner itself. A successive-halving pruner
keeps a trial's value at each rung it reached (system attributes ``completed_rung_<r>``), written when it
is asked at that rung's epoch, and neither the answers nor the order of the trials change what it writes:
so the rebuilt state is the state an uninterrupted driver held after the same trials, whatever the order
(``optuna.trial.create_trial(intermediate_values=...)`` alone would hold the values but no rungs).
What is inexact is timing, as in any asynchronous halving: a trial's answer depends on which other trials
had reached its rung when it got there, and a resumed study has all its recorded trials there already.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import optuna
import ray

from moetune.config import SchedulerConfig
from moetune.tracking import LedgerEntry


@dataclass(frozen=True)
class RungsSpec:
    """What the actor needs to build one study's pruner: plain data (it crosses Ray)."""

    key: str  # the study key: the Optuna study's name (Hyperband's brackets hash it)
    direction: Literal["minimize", "maximize"]
    scheduler: SchedulerConfig
    max_epochs: int  # train.max_epochs: Hyperband's maximum resource unless scheduler.max_resource says
    n_trials: int
    history: dict[int, dict[int, float]] = field(default_factory=dict)  # ledger: number -> {epoch: value}


def build_pruner(scheduler: SchedulerConfig, max_epochs: int) -> optuna.pruners.BasePruner:
    """The Optuna pruner a scheduler config names, every resource explicit (no "auto": nothing inferred
    from which trials happened to finish first)."""
    if scheduler.name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(
            min_resource=scheduler.min_resource, reduction_factor=scheduler.reduction_factor
        )
    if scheduler.name == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=scheduler.min_resource,
            max_resource=scheduler.max_resource or max_epochs,
            reduction_factor=scheduler.reduction_factor,
        )
    raise ValueError(f"scheduler {scheduler.name!r} has no pruner")


def epoch_history(ledger: list[LedgerEntry]) -> dict[int, dict[int, float]]:
    """A study's recorded trials' per-epoch selection values, by trial number (what ``rebuild`` replays)."""
    return {e.number: dict(e.epochs) for e in ledger if e.epochs}


class StudyRungs:
    """One study's pruner and the Optuna study it decides over (trials 0..n-1, numbered as moetune's)."""

    def __init__(self, spec: RungsSpec):
        self.storage = optuna.storages.InMemoryStorage()
        self.study = optuna.create_study(
            storage=self.storage,
            study_name=spec.key,
            direction=spec.direction,
            pruner=build_pruner(spec.scheduler, spec.max_epochs),
        )
        self.study_id = self.storage.get_study_id_from_name(spec.key)
        self.trials: dict[int, optuna.trial.Trial] = {}
        self._ensure(max(spec.n_trials, max(spec.history, default=-1) + 1) - 1)
        self.rebuild(spec.history)

    def _ensure(self, number: int) -> optuna.trial.Trial:
        """Optuna's trial ``number``: trials are created in number order, so Optuna's numbers are moetune's."""
        while len(self.trials) <= number:
            trial_id = self.storage.create_new_trial(self.study_id)
            trial = optuna.trial.Trial(self.study, trial_id)
            self.trials[trial.number] = trial
        return self.trials[number]

    def rebuild(self, history: dict[int, dict[int, float]]) -> None:
        """Report recorded trials' epochs again, in number and epoch order, asking the pruner at each (its
        answers are dropped: these trials have ended); see the module's docstring for why this is exact."""
        for number in sorted(history):
            for epoch, value in sorted(history[number].items()):
                self.report(number, epoch, value)

    def report(self, number: int, epoch: int, value: float) -> bool:
        """Trial ``number``'s value at the end of ``epoch``: True when the pruner stops it there."""
        trial = self._ensure(number)
        if not math.isfinite(value):
            return False  # a non-finite value fails the trial itself (moetune.training)
        trial.report(value, epoch)
        return trial.should_prune()

    def rung_values(self) -> dict[int, dict[str, float]]:
        """Each trial's values at the rungs it reached: the pruner's whole state (tests compare it)."""
        out: dict[int, dict[str, float]] = {}
        for t in self.study.get_trials(deepcopy=False):
            rungs = {k: v for k, v in t.system_attrs.items() if k.startswith("completed_rung_")}
            if rungs:
                out[t.number] = rungs
        return out


@ray.remote(num_cpus=0)  # takes no trial slot
class RungsActor:
    """Every scheduled study's ``StudyRungs``, on the driver's Ray instance; rebuilt from the ledger when made."""

    def __init__(self, specs: list[RungsSpec]) -> None:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.studies = {spec.key: StudyRungs(spec) for spec in specs}

    def report(self, key: str, number: int, epoch: int, value: float) -> bool:
        rungs = self.studies.get(key)
        return rungs.report(number, epoch, value) if rungs is not None else False

    def rung_values(self, key: str) -> dict[int, dict[str, float]]:
        return self.studies[key].rung_values()


def start_rungs(specs: list[RungsSpec]):
    """The actor for the studies with a scheduler (None when there are none); its first call waits for
    it to be built, so a trial's first report is answered against the rebuilt state."""
    if not specs:
        return None
    actor = RungsActor.remote(specs)  # type: ignore[attr-defined]
    ray.get(actor.rung_values.remote(specs[0].key))  # built (and rebuilt) before any trial starts
    return actor
