"""Anytime budget curves: what a study would answer if it were stopped after a given training cost.

After each trial (in trial order), the study's answer is the headline (test) metric of the trial that its
selection metric ranks best among the trials so far; the curve plots that answer against the cumulative
training cost spent so far, in epochs (``epochs_run``) or wall seconds (``wall_seconds``). With a scheduler
(ASHA, Hyperband) a stopped trial costs only the epochs it ran and can still be selected (its best epoch's
metrics), so such curves compare multi-fidelity and full-length tuning at equal cost.

Over R repeats (studies that differ only by seed) the curves are put on one grid of costs (a curve's value at
cost c is its answer after the last trial that ended within c), averaged, and given a bootstrap interval over
the repeats (resampled with replacement; 90% by default). Pure computation (numpy), like the other report
modules; the export decides whether and how to show it.

Which trials count: every recorded trial (FINISHED, including stopped ones, and FAILED) adds its cost; a trial
without the cost metric (a FAILED one) adds none. Only a FINISHED trial with finite selection and headline
values can be selected; ties keep the earlier trial.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from moetune.contract import EPOCHS_RUN, WALL_SECONDS
from moetune.tracking import tags
from moetune.tracking.base import RecordedStudy, RecordedTrial

COSTS = {"epochs": EPOCHS_RUN, "seconds": WALL_SECONDS}  # a curve's x axis -> the trial metric it sums


@dataclass(frozen=True)
class AnytimeCurve:
    """One study's curve: after each trial, the cumulative cost and the selected trial's headline value
    (NaN until a trial can be selected)."""

    cost: np.ndarray
    value: np.ndarray

    def at(self, grid: np.ndarray) -> np.ndarray:
        """The answer at each cost of ``grid``: after the last trial that ended within it (NaN before any)."""
        idx = np.searchsorted(self.cost, np.asarray(grid, dtype=float), side="right") - 1
        values = np.where(idx >= 0, self.value[np.clip(idx, 0, None)], np.nan) if len(self.cost) else None
        return np.full(len(grid), np.nan) if values is None else values


@dataclass(frozen=True)
class AnytimeBand:
    """Repeats' curves on one grid of costs: their mean and a bootstrap interval over the repeats (NaN where
    some repeat has no answer yet)."""

    grid: np.ndarray
    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    repeats: int
    level: float


def anytime_curve(
    trials: Sequence[RecordedTrial], selection: str, metric: str, selection_mode: str, cost: str = "epochs"
) -> AnytimeCurve:
    """A study's anytime curve: ``selection`` (e.g. best_val_loss) picks, ``metric`` (e.g. test_loss) is the
    answer, ``selection_mode`` "min" or "max", ``cost`` "epochs" or "seconds" (COSTS)."""
    key = COSTS[cost]
    sign = -1.0 if selection_mode == "max" else 1.0
    spent, best, answer = 0.0, math.inf, math.nan
    costs, values = [], []
    for trial in sorted(trials, key=lambda t: t.index):
        spent_here = trial.metrics.get(key, 0.0)
        spent += spent_here if math.isfinite(spent_here) else 0.0
        val, test = trial.metrics.get(selection, math.nan), trial.metrics.get(metric, math.nan)
        if trial.status == "FINISHED" and math.isfinite(val) and math.isfinite(test) and sign * val < best:
            best, answer = sign * val, test
        costs.append(spent)
        values.append(answer)
    return AnytimeCurve(np.asarray(costs, dtype=float), np.asarray(values, dtype=float))


def study_anytime_curve(study: RecordedStudy, cost: str = "epochs") -> AnytimeCurve:
    """``anytime_curve`` with the study's own selection metric, its direction and its headline metric (tags)."""
    t = study.tags
    return anytime_curve(study.trials, t[tags.SELECTION_METRIC], t[tags.HEADLINE_METRIC], t[tags.SELECTION_MODE], cost)


def anytime_band(
    curves: Sequence[AnytimeCurve],
    grid: np.ndarray | None = None,
    resamples: int = 2000,
    seed: int = 0,
    level: float = 0.9,
) -> AnytimeBand:
    """The repeats' mean curve on ``grid`` (default: every cost any repeat reaches) and its bootstrap
    ``level`` interval over repeats (one repeat: the curve itself)."""
    if grid is None:
        grid = np.unique(np.concatenate([c.cost for c in curves])) if curves else np.zeros(0)
    grid = np.asarray(grid, dtype=float)
    values = np.stack([c.at(grid) for c in curves]) if curves else np.full((0, len(grid)), np.nan)
    defined = ~np.isnan(values).any(axis=0) if len(curves) else np.zeros(len(grid), dtype=bool)
    mean = np.where(defined, values.mean(axis=0) if len(curves) else np.nan, np.nan)
    if len(curves) < 2:
        low, high = mean.copy(), mean.copy()
    else:
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(curves), size=(resamples, len(curves)))
        boot = values[idx].mean(axis=1)  # (resamples, grid)
        alpha = (1 - level) / 2
        low, high = np.full(len(grid), np.nan), np.full(len(grid), np.nan)
        if defined.any():
            low[defined], high[defined] = np.quantile(boot[:, defined], [alpha, 1 - alpha], axis=0)
    return AnytimeBand(grid, mean, low, high, len(curves), level)
