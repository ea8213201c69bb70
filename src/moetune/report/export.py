"""``moetune export``: a sweep's trials -> budget-vs-quality tables, figures and the answer, kept with the sweep.

Orchestration only: read (moetune.report.sweep), compute (analysis), write (tables, figures), then log the
files on the sweep's one export run (a new export replaces the previous one). Every check runs before
anything is written, and the files appear in the output folder only once all of them are rendered.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from moetune.contract import higher_is_better
from moetune.errors import ConfigError
from moetune.report import anytime, anytime_figure, figures, importance, paired, paired_figure, tables, trials_table
from moetune.report.analysis import Analysis, analyse
from moetune.report.render_pool import RenderPool
from moetune.report.sweep import Sweep, read_sweep, report_metrics
from moetune.tracking import Tracking


@dataclass
class Export:
    """What an export wrote and what it found: the files, and the answer (one line per gate)."""

    files: dict[str, Path]
    answer: str
    lines: list[str]
    metric: str
    experiment_id: str
    browse_hint: str  # where to browse the sweep (the tracking backend says)
    note: str | None = None  # why the files were not kept with the sweep, when they were not

    @property
    def folder(self) -> Path:
        return next(iter(self.files.values())).parent


def _remove_abandoned(out: Path) -> None:
    """Temp folders of exports whose process died (killed mid-export): named .export-<pid>-*."""
    for folder in out.glob(".export-*"):
        pid = folder.name.split("-")[1]
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            shutil.rmtree(folder, ignore_errors=True)
        except (ValueError, PermissionError):
            continue


def export_sweep(
    tracking: Tracking,
    out_dir: str | os.PathLike[str] | None = None,
    *,
    metric: str | None = None,
    filters: Mapping[str, object] | Iterable[str] | None = None,
    selection: str | None = None,
    resamples: int = 1000,
    seed: int = 0,
    level: float = 0.9,
    log_export: bool = True,
) -> Export:
    """Export the sweep ``tracking`` holds (its backend is fixed to the sweep); returns the files and the answer.

    ``filters`` (mapping or "KEY=VALUE" strings) keep studies whose tags match; ``selection`` defaults to
    the metric the studies were ranked by. Every check runs before anything is written; files are
    rendered in a temp folder and moved into ``out_dir`` (default sweeps/<experiment>/export) only when
    all are done, then kept with the sweep in the store (``log_export``).
    """
    with RenderPool() as pool:  # the figures' helper process starts now: its imports overlap the reading
        experiment_name = tracking.experiment
        sweep = read_sweep(tracking, filters=filters, selection=selection)
        selection = sweep.selection
        metrics = report_metrics(sweep.studies, metric)
        analysis = analyse(sweep.studies, metrics, selection=selection, resamples=resamples, seed=seed, level=level)

        out = Path(out_dir) if out_dir is not None else Path("sweeps") / experiment_name / "export"
        try:
            out.mkdir(parents=True, exist_ok=True)
            _remove_abandoned(out)
            tmp = Path(tempfile.mkdtemp(prefix=f".export-{os.getpid()}-", dir=out))
        except OSError as exc:
            raise ConfigError(
                f"cannot write the export to {out} ({exc.strerror}); pass --out <writable folder>"
            ) from None
        try:
            names = _write_files(tmp, pool, experiment_name, sweep, analysis, resamples, seed, level)
            for name in names:
                os.replace(tmp / name, out / name)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    files = {name: out / name for name in names}
    note = None
    if log_export:
        params = {
            "metrics": ",".join(metrics),
            "selection": selection,
            "resamples": str(resamples),
            "seed": str(seed),
            "level": str(level),
            "filters": ",".join(f"{k}={v}" for k, v in sweep.filters.items()) or "-",
        }
        note = tracking.log_export(list(files.values()), params)
    hint = tracking.browse_hint(sweep.experiment_id)
    return Export(files, analysis.answer, analysis.lines, analysis.headline, sweep.experiment_id, hint, note)


def _write_files(
    tmp: Path,
    pool: RenderPool,
    experiment_name: str,
    sweep: Sweep,
    analysis: Analysis,
    resamples: int,
    seed: int,
    level: float,
) -> list[str]:
    """Every file of the export, written into ``tmp`` (figures drawn by ``pool``); returns their names."""
    selection = sweep.selection
    imps = importance.importances(sweep.studies, selection)
    curves = anytime.sweep_anytime(
        sweep.studies, selection, analysis.headline, resamples=resamples, seed=seed, level=level
    )
    axes = [c for c in anytime.COSTS if any(r.cost == c for r in curves)]
    exact = [  # full-length random search's exact curve, on the same axes
        anytime.exact_curve(r.studies, selection, r.metric, cost)
        for r in analysis.curves
        if r.metric == analysis.headline and r.sampler == "random" and r.curve.estimator != "running_best"
        for cost in axes
    ]
    up = higher_is_better(analysis.headline)
    compute = anytime.sweep_reductions(curves, up=up, resamples=resamples, seed=seed, level=level)
    mismatches = anytime.length_mismatches(sweep.studies)
    # the figures add to the budget figures only with a scheduled study or repeats (seeds) to average
    drawn = any(r.group.scheduler != "none" or r.band.repeats > 1 for r in curves)
    appendix = anytime_figure.summary_lines(curves, exact, compute, mismatches, level, drawn)
    appendix += trials_table.diagnostics_lines(sweep.studies) + importance.summary_lines(imps)
    names = tables.write_tables(tmp, experiment_name, analysis, appendix)
    names += figures.write_figures(tmp, analysis, pool.draw)
    trials_table.write_csv(tmp / "trials.csv", sweep.studies)
    paired.write_csv(tmp / "paired.csv", analysis.paired)
    importance.write_csv(tmp / "importance.csv", imps)
    names += ["trials.csv", "paired.csv", "importance.csv"] + paired_figure.write_figures(
        tmp, analysis.paired, pool.draw
    )
    anytime_figure.write_csv(tmp / "anytime.csv", curves, exact)
    names += ["anytime.csv"] + (anytime_figure.write_figures(tmp, curves, exact, level, pool.draw) if drawn else [])
    pool.finish(tmp)
    return names


def print_answer(export: Export) -> None:
    """What a user reads at the end of a sweep or an export: where the files are and the answer per gate."""
    print(f"export: {export.folder.resolve()} (summary.md, curves, figures, budget_curves.html)")
    if export.note:
        print(f"  the files are {export.note}")
    if not export.lines:
        print(f"  {export.answer}")
    for line in export.lines:
        print(f"  {line}")
    print(export.browse_hint)
