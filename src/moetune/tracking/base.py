"""What a tracking backend does, in two small interfaces (a new backend implements both, in one module).

``Tracking`` is the store: it opens a study's record on the driver, and reads a whole sweep back for
the report. ``StudyRecord`` is one study's record: a trial is started, gets its epochs, and ends with
one outcome (moetune.contract.Outcome). Trial workers never see either: only the driver records.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from pathlib import Path

from moetune.contract import EpochReport, FinalReport, Outcome
from moetune.errors import ConfigError

SEED_PARAM = "train.seed"  # a trial's seed, logged beside its sampled values


@dataclass
class RecordedTrial:
    """One trial as the report reads it back: enough to pair it with its twin in another arm and to list it."""

    index: int  # the trial's number in its study (tag moetune.trial_index): arms are paired by it
    status: str  # FINISHED | FAILED (RUNNING or KILLED ones are left out of a sweep's reading)
    metrics: dict[str, float]
    params: dict[str, str] = field(default_factory=dict)  # as logged: the sampled values and train.seed
    init_digest: str | None = None  # fingerprint of its initial weights (tag init_digest), FINISHED only
    error: str | None = None  # FAILED: the error's one-line message
    # derived by the report (moetune.report.sweep) for its selection metric: FINISHED with a finite value;
    # a trial that is not counts in the budget as failed
    finished: bool = False

    @property
    def sampled(self) -> dict[str, str]:
        """The sampled hyperparameters (the params without the seed)."""
        return {k: v for k, v in self.params.items() if k != SEED_PARAM}

    @property
    def seed(self) -> str | None:
        return self.params.get(SEED_PARAM)


@dataclass
class RecordedStudy:
    key: str
    tags: dict[str, str]
    trials: list[RecordedTrial] = field(default_factory=list)
    space: dict[str, str] = field(default_factory=dict)  # the search space as open_study received it


@dataclass
class LedgerEntry:
    """A trial that counts in its study's budget: ended FINISHED or FAILED (cut-off attempts are not kept);
    a trial the scheduler stopped is FINISHED (its tag moetune.outcome says stopped)."""

    number: int
    status: str  # FINISHED | FAILED
    sampled: dict  # the sampler's own values for the trial (JSON), to rebuild the sampler's history on resume
    metrics: dict[str, float]
    stopped: bool = False  # stopped at a rung by the study's scheduler (tag moetune.outcome=stopped)
    # its per-epoch values of the tuner's metric, {epoch: value}: filled by ``StudyRecord.ledger_epochs`` only
    # (a study with a scheduler rebuilds its rungs from them on resume)
    epochs: dict[int, float] = field(default_factory=dict)


@dataclass
class RecordedSweep:
    name: str
    experiment_id: str
    studies: list[RecordedStudy]


class StudyRecord(abc.ABC):
    """One study's record and its ledger: trials keyed by their number in the study (0 .. n_trials-1).

    A trial's record is written when it starts (with its sampled values) and when it ends, so the record
    is the ledger a resumed sweep reads: opening a study drops the attempts a killed or interrupted driver
    cut off (RUNNING or KILLED), and their numbers are run again."""

    @abc.abstractmethod
    def ledger(self) -> list[LedgerEntry]:
        """The trials that ended FINISHED or FAILED, by number."""

    def ledger_epochs(self, metric: str) -> list[LedgerEntry]:
        """The ledger with each entry's per-epoch values of ``metric`` (``LedgerEntry.epochs``), read back
        for a study with a scheduler (scheduler=asha|hyperband) to rebuild its rungs on resume. A backend
        that cannot read them back refuses a non-empty ledger (one line) rather than rebuild rungs wrongly."""
        entries = self.ledger()
        if entries:
            raise ConfigError(
                f"the {type(self).__name__} tracking backend cannot read trials' per-epoch {metric} back to "
                "resume a study with a scheduler; use tracking=mlflow or scheduler=none"
            )
        return entries

    @abc.abstractmethod
    def start_trial(self, number: int, params: dict, sampled: dict, tuner_trial_id: str) -> None:
        """Open trial ``number``'s record before it runs: its parameters (as logged) and sampled values."""

    @abc.abstractmethod
    def log_epoch(self, number: int, report: EpochReport) -> None: ...

    @abc.abstractmethod
    def end_trial(
        self, number: int, outcome: Outcome, final: FinalReport | None = None, error: str | None = None
    ) -> None:
        """Close the trial's record with its outcome; FINISHED and PRUNED carry the final report (a PRUNED
        trial is closed as finished, with tag moetune.outcome=stopped), FAILED the error, STOPPED leaves it
        open for ``close`` (an interrupted attempt, run again on resume)."""

    def log_weights(self, number: int, data: bytes) -> None:
        """Keep trial ``number``'s best weights (a torch.save'd state dict) with its record (train.save_weights);
        called before ``end_trial``. Raises on failure; the driver records why."""
        raise ConfigError(
            f"train.save_weights: the {type(self).__name__} tracking backend cannot keep trial weights; "
            "use tracking=mlflow or train.save_weights=false"
        )

    @abc.abstractmethod
    def counts(self) -> tuple[int, int]:
        """(finished, failed) trials so far."""

    @abc.abstractmethod
    def close(self, summary: dict[str, float], complete: bool) -> None:
        """End the study; unfinished trials (and the study, if not complete) are closed as killed."""


class SweepLock(abc.ABC):
    """Exclusive hold of a sweep by one driver process, kept alive by a heartbeat."""

    @abc.abstractmethod
    def release(self) -> None: ...

    def __enter__(self) -> SweepLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class Tracking(abc.ABC):
    """A tracking store, fixed to one sweep at construction (``experiment``, the sweep's name, is the one
    keyword every backend takes; the rest are its own, from conf/tracking/<name>.yaml). Construction
    writes nothing; ``check`` fails early when the store is unreachable."""

    experiment: str

    @abc.abstractmethod
    def check(self, must_exist: bool = False, writable: bool = False) -> None:
        """Raise ConfigError (one line) when the store is unreachable, missing (``must_exist``) or
        read-only (``writable``)."""

    @abc.abstractmethod
    def lock_sweep(self) -> SweepLock:
        """Hold this sweep (the experiment) for this driver, or raise SweepLockedError naming the holder.
        A lock whose holder died (dead PID on this host, or heartbeat older than a minute) is taken over."""

    @abc.abstractmethod
    def open_study(
        self, study_key: str, tags: dict[str, str], search_space: dict[str, str], config_yaml: str
    ) -> StudyRecord:
        """The study's record, found again by its key when a sweep resumes."""

    @abc.abstractmethod
    def read_sweep(self) -> RecordedSweep:
        """Every study of the sweep and its FINISHED and FAILED trials, in trial order."""

    @abc.abstractmethod
    def log_export(self, files: list[Path], params: dict[str, str]) -> str | None:
        """Keep the report's files with the sweep (replacing an earlier export); or a note saying why they
        are not kept there (e.g. the user may only read the sweep), the files staying on disk."""

    def load_weights(self, run_id: str) -> tuple[bytes, str]:
        """The saved weights a run names (model.init_from): a trial's own, or a study's best finished trial's
        (by the study's selection metric) among those with saved weights; with a line saying which. Raises
        ConfigError (one line) when there is no such run or no saved weights; writes nothing."""
        raise ConfigError(f"tracking backend {type(self).__name__} cannot load weights by run id; give a file path")

    @abc.abstractmethod
    def browse_hint(self, experiment_id: str) -> str:
        """One line telling a user where to browse the sweep."""

    def export_args(self) -> list[str]:
        """The ``moetune export`` options that read this store back (printed when an export must be re-run)."""
        node = {"_target_": f"{type(self).__module__}.{type(self).__qualname__}", **self.options()}
        return [f"--tracking={k}={v}" for k, v in node.items()]

    def options(self) -> dict[str, str]:
        """This backend's own keys (all but ``experiment``), as its config file gives them."""
        return {}
