"""The export's tables: curves.csv, reductions.csv and top_trials.csv for other tools, summary.md for people.

Formatting only; every number comes from an ``Analysis``.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from moetune.contract import higher_is_better
from moetune.report import budget, paired, reduction
from moetune.report.analysis import (
    ARM_LABELS,
    ARM_ORDER,
    ARMS,
    GATE_LABELS,
    TOP_FRACTION,
    Analysis,
    GateCost,
    GroupCurve,
    ReductionKey,
    TopTrials,
    direction_text,
    label,
    setting_text,
)
from moetune.report.answer import HEADLINE_RULE

REPORT_BUDGETS = (1, 10, 100)  # the summary's curve columns
GATE_BUDGETS = (1, 16)  # the gates-side-by-side columns: one trial, and a small tuning budget
SAMPLER_TEXT = {"random": "random search", "tpe": "TPE"}
CSV_COLUMNS = [
    "study",
    "gate",
    "local_search",
    "dataset",
    "task_weights",
    "sampler",
    "estimator",
    "metric",
    "higher_is_better",
    "budget",
    "value",
    "low",
    "high",
    "compute_seconds",
    "p_no_model",
    "n_trials",
    "n_failed",
    "n_studies",
]
REDUCTION_COLUMNS = [
    "gate",
    "dataset",
    "task_weights",
    "sampler",
    "arm",
    "metric",
    "at_n",
    "q",
    "n_arm",
    "n_off",
    "factor",
    "low",
    "high",
    "censored",
]
TOP_COLUMNS = [
    "gate",
    "local_search",
    "dataset",
    "task_weights",
    "sampler",
    "metric",
    "n_finished",
    "n_top",
    "mean",
    "stderr",
]


def write_tables(folder: Path, experiment: str, analysis: Analysis, appendix: Sequence[str] = ()) -> list[str]:
    """Write the four tables into ``folder``; returns their file names, summary first. ``appendix``: further
    summary.md sections (markdown lines), written last."""
    write_summary(folder / "summary.md", experiment, analysis, appendix)
    write_curves_csv(folder / "curves.csv", analysis.curves)
    write_reductions_csv(folder / "reductions.csv", analysis.reductions)
    write_top_csv(folder / "top_trials.csv", analysis.tops)
    return ["summary.md", "curves.csv", "reductions.csv", "top_trials.csv"]


# ---------------------------------------------------------------- CSV


def _num(x: float | None) -> str:
    return "" if x is None or not np.isfinite(x) else repr(float(x))


def _write_rows(path: Path, columns: list[str], rows: Iterable[list]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(rows)


def write_curves_csv(path: Path, results: list[GroupCurve]) -> None:
    _write_rows(
        path,
        CSV_COLUMNS,
        (
            [
                "+".join(s.key for s in r.studies),
                r.gate,
                r.local_search,
                r.dataset,
                r.task_weights,
                r.sampler,
                r.curve.estimator,
                r.metric,
                higher_is_better(r.metric),
                int(n),
                _num(r.curve.value[j]),
                _num(r.curve.low[j]),
                _num(r.curve.high[j]),
                _num(r.curve.compute_seconds[j]),
                _num(r.curve.p_no_model[j]),
                r.curve.n_trials,
                r.curve.n_failed,
                len(r.studies),
            ]
            for r in results
            for j, n in enumerate(r.curve.budgets)
        ),
    )


def write_reductions_csv(path: Path, reductions: dict[ReductionKey, list[reduction.Reduction]]) -> None:
    """One row per (gate, dataset, weights, sampler, arm, metric, target). A censored row (the off-curve never
    reaches q) holds the lower bounds n_off = N_off and factor = N_off / n_arm; low/high may be inf."""

    def num(x: float | None) -> str:
        return "" if x is None or np.isnan(x) else repr(float(x))

    def row(key: ReductionKey, r: reduction.Reduction) -> list:
        metric, dataset, weights, gate, sampler, arm = key
        n_off = r.n_off_max if r.censored else r.n_off
        factor = r.lower_bound if r.censored else r.factor
        return [
            gate,
            dataset,
            weights,
            sampler,
            arm,
            metric,
            r.at,
            num(r.q),
            "" if r.n_on is None else r.n_on,
            "" if n_off is None else n_off,
            num(factor),
            num(r.low),
            num(r.high),
            r.censored or bool(np.isposinf(r.high)),
        ]

    keys = sorted(reductions, key=lambda k: (k.gate, k.dataset, k.task_weights, k.sampler, k.arm, k.metric))
    _write_rows(path, REDUCTION_COLUMNS, (row(key, r) for key in keys for r in reductions[key]))


def write_top_csv(path: Path, tops: list[TopTrials]) -> None:
    _write_rows(
        path,
        TOP_COLUMNS,
        (
            [
                t.result.gate,
                t.result.local_search,
                t.result.dataset,
                t.result.task_weights,
                t.result.sampler,
                t.result.metric,
                t.n_finished,
                t.n_top,
                _num(t.mean),
                _num(t.stderr),
            ]
            for t in tops
        ),
    )


# ---------------------------------------------------------------- summary.md


def _fmt(x: float | None) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.4g}"


def _reduction_table(reds_by_arm: dict[str, list[reduction.Reduction]], sampler: str, level: float) -> list[str]:
    """Markdown table of one gate's reductions over "off", one row per arm and target budget."""
    lines = [
        f"Budget reduction factor over no local search ({SAMPLER_TEXT.get(sampler, sampler)}):",
        "",
        f"| arm | target (arm's curve at n) | q | n_arm | n_off | reduction [{level:.0%} interval] |",
        "|---|---|---|---|---|---|",
    ]
    for arm, reds in reds_by_arm.items():
        for r in reds:
            n_off = "—" if r.n_on is None else (f"> {r.n_off_max}" if r.censored else str(r.n_off))
            n_on = "—" if r.n_on is None else str(r.n_on)
            lines.append(f"| {ARM_LABELS[arm]} | n = {r.at} | {_fmt(r.q)} | {n_on} | {n_off} | {r} |")
    return lines + [""]


def _top_table(tops: list[TopTrials], metric: str) -> list[str]:
    mine = [t for t in tops if t.result.metric == metric]
    if not mine:
        return []
    lines = [
        f"Top {TOP_FRACTION:.0%} of trials by validation loss (the paper's reporting, supplement S1.3): "
        "mean test metric ± standard error.",
        "",
        "| gate | arm | setting | finished trials | top trials | mean | ± s.e. |",
        "|---|---|---|---|---|---|---|",
    ]
    for t in sorted(mine, key=lambda t: (t.result.setting, t.result.gate, t.result.sampler, t.result.local_search)):
        r = t.result
        sampler = "" if r.sampler == "random" else f" ({r.sampler})"
        arm = ARM_LABELS.get(r.local_search, r.local_search)
        lines.append(
            f"| {GATE_LABELS.get(r.gate, r.gate)}{sampler} | {arm} | {setting_text(*r.setting)} | "
            f"{t.n_finished} | {t.n_top} | {_fmt(t.mean)} | {_fmt(t.stderr)} |"
        )
    return lines + [""]


def _budget_columns(budgets: Iterable[int]) -> str:
    return " | ".join(f"n = {n}" for n in budgets)


def _budget_cells(curve: budget.Curve, budgets: Iterable[int]) -> str:
    """The curve's value at each budget, "—" beyond its trials."""
    return " | ".join(_fmt(curve.at(n)) if n <= curve.budgets.max() else "—" for n in budgets)


def _gates_table(costs: list[GateCost], metric: str) -> list[str]:
    """Every gate of a setting in one table: quality at 1 and 16 trials, and what its trials cost to run."""
    lines: list[str] = []
    mine = [c for c in costs if c.result.metric == metric]
    for setting in sorted({c.result.setting for c in mine}):
        rows = [c for c in mine if c.result.setting == setting]
        if len({c.result.gate for c in rows}) < 2:
            continue
        lines += [
            f"### Gates side by side — {setting_text(*setting)}",
            "",
            f"| gate | trials (failed) | {_budget_columns(GATE_BUDGETS)} | best | active experts | "
            "training samples/s |",
            "|---|---|" + "---|" * len(GATE_BUDGETS) + "---|---|---|",
        ]
        order = {gate: i for i, gate in enumerate(GATE_LABELS)}
        for c in sorted(rows, key=lambda c: (order.get(c.result.gate, len(order)), c.result.gate, c.result.sampler)):
            r, curve = c.result, c.result.curve
            speed = "—" if not np.isfinite(c.samples_per_second) else f"{c.samples_per_second:,.0f}"
            lines.append(
                f"| {label(r.gate, r.local_search, r.sampler)} | {curve.n_trials} ({curve.n_failed}) | "
                f"{_budget_cells(curve, GATE_BUDGETS)} | {_fmt(r.best)} | {_fmt(c.active_experts)} | {speed} |"
            )
        lines.append("")
    return lines


def write_summary(path: Path, experiment: str, analysis: Analysis, appendix: Sequence[str] = ()) -> None:
    """The answer first, how its target was chosen, the paired comparisons, then per metric and panel (setting
    x gate) the curves' values and the reductions, then ``appendix``."""
    level, results, reductions = analysis.level, analysis.curves, analysis.reductions
    lines = [
        f"# Budget vs quality — {experiment}",
        "",
        f"**Answer.** {analysis.answer}",
        "",
        HEADLINE_RULE,
        "",
        f"Selection by `{analysis.selection}`. Quality at n = expected test score of the trial a budget of n "
        'trials selects; "best" = the trial the whole study selects (mean over seeds for running best). '
        f"Bands ({level:.0%}) are in curves.csv. Budget reduction factor of an arm = n_off(q) / n_arm(q), "
        "the budgets the curves without local search and with the arm need to reach q = the arm's curve's "
        'value at n; "> N" (censored): without local search the curve never reaches q within its N '
        "trials; an interval whose upper end is ∞ is censored above (some resamples never reach q). "
        "Arms: local search (on); frozen permutation (frozen: as on, with the permutation's log-weights kept at "
        "their initial draw), the control for learning the permutation; uniform warm-up (warmup: every expert "
        "mixed by 1/n for the first E_perm epochs), a dense start rather than a control for the permutation.",
        "",
    ]
    lines += paired.summary_lines(analysis.paired, level, analysis.resamples)
    for metric in sorted({r.metric for r in results}):
        lines += [f"## {direction_text(metric)}", ""]
        lines += _gates_table(analysis.costs, metric)
        mine = [r for r in results if r.metric == metric]
        for setting in sorted({r.setting for r in mine}):
            for gate in sorted({r.gate for r in mine if r.setting == setting}):
                rows = [r for r in mine if r.setting == setting and r.gate == gate]
                lines += [
                    f"### {GATE_LABELS.get(gate, gate)} — {setting_text(*setting)}",
                    "",
                    f"| curve | estimator | trials (failed) | best | {_budget_columns(REPORT_BUDGETS)} |",
                    "|---|---|---|---|" + "---|" * len(REPORT_BUDGETS),
                ]
                for r in sorted(rows, key=lambda r: (r.sampler, ARM_ORDER.get(r.local_search, 3))):
                    c = r.curve
                    lines.append(
                        f"| {label(r.gate, r.local_search, r.sampler)} | {c.estimator} | "
                        f"{c.n_trials} ({c.n_failed}) | {_fmt(r.best)} | {_budget_cells(c, REPORT_BUDGETS)} |"
                    )
                lines.append("")
                for sampler in sorted({r.sampler for r in rows}):
                    keys = {arm: ReductionKey(metric, *setting, gate, sampler, arm) for arm in ARMS}
                    by_arm = {arm: reductions[key] for arm, key in keys.items() if reductions.get(key)}
                    if by_arm:
                        lines += _reduction_table(by_arm, sampler, level)
        lines += _top_table(tops=analysis.tops, metric=metric)
    lines += list(appendix)
    path.write_text("\n".join(lines), encoding="utf-8")
