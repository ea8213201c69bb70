"""The paired view as a figure: per gate and setting, every pair's difference, their mean and its interval.

One figure per metric (``paired_<metric>.png`` and ``.svg``): a panel per (gate, setting, sampler), the
comparisons side by side along x, each pair a point in the arm's colour (spread sideways so equal values stay
visible), the mean as a black bar with its bootstrap interval, and the zero line: points on the arm's better
side of zero are pairs the arm won.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from moetune.contract import higher_is_better
from moetune.report.figures import ARM_COLORS, OTHER_COLOR
from moetune.report.labels import GATE_LABELS, setting_text
from moetune.report.paired import PairedDiff, PairGroup
from moetune.report.render_pool import draw_here

MAX_COLS = 3


def _title(group: PairGroup) -> str:
    gate, dataset, weights, sampler = group
    return f"{GATE_LABELS.get(gate, gate)} — {setting_text(dataset, weights)}" + (
        "" if sampler == "random" else f" ({sampler})"
    )


def write_figures(folder: Path, paired: list[PairedDiff], draw: Callable[..., None] = draw_here) -> list[str]:
    """One PNG and one SVG per metric with pairs, each drawn by ``draw``; returns the file names."""
    names = []
    for metric in dict.fromkeys(p.metric for p in paired):
        stem = f"paired_{metric}"
        mine = [p for p in paired if p.metric == metric]
        draw(render, metric, mine, folder / f"{stem}.png", folder / f"{stem}.svg")
        names += [f"{stem}.png", f"{stem}.svg"]
    return names


def render(metric: str, paired: list[PairedDiff], png: Path, svg: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend state

    groups = list(dict.fromkeys(p.group for p in paired))
    n_cols = min(len(groups), MAX_COLS)
    n_rows = math.ceil(len(groups) / n_cols)
    fig = Figure(figsize=(max(4.6 * n_cols, 6.0), 3.8 * n_rows + 0.9), layout="constrained")
    axes = fig.subplots(n_rows, n_cols, squeeze=False)
    for ax in axes.flat[len(groups) :]:
        ax.set_axis_off()
    better = "above" if higher_is_better(metric) else "below"
    for ax, group in zip(axes.flat, groups, strict=False):
        mine = [p for p in paired if p.group == group]
        for x, p in enumerate(mine):
            color = tuple(v / 255 for v in ARM_COLORS.get(p.arm, OTHER_COLOR))  # the arm's, as in the curves
            spread = np.linspace(-0.18, 0.18, p.n) if p.n > 1 else np.zeros(1)
            ax.scatter(x + spread, p.diff, s=14, color=color, alpha=0.7, linewidths=0)
            if math.isfinite(p.mean_low):
                ax.errorbar(
                    x,
                    p.mean,
                    yerr=[[p.mean - p.mean_low], [p.mean_high - p.mean]],
                    fmt="_",
                    color="black",
                    markersize=22,
                    capsize=5,
                    linewidth=1.5,
                )
            else:
                ax.plot([x], [p.mean], "_", color="black", markersize=22)
        ax.axhline(0.0, color="grey", linewidth=1, linestyle="--")
        ax.set_xticks(range(len(mine)), [f"{p.name}\n({p.n} pairs)" for p in mine])
        ax.set_xlim(-0.6, len(mine) - 0.4)
        ax.set_title(_title(group), fontsize="medium")
        ax.grid(True, axis="y", alpha=0.3)
    for row in axes:
        row[0].set_ylabel(f"{metric}: arm − base")
    level = paired[0].level if paired else 0.9
    fig.suptitle(
        f"{metric}, pair by pair (trial n of each arm): points are pairs, the bar their mean with its "
        f"{level:.0%} bootstrap interval;\n{better} zero the arm is better",
        fontsize="medium",
    )
    fig.savefig(png, dpi=120)
    fig.set_layout_engine("none")  # the SVG keeps the layout the PNG's save computed
    fig.savefig(svg)
