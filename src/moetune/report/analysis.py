"""What a sweep's trials say: budget-vs-quality curves per group, reduction factors over no local search,
the paper's top-5% reporting, the paired differences between arms (``paired``), and the one-sentence answer
(worded by ``answer``). Pure computation, so tables and figures only format.

Random-search studies of the same gate/local_search/dataset/task weights are pooled (their trials are
independent draws from the same space, whatever the seed) and use the exact expected-max estimator with a
bootstrap band; adaptive (TPE) studies use the running best in trial order, averaged over the seeds. FAILED
trials count in the budget but are never selected; a finished trial that did not record a metric counts as
failed for that metric.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from moetune.contract import ACTIVE_EXPERTS, TRAIN_SAMPLES_PER_SECOND, WALL_SECONDS, higher_is_better
from moetune.report import answer, budget, reduction
from moetune.report.labels import ARM_LABELS as ARM_LABELS
from moetune.report.labels import ARM_ORDER as ARM_ORDER
from moetune.report.labels import ARMS as ARMS
from moetune.report.labels import GATE_LABELS as GATE_LABELS
from moetune.report.labels import setting_text as setting_text
from moetune.report.paired import PairedDiff, paired_differences
from moetune.report.sweep import Group, ReductionKey, group_of
from moetune.tracking import tags
from moetune.tracking.base import RecordedStudy

TOP_FRACTION = 0.05  # the paper's reporting (supplement S1.3): top 5% of trials by validation loss


@dataclass
class GroupCurve:
    """One curve: a (gate, local_search, dataset, task_weights, sampler) group for one metric."""

    group: Group
    metric: str
    studies: list[RecordedStudy]
    curve: budget.Curve
    trials: budget.Trials | list[budget.Trials]  # pooled (random search) or one per seed (adaptive)
    best: float  # the test score of the trial the whole study selects (mean over seeds for running best)

    @property
    def gate(self) -> str:
        return self.group.gate

    @property
    def local_search(self) -> str:
        return self.group.local_search

    @property
    def dataset(self) -> str:
        return self.group.dataset

    @property
    def task_weights(self) -> str:
        return self.group.task_weights

    @property
    def sampler(self) -> str:
        return self.group.sampler

    @property
    def key(self) -> ReductionKey:
        return ReductionKey(self.metric, self.dataset, self.task_weights, self.gate, self.sampler, self.local_search)

    @property
    def setting(self) -> tuple[str, str]:
        """What a figure row shows: the dataset and the task weighting."""
        return self.dataset, self.task_weights


@dataclass
class TopTrials:
    """The paper's reporting for one group and metric: the top 5% of finished trials by validation."""

    result: GroupCurve
    n_finished: int
    n_top: int
    mean: float
    stderr: float


@dataclass
class GateCost:
    """What a group's trials cost to run: experts active per sample (mean) and training samples per second
    (median), over its finished trials; NaN where the trials did not report them."""

    result: GroupCurve
    active_experts: float
    samples_per_second: float


@dataclass
class Analysis:
    """Everything the tables and figures show, computed once."""

    selection: str
    level: float
    metrics: list[str]  # the test metrics reported, one figure pair each
    curves: list[GroupCurve]
    reductions: dict[ReductionKey, list[reduction.Reduction]]
    tops: list[TopTrials]
    costs: list[GateCost]  # one per curve, for the gates side by side
    paired: list[PairedDiff]  # arm − base, trial n against trial n, per group, comparison and metric
    resamples: int
    headline: str  # the metric the answer is given in
    answer: str  # one sentence, the head of summary.md
    lines: list[str]  # the answer as one line per gate, for the terminal


def analyse(
    studies: list[RecordedStudy], metrics: list[str], *, selection: str, resamples: int, seed: int, level: float
) -> Analysis:
    val_up = higher_is_better(selection)
    curves = group_curves(studies, metrics, selection, resamples, seed, level)
    reductions = arm_reductions(curves, val_up, resamples, seed, level)
    headline = headline_metric(studies, metrics)
    first = [headline] + [m for m in metrics if m != headline]  # the answer's metric leads the paired view
    paired = paired_differences(studies, first, resamples=resamples, seed=seed, level=level)
    by_key = {r.key: r.curve for r in curves}
    text, lines = answer.headline_answer(reductions, by_key, paired, headline)
    tops, costs = top_trials(curves, val_up), gate_costs(curves)
    return Analysis(
        selection, level, metrics, curves, reductions, tops, costs, paired, resamples, headline, text, lines
    )


# ---------------------------------------------------------------- curves


def trials_of(study: RecordedStudy, selection: str, metric: str) -> budget.Trials:
    """A study's trials as the estimators take them: selection and test values, failures, seconds (in order)."""
    nan = math.nan
    ok = [t.finished and math.isfinite(t.metrics.get(metric, nan)) for t in study.trials]
    return budget.Trials(
        val=[t.metrics[selection] if f else nan for t, f in zip(study.trials, ok, strict=True)],
        test=[t.metrics[metric] if f else nan for t, f in zip(study.trials, ok, strict=True)],
        failed=[not f for f in ok],
        seconds=[t.metrics.get(WALL_SECONDS, nan) for t in study.trials],
    )


def _pool(parts: list[budget.Trials]) -> budget.Trials:
    seconds = [p.seconds for p in parts if p.seconds is not None]
    return budget.Trials(
        np.concatenate([p.val for p in parts]),
        np.concatenate([p.test for p in parts]),
        np.concatenate([p.failed for p in parts]),
        np.concatenate(seconds),
    )


def group_curves(
    studies: list[RecordedStudy], metrics: list[str], selection: str, resamples: int, seed: int, level: float
) -> list[GroupCurve]:
    """One curve per group and metric, groups in sorted order within each metric."""
    val_up = higher_is_better(selection)
    groups: dict[Group, list[RecordedStudy]] = {}
    for s in studies:
        groups.setdefault(group_of(s), []).append(s)
    results = []
    for metric in metrics:
        for group, members in sorted(groups.items()):
            members = [s for s in members if any(t.finished and metric in t.metrics for t in s.trials)]
            if not members:
                continue  # e.g. a metric of another dataset's task
            parts = [trials_of(s, selection, metric) for s in members]
            trials: budget.Trials | list[budget.Trials]
            if group.sampler == "random":
                trials = pooled = _pool(parts)
                curve = budget.budget_curve(
                    pooled.val,
                    pooled.test,
                    failed=pooled.failed,
                    seconds=pooled.seconds,
                    val_higher_is_better=val_up,
                    resamples=resamples,
                    level=level,
                    seed=seed,
                )
                best = float(
                    budget.expected_best_curve(
                        pooled.val,
                        pooled.test,
                        failed=pooled.failed,
                        val_higher_is_better=val_up,
                        replacement=False,
                        budgets=[pooled.n],
                    )[0]
                )
            else:  # adaptive sampler: trials are not exchangeable
                trials = parts
                curve = budget.running_best_curve(parts, val_higher_is_better=val_up, level=level)
                best = float(curve.value[-1])
            results.append(GroupCurve(group, metric, members, curve, trials, best))
    return results


def arm_reductions(
    results: list[GroupCurve], val_up: bool, resamples: int, seed: int, level: float
) -> dict[ReductionKey, list[reduction.Reduction]]:
    """Reduction factors of each arm (local search, warm-up control) over "off", keyed by
    (metric, dataset, task_weights, gate, sampler, arm) where both exist.

    Each value is a list of reduction.Reduction, one per target n in reduction.REDUCTION_AT (<= N_arm)
    plus answer.HEADLINE_CANDIDATES.
    """
    by = {r.key: r for r in results}
    ats = sorted(set(reduction.REDUCTION_AT) | set(answer.HEADLINE_CANDIDATES))
    out = {}
    for key, res in by.items():
        metric, sampler, arm = key.metric, key.sampler, key.arm
        off = by.get(key._replace(arm="off"))
        if arm not in ARMS or off is None:
            continue
        up = higher_is_better(metric)
        if sampler == "random":
            red = reduction.reduction_factors(
                res.trials,
                off.trials,
                at=ats,
                test_higher_is_better=up,
                val_higher_is_better=val_up,
                resamples=resamples,
                level=level,
                seed=seed,
            )
        else:
            red = reduction.reduction_factors(res.curve, off.curve, at=ats, test_higher_is_better=up, level=level)
        out[key] = red
    return out


def top_trials(results: list[GroupCurve], val_up: bool) -> list[TopTrials]:
    """Mean test metric of the top ceil(5%) of finished trials by the selection metric (at least one),
    and its standard error (sample std / sqrt(count); undefined for one trial). Seeds of a group pooled."""
    out = []
    for r in results:
        parts = r.trials if isinstance(r.trials, list) else [r.trials]
        val = np.concatenate([p.val[~p.failed] for p in parts])
        test = np.concatenate([p.test[~p.failed] for p in parts])
        n_top = max(1, math.ceil(TOP_FRACTION * val.size))
        order = np.argsort(-val if val_up else val, kind="stable")[:n_top]
        top = test[order]
        stderr = float(top.std(ddof=1) / math.sqrt(n_top)) if n_top > 1 else math.nan
        out.append(TopTrials(r, int(val.size), n_top, float(top.mean()), stderr))
    return out


def gate_costs(results: list[GroupCurve]) -> list[GateCost]:
    def finished(r: GroupCurve, key: str) -> np.ndarray:
        values = [t.metrics.get(key, math.nan) for s in r.studies for t in s.trials if t.finished]
        return np.array([v for v in values if math.isfinite(v)], dtype=float)

    out = []
    for r in results:
        active, speed = finished(r, ACTIVE_EXPERTS), finished(r, TRAIN_SAMPLES_PER_SECOND)
        out.append(
            GateCost(
                r,
                float(active.mean()) if active.size else math.nan,
                float(np.median(speed)) if speed.size else math.nan,
            )
        )
    return out


# ---------------------------------------------------------------- words shared by the answer, tables and figures


def label(gate: str, local_search: str, sampler: str) -> str:
    """A curve's name, e.g. "Top-k, local search" or "Hash, no local search (TPE, running best)"."""
    text = f"{GATE_LABELS.get(gate, gate)}, {ARM_LABELS.get(local_search, local_search)}"
    if sampler != "random":
        text += f" ({sampler.upper() if sampler == 'tpe' else sampler}, running best)"
    return text


def direction_text(metric: str) -> str:
    return f"{metric} ({'higher' if higher_is_better(metric) else 'lower'} is better)"


def estimator_text(curves: Iterable[GroupCurve], level: float) -> str:
    parts = []
    for est in sorted({r.curve.estimator for r in curves}):
        if est == budget.RUNNING_BEST:
            parts.append(f"running best in trial order, mean over seeds ({level:.0%} band over seeds)")
        else:
            parts.append(f"expected best of n random trials, exact ({level:.0%} bootstrap band)")
    return "; ".join(parts)


# ---------------------------------------------------------------- the answer


def headline_metric(studies: list[RecordedStudy], metrics: list[str]) -> str:
    """The metric the answer is given in: the studies' headline tag (the test twin of the selection metric),
    else test_loss, as the README says."""
    for s in studies:
        m = s.tags.get(tags.HEADLINE_METRIC)
        if m in metrics:
            return m
    return "test_loss" if "test_loss" in metrics else metrics[0]
