"""Ray Tune's two hooks into a sweep driver: the searcher that hands a free slot to a study, and the
callback that passes trial events on. Both hold only the sweep's name and look the live driver up in
this process (``live``), so whatever Tune saves with its experiment never holds a store connection."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

from ray import tune
from ray.tune.search import Searcher


class LiveSweep(Protocol):
    def suggest(self, trial_id: str) -> dict[str, Any] | None | str: ...
    def on_trial_result(self, trial_id: str, result: dict) -> None: ...
    def on_trial_end(self, trial_id: str, last_result: dict | None, error: str | None) -> None: ...
    def on_step(self) -> None: ...


_LIVE: dict[str, LiveSweep] = {}  # sweep name -> its driver, in this process


@contextlib.contextmanager
def live(name: str, sweep: LiveSweep) -> Iterator[None]:
    _LIVE[name] = sweep
    try:
        yield
    finally:
        _LIVE.pop(name, None)


def trial_error_message(trial) -> str:
    """The last line of the trial's error: the exception's own message (e.g. training diverged at epoch 3: ...)."""
    text = ""
    path = getattr(trial, "error_file", None) or ""
    if path and os.path.exists(path):
        text = Path(path).read_text()
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "trial failed (no error message recorded)"


class SweepSearcher(Searcher):
    """Tune's searcher for a whole sweep: each free slot goes to a study with trials left (``suggest``)."""

    def __init__(self, sweep: str):
        super().__init__()
        self.sweep = sweep

    def set_search_properties(self, metric, mode, config, **spec) -> bool:
        return True

    def suggest(self, trial_id: str):
        return _LIVE[self.sweep].suggest(trial_id)

    def on_trial_complete(self, trial_id: str, result=None, error: bool = False) -> None:
        pass  # the callback records outcomes (it also sees the error's message)

    def save(self, checkpoint_path: str) -> None:
        pass  # the sweep's ledger is the tracking store, not Tune's experiment state

    def restore(self, checkpoint_path: str) -> None:
        pass


class RecordingCallback(tune.Callback):
    def __init__(self, sweep: str):
        self.sweep = sweep

    def on_trial_result(self, iteration, trials, trial, result, **info):
        _LIVE[self.sweep].on_trial_result(trial.trial_id, result)

    def on_trial_complete(self, iteration, trials, trial, **info):
        _LIVE[self.sweep].on_trial_end(trial.trial_id, trial.last_result, None)

    def on_trial_error(self, iteration, trials, trial, **info):
        _LIVE[self.sweep].on_trial_end(trial.trial_id, trial.last_result, trial_error_message(trial))

    def on_step_end(self, iteration, trials, **info):
        _LIVE[self.sweep].on_step()
