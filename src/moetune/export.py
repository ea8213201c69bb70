"""``moetune export``: a sweep's trials from MLflow -> budget-vs-quality curves, figures, summary.

Reads the studies (parent runs, ROLE=study) and trials (child runs, ROLE=trial) of one sweep
experiment, builds one curve per (gate, local search, dataset, sampler) and test metric, and
writes into the output folder: curves.csv; reductions.csv (budget reduction factor of local
search at several target qualities); per metric a figure against trials (budget_<metric>) and
one against expected cumulative compute seconds (budget_<metric>_compute), as PNG and SVG; one
self-contained interactive HTML page; summary.md. Then it logs the same files on a run tagged
ROLE=export.

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
GATE_LABELS = {"topk": "Top-k", "dselect_k": "DSelect-k", "comet": "COMET", "hash": "Hash", "softmax": "Softmax"}
_SAMPLER_TEXT = {"random": "random search", "tpe": "TPE"}
REDUCTION_COLUMNS = ["gate", "dataset", "sampler", "metric", "at_n", "q", "n_on", "n_off", "factor", "low", "high",
                     "censored"]
CSV_COLUMNS = ["study", "gate", "local_search", "dataset", "sampler", "estimator", "metric", "higher_is_better",
               "budget", "value", "low", "high", "compute_seconds", "p_no_model", "n_trials", "n_failed", "n_studies"]


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
                t.get(schema.SAMPLER, "random"))


@dataclass
class _Result:
    """One curve: a (gate, local_search, dataset, sampler) group for one metric."""

    group: tuple
    metric: str
    studies: list
    curve: budget.Curve
    trials: object  # pooled budget.Trials (random) or list of them (adaptive)
    best: float

    gate = property(lambda self: self.group[0])
    local_search = property(lambda self: self.group[1])
    dataset = property(lambda self: self.group[2])
    sampler = property(lambda self: self.group[3])


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
            if group[3] == "random":
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
    """Reduction factors of local search per (metric, dataset, gate, sampler) where on and off both exist.

    Each value is a list of budget.Reduction, one per target n in budget.REDUCTION_AT (<= N_on).
    """
    by = {(r.metric, r.dataset, r.gate, r.sampler, r.local_search): r for r in results}
    out = {}
    for (metric, dataset, gate, sampler, ls), on in by.items():
        off = by.get((metric, dataset, gate, sampler, "off"))
        if ls != "on" or off is None:
            continue
        up = schema.higher_is_better(metric)
        if sampler == "random":
            red = budget.reduction_factors(on.trials, off.trials, test_higher_is_better=up,
                                           val_higher_is_better=val_up, resamples=resamples, level=level, seed=seed)
        else:
            red = budget.reduction_factors(on.curve, off.curve, test_higher_is_better=up, level=level)
        out[(metric, dataset, gate, sampler)] = red
    return out


# ---------------------------------------------------------------- writing

def _label(gate: str, local_search: str, sampler: str) -> str:
    text = GATE_LABELS.get(gate, gate)
    if local_search == "on":
        text += " + local search"
    if sampler != "random":
        text += f" ({sampler.upper() if sampler == 'tpe' else sampler}, running best)"
    return text


def _direction(metric: str) -> str:
    return f"{metric} ({'higher' if schema.higher_is_better(metric) else 'lower'} is better)"


def _num(x) -> str:
    return "" if x is None or not np.isfinite(x) else repr(float(x))


def _write_csv(path: Path, results: list[_Result]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in results:
            c = r.curve
            study = "+".join(s.key for s in r.studies)
            for j, n in enumerate(c.budgets):
                w.writerow([study, r.gate, r.local_search, r.dataset, r.sampler, c.estimator, r.metric,
                            schema.higher_is_better(r.metric), int(n), _num(c.value[j]), _num(c.low[j]),
                            _num(c.high[j]), _num(c.compute_seconds[j]), _num(c.p_no_model[j]), c.n_trials,
                            c.n_failed, len(r.studies)])


def _write_reductions_csv(path: Path, reductions: dict) -> None:
    """One row per (gate, dataset, sampler, metric, target). A censored row (the off-curve never
    reaches q) holds the lower bounds n_off = N_off and factor = N_off / n_on; low/high may be inf."""
    def num(x):
        return "" if x is None or np.isnan(x) else repr(float(x))

    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(REDUCTION_COLUMNS)
        for metric, dataset, gate, sampler in sorted(reductions, key=lambda k: (k[2], k[1], k[3], k[0])):
            for r in reductions[(metric, dataset, gate, sampler)]:
                n_off = r.n_off_max if r.censored else r.n_off
                factor = r.lower_bound if r.censored else r.factor
                w.writerow([gate, dataset, sampler, metric, r.at, num(r.q), "" if r.n_on is None else r.n_on,
                            "" if n_off is None else n_off, num(factor), num(r.low), num(r.high), r.censored])


def _panels(results: list[_Result], metric: str):
    """Panel grid of one metric's figure: rows = datasets, columns = gates."""
    mine = sorted((r for r in results if r.metric == metric), key=lambda r: (r.sampler, r.local_search != "on"))
    datasets = sorted({r.dataset for r in mine})
    gates = sorted({r.gate for r in mine})
    return mine, datasets, gates


def _estimator_text(curves: Iterable[_Result], level: float) -> str:
    parts = []
    for est in sorted({r.curve.estimator for r in curves}):
        if est == budget.RUNNING_BEST:
            parts.append(f"running best in trial order, mean over seeds ({level:.0%} band over seeds)")
        else:
            parts.append(f"expected best of n random trials, exact ({level:.0%} bootstrap band)")
    return "; ".join(parts)


def _style(r: _Result):
    color = "tab:blue" if r.local_search == "on" else "tab:orange"
    dash = "-" if r.sampler == "random" else "--"
    return color, dash


X_AXES = {"trials": ("budgets", "tuning budget (trials)"),
          "compute": ("compute_seconds", "tuning budget (compute seconds)")}


def _figure_png_svg(results, metric, level, png: Path, svg: Path, x: str = "trials") -> None:
    """Panels of one metric's curves against trials or, x="compute", expected cumulative compute
    seconds (n x mean trial seconds): local search makes a trial cost more, so both views matter."""
    from matplotlib.figure import Figure  # no pyplot: no global backend state, Agg canvas
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    attr, xlabel = X_AXES[x]
    mine, datasets, gates = _panels(results, metric)
    fig = Figure(figsize=(4.6 * len(gates), 3.6 * len(datasets) + 0.6), layout="constrained")
    axes = fig.subplots(len(datasets), len(gates), squeeze=False, sharey="row")
    for i, ds in enumerate(datasets):
        for j, gate in enumerate(gates):
            ax = axes[i][j]
            for r in (r for r in mine if r.dataset == ds and r.gate == gate):
                c = r.curve
                color, dash = _style(r)
                xs = getattr(c, attr)
                ax.fill_between(xs, c.low, c.high, color=color, alpha=0.2, linewidth=0)
                ax.plot(xs, c.value, dash, color=color, label=_label(r.gate, r.local_search, r.sampler))
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
            ax.xaxis.set_minor_formatter(NullFormatter())
            ax.set_title(f"{GATE_LABELS.get(gate, gate)} — {ds}")
            ax.set_xlabel(xlabel)
            if j == 0:
                ax.set_ylabel(_direction(metric))
            ax.grid(True, which="both", alpha=0.3)
            if ax.has_data():
                ax.legend(fontsize="small")
    what = "Budget" if x == "trials" else "Budget in compute (n x mean trial seconds)"
    fig.suptitle(f"{what} vs quality: {_estimator_text(mine, level)}", fontsize="medium")
    fig.savefig(png, dpi=120)
    fig.savefig(svg)


def _figure_plotly(results, metric, level, x: str = "trials"):
    from plotly.subplots import make_subplots
    import plotly.graph_objects as go

    attr, xlabel = X_AXES[x]
    mine, datasets, gates = _panels(results, metric)
    fig = make_subplots(rows=len(datasets), cols=len(gates), shared_yaxes=True,
                        subplot_titles=[f"{GATE_LABELS.get(g, g)} — {d}" for d in datasets for g in gates])
    colors = {"tab:blue": "rgba(31,119,180,{})", "tab:orange": "rgba(255,127,14,{})"}
    for i, ds in enumerate(datasets, start=1):
        for j, gate in enumerate(gates, start=1):
            for r in (r for r in mine if r.dataset == ds and r.gate == gate):
                c, (color, dash) = r.curve, _style(r)
                name = _label(r.gate, r.local_search, r.sampler)
                xs = getattr(c, attr).tolist()
                fig.add_trace(go.Scatter(x=xs, y=c.high.tolist(), mode="lines", line=dict(width=0),
                                         showlegend=False, hoverinfo="skip", legendgroup=name), row=i, col=j)
                fig.add_trace(go.Scatter(x=xs, y=c.low.tolist(), mode="lines", line=dict(width=0), fill="tonexty",
                                         fillcolor=colors[color].format(0.2), showlegend=False,
                                         hoverinfo="skip", legendgroup=name), row=i, col=j)
                custom = np.stack([c.low, c.high, c.compute_seconds, c.budgets], axis=1).tolist()
                fig.add_trace(go.Scatter(x=xs, y=c.value.tolist(), mode="lines", name=name, legendgroup=name,
                                         line=dict(color=colors[color].format(1),
                                                   dash="solid" if dash == "-" else "dash"),
                                         customdata=custom,
                                         hovertemplate=("n=%{customdata[3]}: %{y:.4g} [%{customdata[0]:.4g}, "
                                                        "%{customdata[1]:.4g}], %{customdata[2]:.0f} s")),
                              row=i, col=j)
            fig.update_xaxes(type="log", title_text=xlabel, row=i, col=j)
        fig.update_yaxes(title_text=_direction(metric), row=i, col=1)
    fig.update_layout(title=f"{metric} — budget ({x}) vs quality: {_estimator_text(mine, level)}",
                      height=380 * len(datasets) + 120, width=max(700, 480 * len(gates)))
    return fig


def _write_html(path: Path, figures: list) -> None:
    """One page, every metric's figure, plotly.js embedded once (viewable offline)."""
    parts = [fig.to_html(full_html=False, include_plotlyjs=(k == 0)) for k, fig in enumerate(figures)]
    path.write_text("<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>moetune budget vs quality</title>"
                    "</head><body>\n" + "\n".join(parts) + "\n</body></html>\n", encoding="utf-8")


def _fmt(x: float) -> str:
    return "—" if x is None or not np.isfinite(x) else f"{x:.4g}"


def _reduction_table(reds: list, sampler: str, level: float) -> list[str]:
    """Markdown table of one gate's reductions, one row per target budget of the on-curve."""
    lines = ["", f"Budget reduction factor of local search ({_SAMPLER_TEXT.get(sampler, sampler)}):", "",
             f"| target (on-curve at n) | q | n_on | n_off | reduction [{level:.0%} interval] |",
             "|---|---|---|---|---|"]
    for r in reds:
        if r.n_on is None:
            n_off, text = "—", "— (q not reached)"
        elif r.censored:
            n_off, text = f"> {r.n_off_max}", f"> {r.lower_bound:g}"
        else:
            n_off, text = str(r.n_off), f"{r.factor:.3g}"
            if np.isfinite(r.low) or np.isfinite(r.high):
                text += f" [{budget._fmt_bound(r.low)}, {budget._fmt_bound(r.high)}]"
        n_on = "—" if r.n_on is None else str(r.n_on)
        lines.append(f"| n = {r.at} | {_fmt(r.q)} | {n_on} | {n_off} | {text} |")
    return lines + [""]


def _write_summary(path: Path, experiment: str, results, reductions, selection: str, level: float) -> None:
    lines = [f"# Budget vs quality — {experiment}", "",
             f"Selection by `{selection}`. Quality at n = expected test score of the trial a budget of n "
             "trials selects; \"best\" = the trial the whole study selects (mean over seeds for running best). "
             f"Bands ({level:.0%}) are in curves.csv. Budget reduction factor of local search = "
             "n_off(q) / n_on(q), the budgets the curves without and with it need to reach q = the "
             "local-search curve's value at n; \"> N\": without local search the curve never reaches q "
             "within its N trials (also in reductions.csv).", ""]
    for metric in sorted({r.metric for r in results}):
        lines += [f"## {_direction(metric)}", ""]
        mine = [r for r in results if r.metric == metric]
        for ds in sorted({r.dataset for r in mine}):
            for gate in sorted({r.gate for r in mine if r.dataset == ds}):
                rows = [r for r in mine if r.dataset == ds and r.gate == gate]
                lines += [f"### {GATE_LABELS.get(gate, gate)} — {ds}", "",
                          "| curve | estimator | trials (failed) | best | " +
                          " | ".join(f"n = {n}" for n in REPORT_BUDGETS) + " |",
                          "|---|---|---|---|" + "---|" * len(REPORT_BUDGETS)]
                for r in sorted(rows, key=lambda r: (r.sampler, r.local_search != "on")):
                    c = r.curve
                    cells = [_fmt(c.at(n)) if n <= c.budgets.max() else "—" for n in REPORT_BUDGETS]
                    lines.append(f"| {_label(r.gate, r.local_search, r.sampler)} | {c.estimator} | "
                                 f"{c.n_trials} ({c.n_failed}) | {_fmt(r.best)} | " + " | ".join(cells) + " |")
                lines.append("")
                for sampler in sorted({r.sampler for r in rows}):
                    reds = reductions.get((metric, ds, gate, sampler))
                    if reds:
                        lines += _reduction_table(reds, sampler, level)
    path.write_text("\n".join(lines), encoding="utf-8")


def _log_run(client, exp, files: dict, params: dict) -> str:
    run = client.create_run(exp.experiment_id, run_name="export",
                            tags={schema.ROLE: EXPORT, schema.SWEEP: exp.name})
    try:
        for k, v in params.items():
            client.log_param(run.info.run_id, k, v)
        for path in files.values():
            client.log_artifact(run.info.run_id, str(path))
    except Exception:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    client.set_terminated(run.info.run_id, "FINISHED")
    return run.info.run_id


# ---------------------------------------------------------------- entry points

def export_sweep(tracking_uri: str, experiment_name: str, out_dir=None, *, metric: str | None = None,
                 filters=None, selection: str = DEFAULT_SELECTION, resamples: int = 1000, seed: int = 0,
                 level: float = 0.9, log_to_mlflow: bool = True) -> dict[str, Path]:
    """Export one sweep; returns {file name: path} of the files written.

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

    out_dir = Path(out_dir) if out_dir is not None else Path("sweeps") / experiment_name / "export"
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    try:
        names = ["curves.csv", "reductions.csv", "summary.md"]
        _write_csv(tmp / "curves.csv", results)
        _write_reductions_csv(tmp / "reductions.csv", reductions)
        _write_summary(tmp / "summary.md", experiment_name, results, reductions, selection, level)
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
    return files


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
    folder = next(iter(files.values())).parent
    print(f"wrote {len(files)} files to {folder}:")
    for path in files.values():
        print(f"  {path}")
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
