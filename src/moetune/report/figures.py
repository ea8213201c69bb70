"""The export's figures: each one described once (``FigureSpec``), drawn by two thin renderers.

Static files (PNG, SVG) come from matplotlib and the interactive page from plotly; both draw the same
description, so the two views cannot drift apart. Per metric there are two figures, one against trials and
one against expected cumulative compute seconds (n x mean trial seconds): local search makes a trial cost
more, so both views matter. Panels: rows = settings (dataset, task weights), columns = gates.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from moetune.report.analysis import (
    ARM_ORDER,
    GATE_LABELS,
    Analysis,
    GroupCurve,
    direction_text,
    estimator_text,
    label,
    setting_text,
)
from moetune.report.render_pool import draw_here

if TYPE_CHECKING:
    from plotly.graph_objects import Figure as PlotlyFigure

# blue, orange, green, purple
ARM_COLORS = {"on": (31, 119, 180), "off": (255, 127, 14), "warmup": (44, 160, 44), "frozen": (148, 103, 189)}
OTHER_COLOR = (127, 127, 127)
X_AXES = {
    "trials": ("budgets", "tuning budget (trials)"),
    "compute": ("compute_seconds", "tuning budget (compute seconds)"),
}
BAND_ALPHA = 0.15
MAX_COLS = 3  # gates per figure row: more gates wrap onto further rows of the same setting


@dataclass(frozen=True)
class Series:
    """One curve in a panel: a line with its band; ``budgets`` and ``seconds`` are shown on hover."""

    label: str
    color: tuple[int, int, int]  # rgb, 0..255: the arm's
    dashed: bool  # an adaptive sampler's running best
    xs: np.ndarray
    value: np.ndarray
    low: np.ndarray
    high: np.ndarray
    budgets: np.ndarray
    seconds: np.ndarray


@dataclass(frozen=True)
class Panel:
    row: int  # 0-based
    col: int
    title: str
    series: list[Series]


@dataclass(frozen=True)
class FigureSpec:
    stem: str  # file name without extension
    title: str  # lines separated by "\n"
    x_label: str
    y_label: str  # shown on the first column
    rows: list[str]  # each grid row's setting, e.g. "movielens, task weights 0.1, 0.9" (repeated when gates wrap)
    n_cols: int
    panels: list[Panel]  # the full grid, row by row; a panel may have no series

    def setting_start(self, row: int) -> int:
        """The first grid row of row's setting: its top-left panel holds the y axis the setting shares."""
        return self.rows.index(self.rows[row])


def _series(r: GroupCurve, attr: str) -> Series:
    """The arm picks the color (on blue, off orange, warm-up green); an adaptive sampler's curve is dashed."""
    c = r.curve
    return Series(
        label=label(r.gate, r.local_search, r.sampler),
        color=ARM_COLORS.get(r.local_search, OTHER_COLOR),
        dashed=r.sampler != "random",
        xs=getattr(c, attr),
        value=c.value,
        low=c.low,
        high=c.high,
        budgets=c.budgets,
        seconds=c.compute_seconds,
    )


def describe(curves: Sequence[GroupCurve], metric: str, level: float, x: str = "trials") -> FigureSpec:
    """The figure of one metric's curves against trials or, x="compute", expected cumulative compute seconds."""
    attr, x_label = X_AXES[x]
    mine = sorted(
        (r for r in curves if r.metric == metric), key=lambda r: (r.sampler, ARM_ORDER.get(r.local_search, 3))
    )
    settings = sorted({r.setting for r in mine})
    gates = sorted({r.gate for r in mine})
    n_cols = max(1, min(len(gates), MAX_COLS))
    rows_per_setting = max(1, math.ceil(len(gates) / n_cols))
    panels = []
    for i, setting in enumerate(settings):
        for j, gate in enumerate(gates):
            series = [_series(r, attr) for r in mine if r.setting == setting and r.gate == gate]
            title = f"{GATE_LABELS.get(gate, gate)} — {setting_text(*setting)}"
            panels.append(Panel(i * rows_per_setting + j // n_cols, j % n_cols, title, series))
        for j in range(len(gates), rows_per_setting * n_cols):  # the setting's last row, filled up
            panels.append(Panel(i * rows_per_setting + j // n_cols, j % n_cols, "", []))
    what = "trials" if x == "trials" else "compute: n x mean trial seconds"
    return FigureSpec(
        stem=f"budget_{metric}" + ("" if x == "trials" else "_compute"),
        title=f"{metric}: budget ({what}) vs quality\n{estimator_text(mine, level)}",
        x_label=x_label,
        y_label=direction_text(metric),
        rows=[setting_text(*s) for s in settings for _ in range(rows_per_setting)],
        n_cols=n_cols,
        panels=panels,
    )


def describe_all(analysis: Analysis) -> list[FigureSpec]:
    return [describe(analysis.curves, m, analysis.level, x) for m in analysis.metrics for x in ("trials", "compute")]


def write_figures(folder: Path, analysis: Analysis, draw: Callable[..., None] = draw_here) -> list[str]:
    """Every figure as PNG and SVG, then one page with all of them; returns the file names in that order.
    ``draw(render, *args)`` draws each (an export's RenderPool queues them for two processes)."""
    specs = describe_all(analysis)
    names = []
    for spec in specs:
        draw(render_matplotlib, spec, folder / f"{spec.stem}.png", folder / f"{spec.stem}.svg")
        names += [f"{spec.stem}.png", f"{spec.stem}.svg"]
    draw(write_page, folder / "budget_curves.html", specs)
    return names + ["budget_curves.html"]


# ---------------------------------------------------------------- matplotlib: PNG and SVG


def render_matplotlib(spec: FigureSpec, png: Path, svg: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg canvas
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    fig = Figure(figsize=(max(5.2 * spec.n_cols, 7.0), 3.9 * len(spec.rows) + 1.0), layout="constrained")
    axes = fig.subplots(len(spec.rows), spec.n_cols, squeeze=False)
    for panel in spec.panels:
        ax = axes[panel.row][panel.col]
        if not panel.title:  # a filler cell of a wrapped row
            ax.set_axis_off()
            continue
        first = spec.setting_start(panel.row)  # a setting's panels share their y axis
        if (first, 0) != (panel.row, panel.col):
            ax.sharey(axes[first][0])
        for s in panel.series:
            color = tuple(v / 255 for v in s.color)
            ax.fill_between(s.xs, s.low, s.high, color=color, alpha=BAND_ALPHA, linewidth=0)
            ax.plot(s.xs, s.value, "--" if s.dashed else "-", color=color, label=s.label)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(panel.title, fontsize="medium")
        ax.set_xlabel(spec.x_label)
        if panel.col == 0:
            ax.set_ylabel(spec.y_label)
        ax.grid(True, which="both", alpha=0.3)
        if panel.series:
            ax.legend(fontsize="small")
    fig.suptitle(spec.title, fontsize="medium")
    fig.savefig(png, dpi=120)
    fig.set_layout_engine("none")  # the SVG keeps the layout the PNG's save computed: nearly half a save less
    fig.savefig(svg)


# ---------------------------------------------------------------- plotly: one interactive page


def render_plotly(spec: FigureSpec) -> PlotlyFigure:
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=len(spec.rows), cols=spec.n_cols, subplot_titles=[p.title for p in spec.panels])
    for panel in spec.panels:
        row, col = panel.row + 1, panel.col + 1
        if not panel.title:  # a filler cell of a wrapped row
            fig.update_xaxes(visible=False, row=row, col=col)
            fig.update_yaxes(visible=False, row=row, col=col)
            continue
        first = spec.setting_start(panel.row) * spec.n_cols + 1  # the setting's shared y axis, numbered
        if first != panel.row * spec.n_cols + col:
            fig.update_yaxes(matches="y" if first == 1 else f"y{first}", row=row, col=col)
        for s in panel.series:
            # one legend for the whole figure: a series names its row when there are several
            name = s.label + (f" ({spec.rows[panel.row]})" if len(set(spec.rows)) > 1 else "")
            rgba = "rgba({},{},{},{{}})".format(*s.color)
            xs = s.xs.tolist()
            band = dict(x=xs, mode="lines", line=dict(width=0), showlegend=False, hoverinfo="skip", legendgroup=name)
            fig.add_trace(go.Scatter(y=s.high.tolist(), **band), row=row, col=col)
            fig.add_trace(
                go.Scatter(y=s.low.tolist(), fill="tonexty", fillcolor=rgba.format(BAND_ALPHA), **band),
                row=row,
                col=col,
            )
            custom = np.stack([s.low, s.high, s.seconds, s.budgets], axis=1).tolist()
            fig.add_trace(
                go.Scatter(
                    x=xs,
                    y=s.value.tolist(),
                    mode="lines",
                    name=name,
                    legendgroup=name,
                    line=dict(color=rgba.format(1), dash="dash" if s.dashed else "solid"),
                    customdata=custom,
                    hovertemplate=(
                        name + "<br>n=%{customdata[3]}: %{y:.4g} [%{customdata[0]:.4g}, "
                        "%{customdata[1]:.4g}], %{customdata[2]:.0f} s<extra></extra>"
                    ),
                ),
                row=row,
                col=col,
            )
        fig.update_xaxes(type="log", title_text=spec.x_label, row=row, col=col)
        if panel.col == 0:
            fig.update_yaxes(title_text=spec.y_label, row=row, col=1)
    fig.update_layout(
        title=dict(text=spec.title.replace("\n", "<br>"), font=dict(size=15)),
        margin=dict(t=110),
        height=380 * len(spec.rows) + 160,
        width=max(760, 520 * spec.n_cols),
        legend=dict(orientation="h", yanchor="top", y=-0.18, x=0),
    )
    return fig


def write_page(path: Path, specs: Sequence[FigureSpec]) -> None:
    """The interactive page of the figures ``specs`` describe."""
    write_html(path, [render_plotly(spec) for spec in specs])


def write_html(path: Path, figures: Sequence[PlotlyFigure]) -> None:
    """One page, every figure, plotly.js embedded once (viewable offline)."""
    parts = [fig.to_html(full_html=False, include_plotlyjs=(k == 0)) for k, fig in enumerate(figures)]
    path.write_text(
        "<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>moetune budget vs quality</title>"
        "</head><body>\n" + "\n".join(parts) + "\n</body></html>\n",
        encoding="utf-8",
    )
