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


@dataclass
class RecordedTrial:
    index: int  # the order the tuner started it in
    status: str  # FINISHED | FAILED (RUNNING or KILLED ones are left out of a sweep's reading)
    metrics: dict[str, float]


@dataclass
class RecordedStudy:
    key: str
    tags: dict[str, str]
    trials: list[RecordedTrial] = field(default_factory=list)


@dataclass
class RecordedSweep:
    name: str
    experiment_id: str
    studies: list[RecordedStudy]


class StudyRecord(abc.ABC):
    """One study's record: trials keyed by the tuner's trial id, numbered in the order they started."""

    @abc.abstractmethod
    def start_trial(self, trial_id: str, params: dict) -> None:
        """Open the trial's record; an unfinished record of an interrupted attempt is replaced."""

    @abc.abstractmethod
    def log_epoch(self, trial_id: str, report: EpochReport) -> None: ...

    @abc.abstractmethod
    def end_trial(
        self, trial_id: str, outcome: Outcome, final: FinalReport | None = None, error: str | None = None
    ) -> None:
        """Close the trial's record with its outcome; FINISHED carries the final report, FAILED the error."""

    @abc.abstractmethod
    def is_done(self, trial_id: str) -> bool:
        """Whether the trial ended FINISHED or FAILED (so it counts in the budget and is not re-run)."""

    @abc.abstractmethod
    def trial_number(self, trial_id: str) -> int: ...

    @abc.abstractmethod
    def counts(self) -> tuple[int, int]:
        """(finished, failed) trials so far."""

    @abc.abstractmethod
    def close(self, summary: dict[str, float], complete: bool) -> None:
        """End the study; unfinished trials (and the study, if not complete) are closed as killed."""


class Tracking(abc.ABC):
    """A tracking store. Construction writes nothing; ``check`` fails early when the store is unreachable."""

    uri: str

    @abc.abstractmethod
    def check(self) -> None: ...

    @abc.abstractmethod
    def open_study(
        self, study_key: str, tags: dict[str, str], search_space: dict[str, str], config_yaml: str
    ) -> StudyRecord:
        """The study's record, found again by its key when a sweep resumes."""

    @abc.abstractmethod
    def read_sweep(self, experiment: str) -> RecordedSweep:
        """Every study of a sweep and its FINISHED and FAILED trials, in trial order."""

    @abc.abstractmethod
    def log_export(self, experiment: str, files: list[Path], params: dict[str, str]) -> None:
        """Keep the report's files with the sweep (replacing an earlier export)."""

    @abc.abstractmethod
    def browse_hint(self, experiment_id: str) -> str:
        """One line telling a user where to browse the sweep."""
