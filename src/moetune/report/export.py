"""``moetune export``: a sweep's trials from MLflow -> budget-vs-quality curves, figures, summary.

Reads the studies (parent runs, ROLE=study) and trials (child runs, ROLE=trial) of one sweep
experiment, builds one curve per (gate, local search arm, dataset, task weights, sampler) and test
metric, and writes into the output folder: curves.csv; reductions.csv (budget reduction factor of
local search, and of its warm-up control arm, at several target qualities); top_trials.csv (the
paper's own reporting: mean test metric of the top 5% of trials by validation loss, with its
standard error); per metric a figure against trials (budget_<metric>) and one against expected
cumulative compute seconds (budget_<metric>_compute), as PNG and SVG; one self-contained
interactive HTML page; summary.md, which opens with the one-sentence answer. Then it logs the same
files on the experiment's one run tagged ROLE=export (a new export replaces the previous one).

Random-search studies of the same gate/local_search/dataset are pooled (their trials are
independent draws from the same space, whatever the seed) and use the exact expected-max
estimator with a bootstrap band; adaptive (TPE) studies use the running best in trial order,
averaged over the seeds. FAILED trials count in the budget but are never selected; a finished
trial that did not record a metric counts as failed for that metric. RUNNING trials and KILLED
ones (an interrupted study; a re-run redoes them) are left out.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import numpy as np

from moetune import budget, schema
from moetune.errors import ConfigError

EXPORT = "export"  # ROLE tag value of the run that holds the exported files
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"
DEFAULT_SELECTION = "best_val_loss"
PARENT_RUN_ID = "mlflow.parentRunId"
REPORT_BUDGETS = (1, 10, 100)
HEADLINE_AT = 10  # the answer's target quality: the local-search curve's value at 10 trials
TOP_FRACTION = 0.05  # the paper's reporting (supplement S1.3): top 5% of trials by validation loss
GATE_LABELS = {"topk": "Top-k", "dselect_k": "DSelect-k", "comet": "COMET", "hash": "Hash", "softmax": "Softmax"}
ARMS = ("on", "warmup")  # arms compared with local_search=off
ARM_LABELS = {"on": "local search", "warmup": "uniform warm-up (control)", "off": "no local search"}
_SAMPLER_TEXT = {"random": "random search", "tpe": "TPE"}
REDUCTION_COLUMNS = ["gate", "dataset", "task_weights", "sampler", "arm", "metric", "at_n", "q", "n_arm", "n_off",
                     "factor", "low", "high", "censored"]
CSV_COLUMNS = ["study", "gate", "local_search", "dataset", "task_weights", "sampler", "estimator", "metric",
               "higher_is_better", "budget", "value", "low", "high", "compute_seconds", "p_no_model", "n_trials",
               "n_failed", "n_studies"]
TOP_COLUMNS = ["gate", "local_search", "dataset", "task_weights", "sampler", "metric", "n_finished", "n_top", "mean",
               "stderr"]


@dataclass
class _Trial:
    index: int
    finished: bool
    metrics: dict


@dataclass
class _Study:
    key: str
    tags: dict
    trials: list = field(default_factory=list)

    @property
    def group(self) -> tuple:
        t = self.tags
        return (t.get(schema.GATE, "?"), t.get(schema.LOCAL_SEARCH, "?"), t.get(schema.DATASET, "?"),
                t.get(schema.TASK_WEIGHTS, "equal"), t.get(schema.SAMPLER, "random"))


@dataclass
class _Result:
    """One curve: a (gate, local_search, dataset, task_weights, sampler) group for one metric."""

    group: tuple
    metric: str
    studies: list
    curve: budget.Curve
    trials: object  # pooled budget.Trials (random) or list of them (adaptive)
    best: float

    gate = property(lambda self: self.group[0])
    local_search = property(lambda self: self.group[1])
    dataset = property(lambda self: self.group[2])
    task_weights = property(lambda self: self.group[3])
    sampler = property(lambda self: self.group[4])

    @property
    def setting(self) -> tuple:
        """What a figure row shows: the dataset and the task weighting."""
        return self.dataset, self.task_weights


# ---------------------------------------------------------------- reading MLflow

def _check_store(tracking_uri: str) -> None:
    """Refuse a sqlite path that does not exist: MLflow would silently create an empty store."""
    if tracking_uri.startswith("sqlite:///"):
        path = Path(tracking_uri[len("sqlite:///"):])
        if not path.is_file():
            raise ConfigError(f"no MLflow store at {path} (tracking URI {tracking_uri}); pass --tracking-uri")


def _paged(fetch):
    token = None
    while True:
        page = fetch(token)
        yield from page
        token = page.token
        if not token:
            return


def _experiment(client, name: str):
    exp = client.get_experiment_by_name(name)
    if exp is None:
        names = sorted(e.name for e in _paged(lambda tok: client.search_experiments(page_token=tok)))
        raise ConfigError(f"unknown experiment {name!r}; available: {', '.join(names) or '(none)'}")
    return exp


def _runs(client, experiment_id: str, role: str):
    flt = f"tags.`{schema.ROLE}` = '{role}'"
    return list(_paged(lambda tok: client.search_runs([experiment_id], filter_string=flt, max_results=1000,
                                                      page_token=tok)))


def _parse_filters(filters) -> dict:
    if filters is None:
        return {}
    if isinstance(filters, Mapping):
        return {str(k): str(v) for k, v in filters.items()}
    out = {}
    for item in filters:
        key, sep, value = str(item).partition("=")
        if not sep or not key:
            raise ConfigError(f"filter {item!r} is not KEY=VALUE (e.g. gate=topk)")
        out[key.strip()] = value.strip()
    return out


def _load_studies(client, exp, filters: dict, selection: str) -> list[_Study]:
    by_id = {r.info.run_id: _Study(r.data.tags.get(schema.STUDY_KEY, r.info.run_id), dict(r.data.tags))
             for r in _runs(client, exp.experiment_id, schema.STUDY)}
    studies = sorted(by_id.values(), key=lambda s: s.key)
    if not studies:
        raise ConfigError(f"experiment {exp.name!r} has no study runs (tag {schema.ROLE}={schema.STUDY})")
    for key, value in filters.items():
        kept = [s for s in studies if s.tags.get(key) == value]
        if not kept:
            seen = sorted({s.tags.get(key, "(unset)") for s in studies})
            raise ConfigError(f"no study matches {key}={value}; values of {key}: {', '.join(seen)}")
        studies = kept
    wanted = {id(s) for s in studies}
    for run in _runs(client, exp.experiment_id, schema.TRIAL):
        study = by_id.get(run.data.tags.get(PARENT_RUN_ID))
        if study is None or id(study) not in wanted or run.info.status not in ("FINISHED", "FAILED"):
            continue  # another study's trial, or one still running or killed by an interruption
        metrics = dict(run.data.metrics)
        finished = run.info.status == "FINISHED" and math.isfinite(metrics.get(selection, math.nan))
        index = int(run.data.tags.get(schema.TRIAL_INDEX, run.info.start_time or 0))
        study.trials.append(_Trial(index, finished, metrics))
    for s in studies:
        s.trials.sort(key=lambda t: t.index)
        n_ok = sum(t.finished for t in s.trials)
        if n_ok < 2:
            raise ConfigError(f"study {s.key!r} has {n_ok} finished trial(s) with {selection} "
                              f"out of {len(s.trials)}; a curve needs at least 2")
    return studies


def _metrics(studies: list[_Study], metric: str | None) -> list[str]:
    recorded = sorted({m for s in studies for t in s.trials if t.finished for m in t.metrics})
    tests = [m for m in recorded if m.startswith("test_")]
    if metric is not None:
        if metric not in recorded:
            raise ConfigError(f"no finished trial recorded metric {metric!r}; recorded test metrics: "
                              f"{', '.join(tests) or '(none)'}")
        try:
            schema.higher_is_better(metric)
        except KeyError as e:
            raise ConfigError(str(e.args[0])) from None
        return [metric]
    known = []
    for m in tests:
        try:
            schema.higher_is_better(m)
            known.append(m)
        except KeyError:
            pass  # e.g. a timing metric: no direction, no curve
    if not known:
        raise ConfigError(f"no test_* metric with a known direction recorded; recorded: {', '.join(recorded)}")
    return known


# ---------------------------------------------------------------- curves

def _trials_of(study: _Study, selection: str, metric: str) -> budget.Trials:
    nan = math.nan
    ok = [t.finished and math.isfinite(t.metrics.get(metric, nan)) for t in study.trials]
    return budget.Trials(
        val=[t.metrics[selection] if f else nan for t, f in zip(study.trials, ok)],
        test=[t.metrics[metric] if f else nan for t, f in zip(study.trials, ok)],
        failed=[not f for f in ok],
        seconds=[t.metrics.get(schema.WALL_SECONDS, nan) for t in study.trials])


def _pool(parts: list[budget.Trials]) -> budget.Trials:
    return budget.Trials(np.concatenate([p.val for p in parts]), np.concatenate([p.test for p in parts]),
                         np.concatenate([p.failed for p in parts]), np.concatenate([p.seconds for p in parts]))


def _curves(studies, metrics, selection, resamples, seed, level) -> list[_Result]:
    val_up = schema.higher_is_better(selection)
    groups: dict[tuple, list[_Study]] = {}
    for s in studies:
        groups.setdefault(s.group, []).append(s)
    results = []
    for metric in metrics:
        for group, members in sorted(groups.items()):
            members = [s for s in members if any(t.finished and metric in t.metrics for t in s.trials)]
            if not members:
                continue  # e.g. a metric of another dataset's task
            parts = [_trials_of(s, selection, metric) for s in members]
            if group[4] == "random":
                trials = _pool(parts)
                curve = budget.budget_curve(trials.val, trials.test, failed=trials.failed, seconds=trials.seconds,
                                            val_higher_is_better=val_up, resamples=resamples, level=level,
                                            seed=seed)
                best = float(budget.expected_best_curve(trials.val, trials.test, failed=trials.failed,
                                                        val_higher_is_better=val_up, replacement=False,
                                                        budgets=[trials.n])[0])
            else:  # adaptive sampler: trials are not exchangeable
                trials = parts
                curve = budget.running_best_curve(parts, val_higher_is_better=val_up, level=level)
                best = float(curve.value[-1])
            results.append(_Result(group, metric, members, curve, trials, best))
    return results


def _reductions(results: list[_Result], val_up: bool, resamples: int, seed: int, level: float) -> dict:
    """Reduction factors of each arm (local search, warm-up control) over "off", keyed by
    (metric, dataset, task_weights, gate, sampler, arm) where both exist.

    Each value is a list of budget.Reduction, one per target n in budget.REDUCTION_AT (<= N_arm)
    plus HEADLINE_AT.
    """
    by = {(r.metric, r.dataset, r.task_weights, r.gate, r.sampler, r.local_search): r for r in results}
    ats = sorted(set(budget.REDUCTION_AT) | {HEADLINE_AT})
    out = {}
    for (metric, dataset, weights, gate, sampler, arm), res in by.items():
        off = by.get((metric, dataset, weights, gate, sampler, "off"))
        if arm not in ARMS or off is None:
            continue
        up = schema.higher_is_better(metric)
        if sampler == "random":
            red = budget.reduction_factors(res.trials, off.trials, at=ats, test_higher_is_better=up,
                                           val_higher_is_better=val_up, resamples=resamples, level=level, seed=seed)
        else:
            red = budget.reduction_factors(res.curve, off.curve, at=ats, test_higher_is_better=up, level=level)
        out[(metric, dataset, weights, gate, sampler, arm)] = red
    return out


@dataclass
class _Top:
    """The paper's reporting for one group and metric: the top 5% of finished trials by validation."""

    result: _Result
    n_finished: int
    n_top: int
    mean: float
    stderr: float


def _top_trials(results: list[_Result], val_up: bool) -> list[_Top]:
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
        out.append(_Top(r, int(val.size), n_top, float(top.mean()), stderr))
    return out


# ---------------------------------------------------------------- the answer

def _weights_text(weights: str) -> str:
    return "" if weights == "equal" else f", task weights {weights.replace('_', ', ')}"


def _setting_text(dataset: str, weights: str) -> str:
    return dataset + _weights_text(weights)


def _headline_metric(studies: list[_Study], metrics: list[str]) -> str:
    """The metric the answer is given in: the studies' headline tag (the test twin of the selection metric),
    else test_loss, as the README says."""
    for s in studies:
        m = s.tags.get(schema.HEADLINE_METRIC)
        if m in metrics:
            return m
    return "test_loss" if "test_loss" in metrics else metrics[0]


def _headline(reductions: dict, metric: str) -> tuple[str, list[str]]:
    """(one sentence for summary.md, one line per gate for the terminal): local search's reduction factor
    at the quality its curve reaches at HEADLINE_AT trials (or at its largest budget below that)."""
    lines, clauses = [], []
    for key in sorted(k for k in reductions if k[0] == metric and k[5] == "on"):
        _, dataset, weights, gate, sampler, _ = key
        reds = reductions[key]
        r = next((x for x in reds if x.at == HEADLINE_AT), reds[-1] if reds else None)
        if r is None:
            continue
        name = GATE_LABELS.get(gate, gate)
        where = _setting_text(dataset, weights) + ("" if sampler == "random" else f", {sampler}")
        target = f"{metric} {r.q:.4g}, what {r.at} trials reach with local search"
        lines.append(f"{name} ({where}): budget reduction {r} to reach {target}")
        if r.factor is not None and r.factor < 1:
            clauses.append(f"{name} on {where} needs {1 / r.factor:.3g}x more trials, not fewer, to reach {target} "
                           f"(reduction {r})")
        else:
            clauses.append(f"{name} on {where} needs {r} fewer trials to reach {target}")
    if not clauses:
        return ("No gate has studies both with and without local search, so there is no reduction factor; "
                "run local_search=on,off."), []
    return "With permutation local search, " + "; ".join(clauses) + ".", lines


# ---------------------------------------------------------------- writing

def _label(gate: str, local_search: str, sampler: str) -> str:
    text = f"{GATE_LABELS.get(gate, gate)}, {ARM_LABELS.get(local_search, local_search)}"
    if sampler != "random":
        text += f" ({sampler.upper() if sampler == 'tpe' else sampler}, running best)"
    return text


def _direction(metric: str) -> str:
    return f"{metric} ({'higher' if schema.higher_is_better(metric) else 'lower'} is better)"


def _num(x) -> str:
    return "" if x is None or not np.isfinite(x) else repr(float(x))


def _write_rows(path: Path, columns: list[str], rows: Iterable[list]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        w.writerows(rows)


def _write_csv(path: Path, results: list[_Result]) -> None:
    _write_rows(path, CSV_COLUMNS, (
        ["+".join(s.key for s in r.studies), r.gate, r.local_search, r.dataset, r.task_weights, r.sampler,
         r.curve.estimator, r.metric, schema.higher_is_better(r.metric), int(n), _num(r.curve.value[j]),
         _num(r.curve.low[j]), _num(r.curve.high[j]), _num(r.curve.compute_seconds[j]), _num(r.curve.p_no_model[j]),
         r.curve.n_trials, r.curve.n_failed, len(r.studies)]
        for r in results for j, n in enumerate(r.curve.budgets)))


def _write_reductions_csv(path: Path, reductions: dict) -> None:
    """One row per (gate, dataset, weights, sampler, arm, metric, target). A censored row (the off-curve never
    reaches q) holds the lower bounds n_off = N_off and factor = N_off / n_arm; low/high may be inf."""
    def num(x):
        return "" if x is None or np.isnan(x) else repr(float(x))

    def row(key, r):
        metric, dataset, weights, gate, sampler, arm = key
        n_off = r.n_off_max if r.censored else r.n_off
        factor = r.lower_bound if r.censored else r.factor
        return [gate, dataset, weights, sampler, arm, metric, r.at, num(r.q), "" if r.n_on is None else r.n_on,
                "" if n_off is None else n_off, num(factor), num(r.low), num(r.high),
                r.censored or bool(np.isposinf(r.high))]

    keys = sorted(reductions, key=lambda k: (k[3], k[1], k[2], k[4], k[5], k[0]))
    _write_rows(path, REDUCTION_COLUMNS, (row(key, r) for key in keys for r in reductions[key]))


def _write_top_csv(path: Path, tops: list[_Top]) -> None:
    _write_rows(path, TOP_COLUMNS, (
        [t.result.gate, t.result.local_search, t.result.dataset, t.result.task_weights, t.result.sampler,
         t.result.metric, t.n_finished, t.n_top, _num(t.mean), _num(t.stderr)] for t in tops))


def _panels(results: list[_Result], metric: str):
    """Panel grid of one metric's figure: rows = settings (dataset, task weights), columns = gates."""
    order = {"on": 0, "warmup": 1, "off": 2}
    mine = sorted((r for r in results if r.metric == metric), key=lambda r: (r.sampler, order.get(r.local_search, 3)))
    settings = sorted({r.setting for r in mine})
    gates = sorted({r.gate for r in mine})
    return mine, settings, gates


def _estimator_text(curves: Iterable[_Result], level: float) -> str:
    parts = []
    for est in sorted({r.curve.estimator for r in curves}):
        if est == budget.RUNNING_BEST:
            parts.append(f"running best in trial order, mean over seeds ({level:.0%} band over seeds)")
        else:
            parts.append(f"expected best of n random trials, exact ({level:.0%} bootstrap band)")
    return "; ".join(parts)


ARM_COLORS = {"on": (31, 119, 180), "off": (255, 127, 14), "warmup": (44, 160, 44)}


def _style(r: _Result):
    """(rgb 0..255, dashed?): the arm picks the color (on blue, off orange, warm-up green); TPE is dashed."""
    return ARM_COLORS.get(r.local_search, (127, 127, 127)), r.sampler != "random"


X_AXES = {"trials": ("budgets", "tuning budget (trials)"),
          "compute": ("compute_seconds", "tuning budget (compute seconds)")}


def _title(metric: str, x: str, mine, level: float) -> str:
    what = "trials" if x == "trials" else "compute: n x mean trial seconds"
    return f"{metric}: budget ({what}) vs quality\n{_estimator_text(mine, level)}"


def _figure_png_svg(results, metric, level, png: Path, svg: Path, x: str = "trials") -> None:
    """Panels of one metric's curves against trials or, x="compute", expected cumulative compute
    seconds (n x mean trial seconds): local search makes a trial cost more, so both views matter."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg canvas
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    attr, xlabel = X_AXES[x]
    mine, settings, gates = _panels(results, metric)
    fig = Figure(figsize=(max(5.2 * len(gates), 7.0), 3.9 * len(settings) + 1.0), layout="constrained")
    axes = fig.subplots(len(settings), len(gates), squeeze=False, sharey="row")
    for i, setting in enumerate(settings):
        for j, gate in enumerate(gates):
            ax = axes[i][j]
            for r in (r for r in mine if r.setting == setting and r.gate == gate):
                c = r.curve
                rgb, dashed = _style(r)
                color = tuple(v / 255 for v in rgb)
                xs = getattr(c, attr)
                ax.fill_between(xs, c.low, c.high, color=color, alpha=0.15, linewidth=0)
                ax.plot(xs, c.value, "--" if dashed else "-", color=color, label=_label(r.gate, r.local_search, r.sampler))
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{GATE_LABELS.get(gate, gate)} — {_setting_text(*setting)}", fontsize="medium")
            ax.set_xlabel(xlabel)
            if j == 0:
                ax.set_ylabel(_direction(metric))
            ax.grid(True, which="both", alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize="small")
    fig.suptitle(_title(metric, x, mine, level), fontsize="medium")
    fig.savefig(png, dpi=120)
    fig.savefig(svg)


def _figure_plotly(results, metric, level, x: str = "trials"):
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    attr, xlabel = X_AXES[x]
    mine, settings, gates = _panels(results, metric)
    fig = make_subplots(rows=len(settings), cols=len(gates), shared_yaxes=True,
                        subplot_titles=[f"{GATE_LABELS.get(g, g)} — {_setting_text(*st)}" for st in settings for g in gates])
    for i, setting in enumerate(settings, start=1):
        for j, gate in enumerate(gates, start=1):
            for r in (r for r in mine if r.setting == setting and r.gate == gate):
                c, (rgb, dashed) = r.curve, _style(r)
                rgba = "rgba({},{},{},{{}})".format(*rgb)
                name = _label(r.gate, r.local_search, r.sampler) + (f" ({_setting_text(*setting)})" if len(settings) > 1 else "")
                xs = getattr(c, attr).tolist()
                fig.add_trace(go.Scatter(x=xs, y=c.high.tolist(), mode="lines", line=dict(width=0),
                                         showlegend=False, hoverinfo="skip", legendgroup=name), row=i, col=j)
                fig.add_trace(go.Scatter(x=xs, y=c.low.tolist(), mode="lines", line=dict(width=0), fill="tonexty",
                                         fillcolor=rgba.format(0.15), showlegend=False,
                                         hoverinfo="skip", legendgroup=name), row=i, col=j)
                custom = np.stack([c.low, c.high, c.compute_seconds, c.budgets], axis=1).tolist()
                fig.add_trace(go.Scatter(x=xs, y=c.value.tolist(), mode="lines", name=name, legendgroup=name,
                                         line=dict(color=rgba.format(1), dash="dash" if dashed else "solid"),
                                         customdata=custom,
                                         hovertemplate=(name + "<br>n=%{customdata[3]}: %{y:.4g} [%{customdata[0]:.4g}, "
                                                        "%{customdata[1]:.4g}], %{customdata[2]:.0f} s<extra></extra>")),
                              row=i, col=j)
            fig.update_xaxes(type="log", title_text=xlabel, row=i, col=j)
        fig.update_yaxes(title_text=_direction(metric), row=i, col=1)
    fig.update_layout(title=dict(text=_title(metric, x, mine, level).replace("\n", "<br>"), font=dict(size=15)),
                      margin=dict(t=110), height=380 * len(settings) + 160, width=max(760, 520 * len(gates)),
                      legend=dict(orientation="h", yanchor="top", y=-0.18, x=0))
    return fig


def _write_html(path: Path, figures: list) -> None:
    """One page, every metric's figure, plotly.js embedded once (viewable offline)."""
    parts = [fig.to_html(full_html=False, include_plotlyjs=(k == 0)) for k, fig in enumerate(figures)]
    path.write_text("<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>moetune budget vs quality</title>"
                    "</head><body>\n" + "\n".join(parts) + "\n</body></html>\n", encoding="utf-8")


def _fmt(x: float) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.4g}"


def _reduction_table(reds_by_arm: dict, sampler: str, level: float) -> list[str]:
    """Markdown table of one gate's reductions over "off", one row per arm and target budget."""
    lines = [f"Budget reduction factor over no local search ({_SAMPLER_TEXT.get(sampler, sampler)}):", "",
             f"| arm | target (arm's curve at n) | q | n_arm | n_off | reduction [{level:.0%} interval] |",
             "|---|---|---|---|---|---|"]
    for arm, reds in reds_by_arm.items():
        for r in reds:
            n_off = "—" if r.n_on is None else (f"> {r.n_off_max}" if r.censored else str(r.n_off))
            n_on = "—" if r.n_on is None else str(r.n_on)
            lines.append(f"| {ARM_LABELS[arm]} | n = {r.at} | {_fmt(r.q)} | {n_on} | {n_off} | {r} |")
    return lines + [""]


def _top_table(tops: list[_Top], metric: str) -> list[str]:
    mine = [t for t in tops if t.result.metric == metric]
    if not mine:
        return []
    lines = [f"Top {TOP_FRACTION:.0%} of trials by validation loss (the paper's reporting, supplement S1.3): "
             "mean test metric ± standard error.", "",
             "| gate | arm | setting | finished trials | top trials | mean | ± s.e. |", "|---|---|---|---|---|---|---|"]
    for t in sorted(mine, key=lambda t: (t.result.setting, t.result.gate, t.result.sampler, t.result.local_search)):
        r = t.result
        sampler = "" if r.sampler == "random" else f" ({r.sampler})"
        lines.append(f"| {GATE_LABELS.get(r.gate, r.gate)}{sampler} | {ARM_LABELS.get(r.local_search, r.local_search)} | "
                     f"{_setting_text(*r.setting)} | {t.n_finished} | {t.n_top} | {_fmt(t.mean)} | {_fmt(t.stderr)} |")
    return lines + [""]


def _write_summary(path: Path, experiment: str, answer: str, results, reductions, tops, selection: str,
                   level: float) -> None:
    lines = [f"# Budget vs quality — {experiment}", "", f"**Answer.** {answer}", "",
             f"Selection by `{selection}`. Quality at n = expected test score of the trial a budget of n "
             "trials selects; \"best\" = the trial the whole study selects (mean over seeds for running best). "
             f"Bands ({level:.0%}) are in curves.csv. Budget reduction factor of an arm = n_off(q) / n_arm(q), "
             "the budgets the curves without local search and with the arm need to reach q = the arm's curve's "
             "value at n; \"> N\" (censored): without local search the curve never reaches q within its N "
             "trials; an interval whose upper end is ∞ is censored above (some resamples never reach q). "
             "The uniform warm-up arm is the control: the same first E_perm epochs with the gates mixed by a "
             "fixed uniform matrix instead of a learned permutation.", ""]
    for metric in sorted({r.metric for r in results}):
        lines += [f"## {_direction(metric)}", ""]
        mine = [r for r in results if r.metric == metric]
        for setting in sorted({r.setting for r in mine}):
            for gate in sorted({r.gate for r in mine if r.setting == setting}):
                rows = [r for r in mine if r.setting == setting and r.gate == gate]
                lines += [f"### {GATE_LABELS.get(gate, gate)} — {_setting_text(*setting)}", "",
                          "| curve | estimator | trials (failed) | best | " +
                          " | ".join(f"n = {n}" for n in REPORT_BUDGETS) + " |",
                          "|---|---|---|---|" + "---|" * len(REPORT_BUDGETS)]
                order = {"on": 0, "warmup": 1, "off": 2}
                for r in sorted(rows, key=lambda r: (r.sampler, order.get(r.local_search, 3))):
                    c = r.curve
                    cells = [_fmt(c.at(n)) if n <= c.budgets.max() else "—" for n in REPORT_BUDGETS]
                    lines.append(f"| {_label(r.gate, r.local_search, r.sampler)} | {c.estimator} | "
                                 f"{c.n_trials} ({c.n_failed}) | {_fmt(r.best)} | " + " | ".join(cells) + " |")
                lines.append("")
                for sampler in sorted({r.sampler for r in rows}):
                    by_arm = {arm: reductions[(metric, setting[0], setting[1], gate, sampler, arm)] for arm in ARMS
                              if reductions.get((metric, setting[0], setting[1], gate, sampler, arm))}
                    if by_arm:
                        lines += _reduction_table(by_arm, sampler, level)
        lines += _top_table(tops, metric)
    path.write_text("\n".join(lines), encoding="utf-8")


def _log_run(client, exp, files: dict, params: dict) -> str:
    """Log the files on a new export run, then delete the experiment's older export runs: one per experiment."""
    old = _runs(client, exp.experiment_id, EXPORT)
    run = client.create_run(exp.experiment_id, run_name="export",
                            tags={schema.ROLE: EXPORT, schema.SWEEP: exp.name})
    try:
        for k, v in params.items():
            client.log_param(run.info.run_id, k, v)
        for path in files.values():
            client.log_artifact(run.info.run_id, str(path))
    except Exception:
        client.delete_run(run.info.run_id)
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    for previous in old:
        client.delete_run(previous.info.run_id)
    return run.info.run_id


# ---------------------------------------------------------------- entry points

@dataclass
class Export:
    """What an export wrote and what it found: the files, and the answer (one line per gate)."""

    files: dict
    answer: str
    lines: list
    metric: str
    experiment_id: str
    tracking_uri: str

    @property
    def folder(self) -> Path:
        return next(iter(self.files.values())).parent


def export_sweep(tracking_uri: str, experiment_name: str, out_dir=None, *, metric: str | None = None,
                 filters=None, selection: str = DEFAULT_SELECTION, resamples: int = 1000, seed: int = 0,
                 level: float = 0.9, log_to_mlflow: bool = True) -> Export:
    """Export one sweep; returns the files written and the answer.

    ``filters`` (mapping or "KEY=VALUE" strings) keep studies whose tags match. Every check runs
    before anything is written; files are rendered in a temp folder and moved into ``out_dir``
    (default sweeps/<experiment>/export) only when all are done.
    """
    from mlflow.tracking import MlflowClient

    try:
        val_up = schema.higher_is_better(selection)
    except KeyError as e:
        raise ConfigError(str(e.args[0])) from None
    filters = _parse_filters(filters)
    _check_store(tracking_uri)
    client = MlflowClient(tracking_uri)
    exp = _experiment(client, experiment_name)
    studies = _load_studies(client, exp, filters, selection)
    metrics = _metrics(studies, metric)
    results = _curves(studies, metrics, selection, resamples, seed, level)
    reductions = _reductions(results, val_up, resamples, seed, level)
    tops = _top_trials(results, val_up)
    headline = _headline_metric(studies, metrics)
    answer, lines = _headline(reductions, headline)

    out_dir = Path(out_dir) if out_dir is not None else Path("sweeps") / experiment_name / "export"
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    except OSError as exc:
        raise ConfigError(f"cannot write the export to {out_dir} ({exc.strerror}); pass --out <writable folder>") from None
    try:
        names = ["summary.md", "curves.csv", "reductions.csv", "top_trials.csv"]
        _write_csv(tmp / "curves.csv", results)
        _write_reductions_csv(tmp / "reductions.csv", reductions)
        _write_top_csv(tmp / "top_trials.csv", tops)
        _write_summary(tmp / "summary.md", experiment_name, answer, results, reductions, tops, selection, level)
        figures = []
        for m in metrics:
            for x, stem in (("trials", f"budget_{m}"), ("compute", f"budget_{m}_compute")):
                _figure_png_svg(results, m, level, tmp / f"{stem}.png", tmp / f"{stem}.svg", x=x)
                names += [f"{stem}.png", f"{stem}.svg"]
                figures.append(_figure_plotly(results, m, level, x=x))
        _write_html(tmp / "budget_curves.html", figures)
        names.append("budget_curves.html")
        for name in names:
            os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    files = {name: out_dir / name for name in names}
    if log_to_mlflow:
        _log_run(client, exp, files, {"metrics": ",".join(metrics), "selection": selection,
                                      "resamples": resamples, "seed": seed, "level": level,
                                      "filters": ",".join(f"{k}={v}" for k, v in filters.items()) or "-"})
    return Export(files, answer, lines, headline, exp.experiment_id, tracking_uri)


def print_answer(export: Export) -> None:
    """What a user reads at the end of a sweep or an export: where the files are and the answer per gate."""
    print(f"export: {export.folder.resolve()} (summary.md, curves, figures, budget_curves.html)")
    if not export.lines:
        print(f"  {export.answer}")
    for line in export.lines:
        print(f"  {line}")
    page = f"#/experiments/{export.experiment_id}/runs?workflowType=machine_learning"
    if export.tracking_uri.startswith(("http://", "https://")):
        print(f"browse: {export.tracking_uri.rstrip('/')}/{page}")
    else:
        print(f"browse: mlflow ui --backend-store-uri {export.tracking_uri} --host 127.0.0.1 --port 5000, "
              f"then open http://127.0.0.1:5000/{page}")


def main(argv=None, prog: str = "moetune-export") -> int:
    p = argparse.ArgumentParser(prog=prog,
                                description="Budget-vs-quality curves of a sweep, from its MLflow runs.")
    p.add_argument("--experiment", required=True, help="MLflow experiment (= sweep) name")
    p.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI)
    p.add_argument("--out", default=None, help="output folder (default sweeps/<experiment>/export)")
    p.add_argument("--metric", default=None, help="one test metric (default: every test_* metric recorded)")
    p.add_argument("--selection", default=DEFAULT_SELECTION, help="validation metric that selects a trial")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE",
                   help="keep studies whose tag KEY equals VALUE (repeatable), e.g. dataset=movielens")
    p.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for bands and intervals")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    try:
        files = export_sweep(args.tracking_uri, args.experiment, args.out, metric=args.metric,
                             filters=args.filter, selection=args.selection, resamples=args.resamples,
                             seed=args.seed)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"wrote {len(files.files)} files to {files.folder}:")
    for path in files.files.values():
        print(f"  {path}")
    print_answer(files)
    return 0


CLI_USAGE = """usage: moetune COMMAND [options]

commands:
  export    budget-vs-quality curves, figures and summary of a sweep (moetune export --help)"""


def cli(argv=None) -> int:
    """The ``moetune`` console command: ``moetune export ...`` runs main(); room for more subcommands.

    A bare ``moetune`` or an unknown command prints usage to stderr and exits 2 (like argparse).
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] == "export":
        return main(argv[1:], prog="moetune export")
    if argv and argv[0] in ("-h", "--help"):
        print(CLI_USAGE)
        return 0
    print(CLI_USAGE, file=sys.stderr)
    if argv:
        print(f"moetune: error: unknown command {argv[0]!r}", file=sys.stderr)
    raise SystemExit(2)


if __name__ == "__main__":
    sys.exit(main())
