"""The export's anytime figures: per gate and setting one panel, one line per (arm, scheduler) with its band,
against cumulative training epochs (``anytime_<metric>``) or seconds (``anytime_seconds_<metric>``), so a
multi-fidelity study and a full-length one are drawn on the same compute axis; beside them, thin and dotted,
full-length random search's exact expected best of n trials at n x its mean trial cost. PNG and SVG
(matplotlib).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from moetune.report.anytime import (
    COST_LABELS,
    REFERENCE_FRACTION,
    AnytimeGroup,
    AnytimeResult,
    ComputeReduction,
    ExactCurve,
)
from moetune.report.figures import ARM_COLORS, BAND_ALPHA, MAX_COLS, OTHER_COLOR
from moetune.report.labels import ARM_LABELS, ARM_ORDER, GATE_LABELS, setting_text
from moetune.report.render_pool import draw_here

SCHEDULER_STYLES = {"none": "-", "asha": "--", "hyperband": ":"}


def series_label(result: AnytimeResult) -> str:
    """e.g. "local search, asha (3 repeats)"; the sampler only when it is not random search."""
    g = result.group
    sampler = "" if g.sampler == "random" else f", {g.sampler}"
    sched = "full length" if g.scheduler == "none" else g.scheduler
    n = result.band.repeats
    return f"{ARM_LABELS.get(g.arm, g.arm)}, {sched}{sampler} ({n} repeat{'s' if n != 1 else ''})"


def stem(metric: str, cost: str) -> str:
    return f"anytime_{metric}" if cost == "epochs" else f"anytime_{cost}_{metric}"


def write_figures(
    folder: Path,
    results: Sequence[AnytimeResult],
    exact: Sequence[ExactCurve],
    level: float,
    draw: Callable[..., None] = draw_here,
) -> list[str]:
    """One figure per cost axis (epochs, then seconds) as PNG and SVG, each drawn by ``draw``; returns the
    file names."""
    names = []
    for cost in ("epochs", "seconds"):
        mine = [r for r in results if r.cost == cost]
        if not mine:
            continue
        name = stem(mine[0].metric, cost)
        draw(render, mine, [e for e in exact if e.cost == cost], folder / f"{name}.png", folder / f"{name}.svg", level)
        names += [f"{name}.png", f"{name}.svg"]
    return names


def _plain(value: float, _position) -> str:
    return f"{value:g}"


def exact_label(curve: ExactCurve) -> str:
    return f"{ARM_LABELS.get(curve.group.arm, curve.group.arm)}, random search, exact (n x mean trial cost)"


def render(results: Sequence[AnytimeResult], exact: Sequence[ExactCurve], png: Path, svg: Path, level: float) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend state
    from matplotlib.ticker import FuncFormatter, LogLocator

    settings = sorted({(r.group.dataset, r.group.task_weights) for r in results})
    gates = sorted({r.group.gate for r in results})
    n_cols = max(1, min(len(gates), MAX_COLS))
    per_setting = max(1, math.ceil(len(gates) / n_cols))
    n_rows = per_setting * len(settings)
    fig = Figure(figsize=(max(5.6 * n_cols, 7.0), 4.0 * n_rows + 1.0), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for ax in axes.flat:
        ax.set_axis_off()
    metric, cost = results[0].metric, results[0].cost
    for i, setting in enumerate(settings):
        for j, gate in enumerate(gates):
            ax = axes[i * per_setting + j // n_cols][j % n_cols]
            mine = [r for r in results if (r.group.dataset, r.group.task_weights) == setting and r.group.gate == gate]
            if not mine:
                continue
            ax.set_axis_on()
            mine.sort(key=lambda r: (r.group.scheduler != "none", r.group.scheduler, ARM_ORDER.get(r.group.arm, 9)))
            for r in mine:
                b = r.band
                color = tuple(v / 255 for v in ARM_COLORS.get(r.group.arm, OTHER_COLOR))
                ok = ~np.isnan(b.mean)
                if b.repeats > 1:
                    ax.fill_between(
                        b.grid[ok], b.low[ok], b.high[ok], step="post", color=color, alpha=BAND_ALPHA, linewidth=0
                    )
                style = SCHEDULER_STYLES.get(r.group.scheduler, "-.")
                ax.step(b.grid[ok], b.mean[ok], style, where="post", color=color, label=series_label(r))
            for e in exact:
                g = e.group
                if (g.dataset, g.task_weights, g.gate) != (*setting, gate):
                    continue
                color = tuple(v / 255 for v in ARM_COLORS.get(g.arm, OTHER_COLOR))
                ok = np.isfinite(e.x) & np.isfinite(e.value)
                ax.plot(e.x[ok], e.value[ok], linestyle=(0, (1, 1)), linewidth=1.2, color=color, label=exact_label(e))
            ax.set_xscale("log")
            ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))  # 20, 50, 100, 200, 500: few labels, plain
            ax.xaxis.set_major_formatter(FuncFormatter(_plain))
            ax.xaxis.set_minor_formatter(FuncFormatter(_plain))
            ax.set_title(f"{GATE_LABELS.get(gate, gate)} — {setting_text(*setting)}", fontsize="medium")
            ax.set_xlabel(COST_LABELS[cost])
            if j % n_cols == 0:
                ax.set_ylabel(metric)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize="small")
    fig.suptitle(
        f"{metric} of the trial selected by validation so far, against {COST_LABELS[cost]}\n"
        f"mean over repeats (seeds), band: bootstrap {level:.0%} interval over repeats; thin dotted: "
        "random search's exact expected best of n trials at n x its mean trial cost",
        fontsize="medium",
    )
    fig.savefig(png, dpi=110)
    fig.set_layout_engine("none")  # the SVG keeps the layout the PNG's save computed
    fig.savefig(svg, metadata={"Date": None})


# ---------------------------------------------------------------- anytime.csv and summary.md's section

CSV_COLUMNS = [
    "gate",
    "arm",
    "dataset",
    "task_weights",
    "sampler",
    "scheduler",
    "metric",
    "cost_axis",
    "cost",
    "mean",
    "low",
    "high",
    "repeats",
    "estimator",
]
BAND_ESTIMATOR = "mean_over_repeats"


def _num(x: float | None) -> str:
    return "" if x is None or not np.isfinite(x) else repr(float(x))


def write_csv(path: Path, results: Sequence[AnytimeResult], exact: Sequence[ExactCurve] = ()) -> None:
    """Tidy: one row per group, cost axis and cost of its grid (the costs any repeat reaches), estimator
    ``mean_over_repeats``; then the exact curves, one row per budget n (cost = n x mean trial cost), estimator
    ``expected_best_per_repeat``, no band."""
    import csv

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in results:
            g, b = r.group, r.band
            for j, c in enumerate(b.grid):
                w.writerow(
                    [g.gate, g.arm, g.dataset, g.task_weights, g.sampler, g.scheduler, r.metric, r.cost]
                    + [_num(c), _num(b.mean[j]), _num(b.low[j]), _num(b.high[j]), b.repeats, BAND_ESTIMATOR]
                )
        for e in exact:
            g = e.group
            for j, c in enumerate(e.x):
                w.writerow(
                    [g.gate, g.arm, g.dataset, g.task_weights, g.sampler, g.scheduler, e.metric, e.cost]
                    + [_num(c), _num(e.value[j]), "", "", e.repeats, e.estimator]
                )


def _fmt(x: float) -> str:
    return "—" if not np.isfinite(x) else f"{x:.4g}"


def summary_lines(
    results: Sequence[AnytimeResult],
    exact: Sequence[ExactCurve],
    reductions: Sequence[ComputeReduction],
    mismatches: Mapping[tuple[AnytimeGroup, str], tuple[int, int]],
    level: float,
    drawn: bool = True,
) -> list[str]:
    """summary.md's section "Budget against compute": the estimator, the compute reductions, and for
    scheduled studies how many on/off pairs ran to different lengths."""
    if not results:
        return []
    metric = results[0].metric
    repeats = sorted({r.band.repeats for r in results})
    lines = [
        "## Budget against compute",
        "",
        (
            f"Anytime curves (anytime.csv, anytime_{metric}.png against cumulative training epochs, "
            f"anytime_seconds_{metric}.png against cumulative training seconds): "
            if drawn
            else "Anytime curves (anytime.csv; no figures: with one study per curve and no scheduler they add "
            "nothing to the budget figures against compute): "
        )
        + "after each trial, in trial order, "
        f"the {metric} of the trial selected by validation so far, against the training cost spent so far "
        "(a stopped trial costs the epochs it ran). Estimator: the mean over repeats (the studies of one gate, "
        f"arm, setting, sampler and scheduler that differ only by seed) with a bootstrap {level:.0%} interval "
        "over repeats; with one repeat, the single curve and no band. Repeats per curve: "
        f"{', '.join(map(str, repeats))}.",
        "",
    ]
    if exact:
        lines += [
            "Beside them (thin, dotted; rows of anytime.csv with estimator expected_best_per_repeat, no band): "
            "full-length random search's exact budget curve, the expected test value of the trial that n trials "
            "drawn from a repeat's trials select (curves.csv's estimator, computed per repeat and averaged over "
            "repeats, since a seed may draw its own data split), at cost n x the group's mean cost per trial. "
            "It is not a curve of one trial order, and its cost axis is an average: trials that early stopping "
            "ends sooner cost less than the mean.",
            "",
        ]
    arm_rows = [c for c in reductions if " vs " not in c.scheduler]
    if arm_rows:
        lines += [
            "Reduction factor in compute of an arm over no local search = the cost the `off` mean curve needs to "
            "reach q over the cost the arm's needs, q being the arm's mean quality at the reference cost "
            f"({REFERENCE_FRACTION:.0%} of the shortest repeat's total cost of the two arms, or the cost by "
            "which every repeat of both has an answer if that is later; stated per row). "
            '"> F (censored)": off never reaches q within its cost. "no detectable difference": the interval '
            f"from resampling each arm's repeats ({level:.0%}) contains 1.",
            "",
            "| gate | setting | sampler | scheduler | cost | arm | reference cost | q | arm's cost | off's cost | "
            "reduction |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in arm_rows:
            lines.append(
                f"| {GATE_LABELS.get(c.gate, c.gate)} | {setting_text(c.dataset, c.task_weights)} | {c.sampler} | "
                f"{c.scheduler} | {c.cost} | {ARM_LABELS.get(c.arm, c.arm)} | {_fmt(c.reference)} | {_fmt(c.q)} | "
                f"{_fmt(c.arm_cost)} | {'—' if c.censored else _fmt(c.base_cost)} | {c.text()} |"
            )
        lines.append("")
    sched_rows = [c for c in reductions if " vs " in c.scheduler]
    if sched_rows:
        lines += [
            "Scheduler against full-length training: q = the full-length (scheduler none) mean curve's final "
            "quality; factor = the cost full length needs to reach q over the cost the scheduled curve needs "
            '(above 1: the scheduler gets there with less compute; "< F (censored)": the scheduled mean curve '
            "never reaches q within its cost, F = full length's cost over the scheduled curve's total; its "
            "resamples that never reach q count as 0).",
            "",
            "| gate | setting | sampler | comparison | cost | arm | q | scheduled cost | full-length cost | factor |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for c in sched_rows:
            lines.append(
                f"| {GATE_LABELS.get(c.gate, c.gate)} | {setting_text(c.dataset, c.task_weights)} | {c.sampler} | "
                f"{c.scheduler} | {c.cost} | {ARM_LABELS.get(c.arm, c.arm)} | {_fmt(c.q)} | {_fmt(c.arm_cost)} | "
                f"{_fmt(c.base_cost)} | {c.text()} |"
            )
        lines.append("")
    if mismatches:
        lines += [
            "Paired comparisons of scheduled studies: trial n of an arm and of `off` share their hyperparameters "
            "and seed, but the scheduler may stop one and not the other; the paired table above is computed as "
            "before, over pairs that may have run to different lengths:",
            "",
        ]
        for (g, base), (n, differ) in sorted(mismatches.items()):
            lines.append(
                f"- {GATE_LABELS.get(g.gate, g.gate)}, {setting_text(g.dataset, g.task_weights)}, {g.scheduler}, "
                f"{g.arm} − {base}: {differ} of {n} pairs ran to different `epochs_run`"
            )
        lines.append("")
    return lines
