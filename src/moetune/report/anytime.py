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
from typing import NamedTuple

import numpy as np

from moetune.contract import EPOCHS_RUN, WALL_SECONDS, higher_is_better
from moetune.report.budget import expected_best_curve
from moetune.report.labels import ARM_ORDER
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


# ---------------------------------------------------------------- a sweep's anytime curves (the export)

REFERENCE_FRACTION = 0.25  # the reference cost: this share of the shortest repeat's total cost in the comparison
COST_LABELS = {"epochs": "cumulative training epochs", "seconds": "cumulative training seconds"}


class AnytimeGroup(NamedTuple):
    """The studies one anytime band averages: those that differ only by seed."""

    gate: str
    arm: str
    dataset: str
    task_weights: str
    sampler: str
    scheduler: str


@dataclass(frozen=True)
class AnytimeResult:
    """One group's repeats on one cost axis: each repeat's curve and their band."""

    group: AnytimeGroup
    cost: str  # "epochs" | "seconds"
    metric: str
    curves: list[AnytimeCurve]
    band: AnytimeBand


@dataclass(frozen=True)
class ComputeReduction:
    """How much less compute an arm needs than a base to reach a quality q: base_cost / arm_cost, where each
    is the first cost at which that mean curve reaches q. ``censored``: the base's mean curve never reaches
    q (factor is then the lower bound base_max / arm_cost); arm_cost NaN: the arm's never does (q being the
    base's final value; factor is then the upper bound base_cost / arm_max). The interval resamples each side's repeats;
    a resample whose base never reaches its q counts as inf. None where an interval cannot be drawn."""

    gate: str
    dataset: str
    task_weights: str
    sampler: str
    scheduler: str  # of both sides, or "asha vs none" for a scheduler comparison
    arm: str
    base: str
    cost: str
    reference: float  # the cost at which q is read off (NaN when q is the base's final value)
    q: float
    arm_cost: float
    base_cost: float
    factor: float
    censored: bool
    low: float | None
    high: float | None
    repeats: tuple[int, int]  # (arm's, base's)
    level: float

    @property
    def detectable(self) -> bool:
        return self.low is not None and self.high is not None and not (self.low <= 1.0 <= self.high)

    def text(self) -> str:
        """e.g. "2.1x [90% interval 1.3x, 4x]", "> 3x (censored) [...]", "no detectable difference (1.2x [...])"."""
        if not math.isfinite(self.factor):
            return "—"
        core = f"> {self.factor:.3g}x (censored)" if self.censored else f"{self.factor:.3g}x"
        if math.isnan(self.arm_cost) and not self.censored:
            core = f"< {self.factor:.3g}x (censored: the {self.arm} curve never reaches q)"
        if self.low is None or self.high is None:
            return f"{core} (one repeat: no interval)"
        hi = "∞" if math.isinf(self.high) else f"{self.high:.3g}x"
        full = f"{core} [{self.level:.0%} interval {self.low:.3g}x, {hi}]"
        return full if self.detectable else f"no detectable difference ({full})"


def anytime_group(study: RecordedStudy) -> AnytimeGroup:
    t = study.tags
    return AnytimeGroup(
        t.get(tags.GATE, "?"),
        t.get(tags.LOCAL_SEARCH, "?"),
        t.get(tags.DATASET, "?"),
        t.get(tags.TASK_WEIGHTS, "equal"),
        t.get(tags.SAMPLER, "random"),
        t.get(tags.SCHEDULER, "none"),
    )


def sweep_anytime(
    studies: Sequence[RecordedStudy],
    selection: str,
    metric: str,
    *,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.9,
) -> list[AnytimeResult]:
    """Every group's band on both cost axes, sorted by group then axis; ``selection`` picks, ``metric`` answers."""
    mode = "max" if higher_is_better(selection) else "min"
    by_group: dict[AnytimeGroup, list[RecordedStudy]] = {}
    for s in studies:
        by_group.setdefault(anytime_group(s), []).append(s)
    recorded = {k for k, m in COSTS.items() if any(m in t.metrics for s in studies for t in s.trials)}
    out = []
    for group in sorted(by_group):
        for cost in (c for c in COSTS if c in recorded):  # an axis no trial recorded (an older store): none
            curves = [anytime_curve(s.trials, selection, metric, mode, cost) for s in by_group[group]]
            band = anytime_band(curves, resamples=resamples, seed=seed, level=level)
            out.append(AnytimeResult(group, cost, metric, curves, band))
    return out


@dataclass(frozen=True)
class ExactCurve:
    """Random search's exact expected best of n trials (``report.budget.expected_best_curve``) put on a cost
    axis: per repeat (seed) over its own trials, then the mean over repeats, at n x the mean cost of a trial
    (a failed trial costs nothing). Per repeat, not pooled: a seed may draw its own data split
    (``dataset.seed: ${seed}``), and validation values of different splits do not rank trials against each
    other. Drawn beside the anytime bands, so scheduled studies are read against random search's own
    estimator at equal compute."""

    group: AnytimeGroup
    cost: str
    metric: str
    x: np.ndarray  # n x mean cost per trial, n = 1 .. the fewest trials of a repeat
    value: np.ndarray
    repeats: int

    estimator = "expected_best_per_repeat"


def exact_curve(studies: Sequence[RecordedStudy], selection: str, metric: str, cost: str) -> ExactCurve:
    """The exact curve of one full-length random-search group (its repeats ``studies``) on ``cost``'s axis."""
    up = higher_is_better(selection)
    per_repeat, spent, n_trials = [], 0.0, 0
    for study in studies:
        trials = [t for t in study.trials if t.status in ("FINISHED", "FAILED")]
        ok = [
            t.finished
            and math.isfinite(t.metrics.get(selection, math.nan))
            and math.isfinite(t.metrics.get(metric, math.nan))
            for t in trials
        ]
        per_repeat.append(
            (
                [t.metrics[selection] if f else math.nan for t, f in zip(trials, ok, strict=True)],
                [t.metrics[metric] if f else math.nan for t, f in zip(trials, ok, strict=True)],
                [not f for f in ok],
            )
        )
        costs = [t.metrics.get(COSTS[cost]) for t in trials]
        spent += sum(c for c in costs if c is not None and math.isfinite(c))
        n_trials += len(trials)
    n = min(len(val) for val, _, _ in per_repeat) if per_repeat else 0
    budgets = np.arange(1, n + 1)
    curves = [
        expected_best_curve(val, test, failed=failed, val_higher_is_better=up, budgets=budgets)
        for val, test, failed in per_repeat
    ]
    value = np.mean(curves, axis=0) if n else np.array([])
    per_trial = spent / n_trials if n_trials else math.nan
    return ExactCurve(
        anytime_group(studies[0]), cost, metric, budgets * per_trial, np.asarray(value, float), len(studies)
    )


def _mean(curves: Sequence[AnytimeCurve], grid: np.ndarray) -> np.ndarray:
    values = np.stack([c.at(grid) for c in curves])
    return np.where(np.isnan(values).any(axis=0), np.nan, values.mean(axis=0))


def _reach(grid: np.ndarray, mean: np.ndarray, q: float, up: bool) -> float:
    """The first cost of ``grid`` where ``mean`` is at least as good as q; NaN if never."""
    ok = (mean >= q) if up else (mean <= q)
    ok &= ~np.isnan(mean)
    return float(grid[np.argmax(ok)]) if ok.any() else math.nan


def _factor(
    arm: Sequence[AnytimeCurve], base: Sequence[AnytimeCurve], grid: np.ndarray, reference: float | None, up: bool
) -> tuple[float, float, float, float, bool]:
    """(q, arm_cost, base_cost, factor, censored). q: the arm's mean at ``reference``, or (None) the base's
    final mean. Censored: the base never reaches q; factor then base's last cost / arm_cost."""
    arm_mean, base_mean = _mean(arm, grid), _mean(base, grid)
    if reference is None:
        defined = base_mean[~np.isnan(base_mean)]
        q = float(defined[-1]) if defined.size else math.nan
    else:
        at = np.searchsorted(grid, reference, side="right") - 1
        q = float(arm_mean[at]) if at >= 0 else math.nan
    if math.isnan(q):
        return q, math.nan, math.nan, math.nan, False
    arm_cost, base_cost = _reach(grid, arm_mean, q, up), _reach(grid, base_mean, q, up)
    if math.isnan(arm_cost):  # the arm never reaches q (q the base's final value): at most base_cost / arm_max
        return q, arm_cost, base_cost, base_cost / min(float(c.cost[-1]) for c in arm), False
    if arm_cost <= 0:
        return q, arm_cost, base_cost, math.nan, False
    if math.isnan(base_cost):
        base_max = min(float(c.cost[-1]) for c in base)
        return q, arm_cost, base_cost, base_max / arm_cost, True
    return q, arm_cost, base_cost, base_cost / arm_cost, False


def compute_reduction(
    arm: Sequence[AnytimeCurve],
    base: Sequence[AnytimeCurve],
    *,
    up: bool,
    reference: float | None,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.9,
) -> tuple[float, float, float, float, bool, float | None, float | None]:
    """(q, arm_cost, base_cost, factor, censored, low, high): the compute the base needs to reach q over the
    compute the arm needs, q being the arm's mean quality at ``reference`` cost (or, reference None, the base's
    final mean quality). The interval resamples the repeats of each side with replacement (None, None with
    fewer than two repeats on either side); a censored resample counts as inf."""
    grid = np.unique(np.concatenate([c.cost for c in (*arm, *base)]))
    q, arm_cost, base_cost, factor, censored = _factor(arm, base, grid, reference, up)
    if len(arm) < 2 or len(base) < 2 or math.isnan(factor):
        return q, arm_cost, base_cost, factor, censored, None, None
    rng = np.random.default_rng(seed)
    draws = []
    for _ in range(resamples):
        a = [arm[i] for i in rng.integers(0, len(arm), len(arm))]
        b = [base[i] for i in rng.integers(0, len(base), len(base))]
        _, arm_r, _, f, cens = _factor(a, b, grid, reference, up)
        draws.append(math.inf if cens else 0.0 if math.isnan(arm_r) else f)  # an upper bound: unbounded below
    finite = np.asarray([d for d in draws if not math.isnan(d)], dtype=float)
    if not finite.size:
        return q, arm_cost, base_cost, factor, censored, None, None
    alpha = (1 - level) / 2
    low, high = np.quantile(finite, [alpha, 1 - alpha], method="inverted_cdf")  # a draw itself: inf stays inf
    return q, arm_cost, base_cost, factor, censored, float(low), float(high)


def reference_cost(arm: Sequence[AnytimeCurve], base: Sequence[AnytimeCurve]) -> float:
    """REFERENCE_FRACTION of the shortest total cost among both sides' repeats (early enough that neither
    curve sits on its flat tail), but at least the cost by which every repeat of both sides has an answer
    (a scheduler's first trials may run to full length and spend more than that fraction)."""
    curves = [c for c in (*arm, *base) if len(c.cost)]
    answered = [float(c.cost[np.argmax(~np.isnan(c.value))]) for c in curves if (~np.isnan(c.value)).any()]
    return max(REFERENCE_FRACTION * min(float(c.cost[-1]) for c in curves), max(answered, default=0.0))


def sweep_reductions(
    results: Sequence[AnytimeResult],
    *,
    up: bool,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.9,
) -> list[ComputeReduction]:
    """Per gate, setting, sampler, scheduler and cost axis: each arm over "off" at the reference cost; and
    where a scheduled group has a full-length twin (scheduler none), the compute the scheduled one needs to
    reach the full-length one's final quality (factor = none's cost / scheduler's cost)."""
    by = {(r.group, r.cost): r for r in results}
    out = []
    for (group, cost), r in by.items():
        if group.arm != "off":
            base = by.get((group._replace(arm="off"), cost))
            if base is not None:
                ref = reference_cost(r.curves, base.curves)
                values = compute_reduction(
                    r.curves, base.curves, up=up, reference=ref, resamples=resamples, seed=seed, level=level
                )
                out.append(_reduction(group, group.scheduler, "off", cost, ref, values, r, base, level))
        if group.scheduler != "none":
            full = by.get((group._replace(scheduler="none"), cost))
            if full is not None:
                values = compute_reduction(
                    r.curves, full.curves, up=up, reference=None, resamples=resamples, seed=seed, level=level
                )
                label = f"{group.scheduler} vs none"
                out.append(_reduction(group, label, group.arm, cost, math.nan, values, r, full, level))
    order = {"epochs": 0, "seconds": 1}
    return sorted(
        out,
        key=lambda c: (
            c.gate,
            c.dataset,
            c.task_weights,
            c.sampler,
            order[c.cost],
            c.scheduler,
            ARM_ORDER.get(c.arm, 9),
            c.arm,
        ),
    )


def _reduction(
    group: AnytimeGroup,
    scheduler: str,
    base: str,
    cost: str,
    reference: float,
    values: tuple[float, float, float, float, bool, float | None, float | None],
    arm: AnytimeResult,
    other: AnytimeResult,
    level: float,
) -> ComputeReduction:
    q, arm_cost, base_cost, factor, censored, low, high = values
    return ComputeReduction(
        group.gate,
        group.dataset,
        group.task_weights,
        group.sampler,
        scheduler,
        group.arm,
        base,
        cost,
        reference,
        q,
        arm_cost,
        base_cost,
        factor,
        censored,
        low,
        high,
        (len(arm.curves), len(other.curves)),
        level,
    )


def length_mismatches(studies: Sequence[RecordedStudy]) -> dict[tuple[AnytimeGroup, str], tuple[int, int]]:
    """Per scheduled group of an arm (not "off") against "off" with the same seeds: (pairs, pairs whose
    ``epochs_run`` differ), pairs being trial n of both arms' studies of one seed, both FINISHED."""
    by: dict[tuple[AnytimeGroup, str], dict[int, RecordedTrial]] = {}
    for s in studies:
        by[(anytime_group(s), s.tags.get(tags.SEED, "0"))] = {t.index: t for t in s.trials if t.status == "FINISHED"}
    out: dict[tuple[AnytimeGroup, str], tuple[int, int]] = {}
    for (group, seed), trials in sorted(by.items()):
        if group.arm == "off" or group.scheduler == "none":
            continue
        base = by.get((group._replace(arm="off"), seed))
        if base is None:
            continue
        pairs = [(trials[i], base[i]) for i in sorted(trials.keys() & base.keys())]
        n, differ = out.get((group, "off"), (0, 0))
        mismatched = sum(a.metrics.get(EPOCHS_RUN) != b.metrics.get(EPOCHS_RUN) for a, b in pairs)
        out[(group, "off")] = (n + len(pairs), differ + mismatched)
    return out
