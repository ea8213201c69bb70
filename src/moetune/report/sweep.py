"""Reading a sweep for the report: its studies, kept by tag filters, as the trial records the curves need.

Only the ``Tracking`` interface is used, so any backend that reads a sweep back can be reported; every
check on what was asked for (selection metric, filters, test metric) runs here, before anything is computed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import NamedTuple

from moetune.contract import best_metric, higher_is_better
from moetune.errors import ConfigError
from moetune.tracking import tags
from moetune.tracking.base import RecordedStudy, Tracking


class Group(NamedTuple):
    """One curve: the studies of one gate, arm, dataset, task weighting and sampler (pooled over seeds)."""

    gate: str
    local_search: str
    dataset: str
    task_weights: str
    sampler: str


class ReductionKey(NamedTuple):
    """Whose reductions over "off" a list holds: one arm of one gate, in one setting, for one metric."""

    metric: str
    dataset: str
    task_weights: str
    gate: str
    sampler: str
    arm: str


DEFAULT_SELECTION = best_metric("val_loss")  # a sweep recorded before studies were tagged with theirs


def group_of(study: RecordedStudy) -> Group:
    """The curve a study belongs to: its gate, arm, dataset, task weighting and sampler. A scheduled study's
    sampler reads "random+asha" (tag moetune.scheduler): its trials are not independent full-length draws, so
    it is never pooled with full-length studies and gets the running best in trial order, like TPE."""
    t = study.tags
    sampler = t.get(tags.SAMPLER, "random")
    scheduler = t.get(tags.SCHEDULER, "none")
    return Group(
        t.get(tags.GATE, "?"),
        t.get(tags.LOCAL_SEARCH, "?"),
        t.get(tags.DATASET, "?"),
        t.get(tags.TASK_WEIGHTS, "equal"),
        sampler if scheduler == "none" else f"{sampler}+{scheduler}",
    )


@dataclass
class Sweep:
    name: str
    experiment_id: str
    filters: dict[str, str]
    studies: list[RecordedStudy]
    selection: str  # the final metric that ranks trials (best_<tuner.metric>), from the studies' tags


def direction(metric: str) -> bool:
    """Whether higher is better for a metric, or a ConfigError naming the known metric kinds."""
    try:
        return higher_is_better(metric)
    except KeyError as e:
        raise ConfigError(str(e.args[0])) from None


def parse_filters(filters: Mapping[str, object] | Iterable[str] | None) -> dict[str, str]:
    """A mapping, or "KEY=VALUE" strings (the command line's --filter), as {tag: value}."""
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


def read_sweep(
    tracking: Tracking,
    *,
    filters: Mapping[str, object] | Iterable[str] | None = None,
    selection: str | None = None,
) -> Sweep:
    """The sweep's studies whose tags match ``filters``, each with its FINISHED and FAILED trials in trial order.

    ``selection`` defaults to the metric the studies were ranked by when they ran (tag moetune.selection_metric).
    Raises ConfigError for a selection metric of unknown direction, studies ranked by different metrics, a
    malformed or unmatched filter, a sweep without studies, and a study with fewer than 2 finished trials.
    """
    wanted = parse_filters(filters)
    recorded = tracking.read_sweep()
    studies = list(recorded.studies)
    if not studies:
        raise ConfigError(f"experiment {recorded.name!r} has no study runs (tag {tags.ROLE}={tags.STUDY})")
    for key, value in wanted.items():
        kept = [s for s in studies if s.tags.get(key) == value]
        if not kept:
            seen = sorted({s.tags.get(key, "(unset)") for s in studies})
            raise ConfigError(f"no study matches {key}={value}; values of {key}: {', '.join(seen)}")
        studies = kept
    if selection is None:
        ranked_by = sorted({s.tags.get(tags.SELECTION_METRIC, DEFAULT_SELECTION) for s in studies})
        if len(ranked_by) > 1:
            raise ConfigError(
                f"the studies were ranked by different metrics ({', '.join(ranked_by)}); "
                "pass --selection, or --filter to export them apart"
            )
        selection = ranked_by[0]
    direction(selection)
    for s in studies:
        for t in s.trials:
            t.finished = _finished(t.status, t.metrics, selection)
        n_ok = sum(t.finished for t in s.trials)
        if n_ok < 2:
            raise ConfigError(
                f"study {s.key!r} has {n_ok} finished trial(s) with {selection} "
                f"out of {len(s.trials)}; a curve needs at least 2"
            )
    return Sweep(recorded.name, recorded.experiment_id, wanted, studies, selection)


def _finished(status: str, metrics: Mapping[str, float], selection: str) -> bool:
    return status == "FINISHED" and math.isfinite(metrics.get(selection, math.nan))


def report_metrics(studies: list[RecordedStudy], metric: str | None) -> list[str]:
    """The test metrics to report: ``metric`` if given (it must be recorded, with a known direction), else
    every recorded test_* metric with a known direction (a timing metric has none, so no curve)."""
    recorded = sorted({m for s in studies for t in s.trials if t.finished for m in t.metrics})
    tests = [m for m in recorded if m.startswith("test_")]
    if metric is not None:
        if metric not in recorded:
            raise ConfigError(
                f"no finished trial recorded metric {metric!r}; recorded test metrics: {', '.join(tests) or '(none)'}"
            )
        direction(metric)
        return [metric]
    known = []
    for m in tests:
        try:
            higher_is_better(m)
            known.append(m)
        except KeyError:
            pass
    if not known:
        raise ConfigError(f"no test_* metric with a known direction recorded; recorded: {', '.join(recorded)}")
    return known
