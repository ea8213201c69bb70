"""Paired comparisons of arms: trial n of one arm against trial n of another.

Studies of a sweep that differ only by their local-search arm draw trial n's hyperparameters and seed from
the same sampler seed, so trial n of "on" and trial n of "off" differ only by the arm. The difference of
their test metrics is then free of the spread between hyperparameter draws, which dominates any comparison
of curves built from independent trials: this is the stable view of what an arm changes.

Pairs are matched by (study seed, trial number) within a (gate, dataset, task weights, sampler) group, and
kept where both trials finished with the metric. Per comparison and metric: the mean and median difference
with a paired bootstrap interval (the pairs resampled with replacement, seeded), the share of pairs where
the arm is better, and the Wilcoxon signed-rank p-value.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from moetune.contract import higher_is_better
from moetune.report.labels import COMPARISONS, GATE_LABELS, ISOLATES, comparison_text, setting_text
from moetune.report.sweep import group_of
from moetune.tracking import tags
from moetune.tracking.base import RecordedStudy, RecordedTrial

PairGroup = tuple[str, str, str, str]  # (gate, dataset, task_weights, sampler)
COLUMNS = [
    "gate",
    "dataset",
    "task_weights",
    "sampler",
    "comparison",
    "arm",
    "base",
    "metric",
    "higher_is_better",
    "n_pairs",
    "n_unpaired",
    "n_mismatched",
    "mean",
    "mean_low",
    "mean_high",
    "median",
    "median_low",
    "median_high",
    "share_better",
    "wilcoxon_p",
    "level",
]


@dataclass
class PairedDiff:
    """One comparison (arm − base) of one metric in one group, over its pairs."""

    group: PairGroup
    arm: str
    base: str
    metric: str
    trials: list[tuple[str, int]]  # (study seed, trial number) of each pair
    diff: np.ndarray  # arm's metric minus base's, per pair
    n_unpaired: int  # finished trials of either arm without a finished twin
    n_mismatched: int  # pairs whose trials differ in train.seed or in a value both arms sample (should be 0)
    mean: float
    mean_low: float
    mean_high: float
    median: float
    median_low: float
    median_high: float
    share_better: float  # pairs where the arm is better (direction of the metric); ties are not better
    wilcoxon_p: float
    level: float

    @property
    def n(self) -> int:
        return int(self.diff.size)

    @property
    def n_better(self) -> int:
        return int(round(self.share_better * self.n)) if self.n else 0

    @property
    def name(self) -> str:
        return comparison_text(self.arm, self.base)

    def interval_text(self) -> str:
        """e.g. "-0.012 [90% interval -0.03, 0.004]"; an interval needs two pairs."""
        text = f"{self.mean:.3g}"
        if math.isfinite(self.mean_low):
            text += f" [{self.level:.0%} interval {self.mean_low:.3g}, {self.mean_high:.3g}]"
        return text


def _by_pair(studies: list[RecordedStudy]) -> dict[tuple[str, int], RecordedTrial]:
    return {(s.tags.get(tags.SEED, "0"), t.index): t for s in studies for t in s.trials if t.finished}


def _differ(a: RecordedTrial, b: RecordedTrial) -> bool:
    """Whether two trials of a pair differ in what pairing promises alike: the seed and the shared values."""
    return any(a.params[k] != b.params[k] for k in a.params.keys() & b.params.keys())


def wilcoxon_p(diff: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p-value; NaN below 2 pairs, 1 when every difference is zero (scipy
    would warn and divide by zero)."""
    if diff.size < 2:
        return math.nan
    if not np.any(diff):
        return 1.0
    from scipy.stats import wilcoxon

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # ties and zeros: scipy's normal approximation warns
        return float(wilcoxon(diff).pvalue)


def bootstrap_intervals(diff: np.ndarray, resamples: int, seed: int, level: float) -> tuple[float, ...]:
    """(mean_low, mean_high, median_low, median_high): percentile intervals over resampled pairs; NaN below
    2 pairs. Seeded per comparison, so a comparison's interval does not depend on which others are asked for."""
    if diff.size < 2 or resamples <= 0:
        return (math.nan,) * 4
    idx = np.random.default_rng(seed).integers(0, diff.size, size=(resamples, diff.size))
    draws = diff[idx]
    alpha = (1.0 - level) / 2
    mean_lo, mean_hi = np.quantile(draws.mean(axis=1), [alpha, 1 - alpha])
    med_lo, med_hi = np.quantile(np.median(draws, axis=1), [alpha, 1 - alpha])
    return float(mean_lo), float(mean_hi), float(med_lo), float(med_hi)


def compare(
    group: PairGroup,
    arm: str,
    arm_studies: list[RecordedStudy],
    base: str,
    base_studies: list[RecordedStudy],
    metric: str,
    *,
    resamples: int,
    seed: int,
    level: float,
) -> PairedDiff:
    """The arm's trials against the base arm's, pair by pair, for one metric."""
    mine, theirs = _by_pair(arm_studies), _by_pair(base_studies)
    keys = sorted(k for k in mine.keys() & theirs.keys() if metric in mine[k].metrics and metric in theirs[k].metrics)
    diff = np.array([mine[k].metrics[metric] - theirs[k].metrics[metric] for k in keys], dtype=float)
    ok = np.isfinite(diff)
    keys, diff = [k for k, f in zip(keys, ok, strict=True) if f], diff[ok]
    mismatch = sum(_differ(mine[k], theirs[k]) for k in keys)
    better = diff > 0 if higher_is_better(metric) else diff < 0
    mean_lo, mean_hi, med_lo, med_hi = bootstrap_intervals(diff, resamples, seed, level)
    return PairedDiff(
        group=group,
        arm=arm,
        base=base,
        metric=metric,
        trials=keys,
        diff=diff,
        n_unpaired=len(mine) + len(theirs) - 2 * len(keys),
        n_mismatched=int(mismatch),
        mean=float(diff.mean()) if diff.size else math.nan,
        mean_low=mean_lo,
        mean_high=mean_hi,
        median=float(np.median(diff)) if diff.size else math.nan,
        median_low=med_lo,
        median_high=med_hi,
        share_better=float(better.mean()) if diff.size else math.nan,
        wilcoxon_p=wilcoxon_p(diff),
        level=level,
    )


def paired_differences(
    studies: list[RecordedStudy], metrics: list[str], *, resamples: int, seed: int, level: float
) -> list[PairedDiff]:
    """Every comparison of labels.COMPARISONS whose two arms were run, per group and metric (metrics in the
    order given, groups sorted); a comparison without a single pair is left out."""
    by_arm: dict[PairGroup, dict[str, list[RecordedStudy]]] = {}
    for s in studies:
        gate, arm, dataset, weights, sampler = group_of(s)
        by_arm.setdefault((gate, dataset, weights, sampler), {}).setdefault(arm, []).append(s)
    out = []
    for metric in metrics:
        for group in sorted(by_arm):
            arms = by_arm[group]
            for arm, base in COMPARISONS:
                if arm in arms and base in arms:
                    p = compare(
                        group, arm, arms[arm], base, arms[base], metric, resamples=resamples, seed=seed, level=level
                    )
                    if p.n:
                        out.append(p)
    return out


def find(paired: list[PairedDiff], group: PairGroup, arm: str, base: str, metric: str) -> PairedDiff | None:
    return next((p for p in paired if (p.group, p.arm, p.base, p.metric) == (group, arm, base, metric)), None)


# ---------------------------------------------------------------- paired.csv and summary.md


def _num(x: float) -> str:
    return "" if not math.isfinite(x) else repr(float(x))


def write_csv(path: Path, paired: list[PairedDiff]) -> None:
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for p in paired:
            gate, dataset, weights, sampler = p.group
            w.writerow(
                [gate, dataset, weights, sampler, p.name, p.arm, p.base, p.metric, higher_is_better(p.metric)]
                + [p.n, p.n_unpaired, p.n_mismatched]
                + [_num(x) for x in (p.mean, p.mean_low, p.mean_high, p.median, p.median_low, p.median_high)]
                + [_num(p.share_better), _num(p.wilcoxon_p), p.level]
            )


def _fmt(x: float) -> str:
    return "—" if not math.isfinite(x) else f"{x:.3g}"


def summary_lines(paired: list[PairedDiff], level: float, resamples: int) -> list[str]:
    """The summary's section: what each comparison isolates, then one table per metric."""
    lines = [
        "## Paired comparisons (trial n of one arm against trial n of another)",
        "",
        "Studies that differ only by their arm share trial n's hyperparameters and seed, so each pair differs "
        "only by the arm. Difference = the arm's test metric minus the base arm's, over the pairs where both "
        f"trials finished; mean and median with a {level:.0%} paired bootstrap interval ({resamples} "
        "resamples of the pairs), the pairs where the arm is better, and the Wilcoxon signed-rank p-value. "
        "What each comparison isolates:",
        "",
    ]
    lines += [f"- {comparison_text(*c)}: {ISOLATES[c]}." for c in COMPARISONS]
    lines.append("")
    if not paired:
        return lines + ["No two arms of a group were run with paired trials: nothing to compare.", ""]
    for metric in dict.fromkeys(p.metric for p in paired):
        better = "higher" if higher_is_better(metric) else "lower"
        lines += [
            f"### Paired differences in {metric} ({better} is better: a "
            f"{'positive' if better == 'higher' else 'negative'} difference favours the arm)",
            "",
            f"| gate | setting | comparison | pairs | mean [{level:.0%} interval] | median [{level:.0%} interval] | "
            "arm better in | Wilcoxon p |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for p in (p for p in paired if p.metric == metric):
            gate, dataset, weights, sampler = p.group
            where = setting_text(dataset, weights) + ("" if sampler == "random" else f", {sampler}")
            lines.append(
                f"| {GATE_LABELS.get(gate, gate)} | {where} | {p.name} | {p.n} | "
                f"{_fmt(p.mean)} [{_fmt(p.mean_low)}, {_fmt(p.mean_high)}] | "
                f"{_fmt(p.median)} [{_fmt(p.median_low)}, {_fmt(p.median_high)}] | "
                f"{p.n_better}/{p.n} | {_fmt(p.wilcoxon_p)} |"
            )
        lines.append("")
    mismatched = sum(p.n_mismatched for p in paired)
    if mismatched:
        lines += [
            f"Warning: {mismatched} pair(s) differ in their seed or in a sampled value both arms search: those "
            "arms were not sampled alike, so their pairs are not matched draws (paired.csv, n_mismatched).",
            "",
        ]
    return lines
