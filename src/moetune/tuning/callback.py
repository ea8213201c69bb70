"""Driver side of a study: Ray Tune's trial events -> the study's record (moetune.tracking), and a
live progress line. The one place a trial's outcome is decided (moetune.contract.outcome_of) and recorded."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ray import tune

from moetune.contract import EpochReport, FinalReport, Outcome, outcome_of, parse_report
from moetune.tracking import StudyRecord


def trial_error_message(trial) -> str:
    """The last line of the trial's error: the exception's own message (e.g. training diverged at epoch 3: ...)."""
    text = ""
    path = getattr(trial, "error_file", None) or ""
    if path and os.path.exists(path):
        text = Path(path).read_text()
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "trial failed (no error message recorded)"


class StudyRecorder:
    """The live side of a study's recording: its record, best value so far, progress line."""

    def __init__(self, record: StudyRecord, n_trials: int, label: str, metric: str, mode: str):
        self.record, self.n_trials, self.label = record, n_trials, label
        self.metric, self.mode = metric, mode
        self.best: float | None = None
        self.started = time.time()
        self.done_at_start = sum(record.counts())
        self.last_print = 0.0

    def end(self, trial_id: str, last_result: dict | None, error: str | None = None) -> None:
        """Record the trial's one outcome (a STOPPED trial stays open: closed KILLED, re-run on resume)."""
        if self.record.is_done(trial_id):
            return
        outcome = outcome_of(last_result, error)
        final = parse_report(last_result) if outcome is Outcome.FINISHED else None
        self.record.end_trial(trial_id, outcome, final if isinstance(final, FinalReport) else None, error)
        value = final.metrics.get("best_" + self.metric) if isinstance(final, FinalReport) else None
        if value is not None and (
            self.best is None or (value < self.best if self.mode == "min" else value > self.best)
        ):
            self.best = value
        self.print_progress(force=True)

    def print_progress(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self.last_print < 10:
            return
        self.last_print = now
        finished, failed = self.record.counts()
        done = finished + failed
        elapsed = now - self.started
        new = done - self.done_at_start
        eta = f"{elapsed / new * (self.n_trials - done):.0f}s" if new > 0 else "?"
        best = f"{self.best:.4f}" if self.best is not None else "-"
        print(
            f"[{self.label}] {done}/{self.n_trials} trials done, {failed} failed, best {self.metric} {best}, "
            f"elapsed {elapsed:.0f}s, ETA {eta}",
            flush=True,
        )


_LIVE: dict[str, StudyRecorder] = {}  # study key -> its recorder, in this driver process


class RecordingCallback(tune.Callback):
    """Forwards Tune's trial events to the live recorder of its study. It holds only the study's key:
    Ray stores the callback with the experiment and a resumed run gets that stored copy back, which
    then finds the recorder the new run registered (``recording``)."""

    def __init__(self, study_key: str):
        self.study_key = study_key

    @property
    def recorder(self) -> StudyRecorder:
        return _LIVE[self.study_key]

    def on_trial_start(self, iteration, trials, trial, **info):
        params = {k: (list(v) if isinstance(v, tuple) else v) for k, v in trial.config.items()}
        self.recorder.record.start_trial(trial.trial_id, params)

    def on_trial_result(self, iteration, trials, trial, result, **info):
        report = parse_report(result)
        if isinstance(report, EpochReport):
            self.recorder.record.log_epoch(trial.trial_id, report)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.recorder.end(trial.trial_id, trial.last_result)

    def on_trial_error(self, iteration, trials, trial, **info):
        recorder, message = self.recorder, trial_error_message(trial)
        number = recorder.record.trial_number(trial.trial_id)
        print(f"[{recorder.label}] trial-{number:03d} FAILED: {message}", flush=True)
        recorder.end(trial.trial_id, trial.last_result, message)

    def on_step_end(self, iteration, trials, **info):
        self.recorder.print_progress()


@contextlib.contextmanager
def recording(recorder: StudyRecorder) -> Iterator[RecordingCallback]:
    """Register the study's recorder for the run's callbacks; unregister when the run ends."""
    _LIVE[recorder.label] = recorder
    try:
        yield RecordingCallback(recorder.label)
    finally:
        _LIVE.pop(recorder.label, None)
