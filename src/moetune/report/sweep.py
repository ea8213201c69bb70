"""Reading a sweep for the report: its studies, kept by tag filters, as the trial records the curves need.

Only the ``Tracking`` interface is used, so any backend that reads a sweep back can be reported; every
check on what was asked for (selection metric, filters, test metric) runs here, before anything is computed.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from moetune.contract import higher_is_better
from moetune.errors import ConfigError
from moetune.tracking import tags
from moetune.tracking.base import Tracking

Group = tuple[str, str, str, str, str]  # (gate, local_search, dataset, task_weights, sampler): one curve


SEED_PARAM = "train.seed"  # a trial's seed, logged beside its sampled values


@dataclass
class Trial:
    index: int  # its number in the study: the same number in another arm of the sweep is its pair
    finished: bool  # FINISHED with a finite selection metric; otherwise it counts in the budget as failed
    metrics: dict[str, float]
    status: str = "FINISHED"  # FINISHED | FAILED, as recorded
    params: dict[str, str] = field(default_factory=dict)  # as logged: sampled values and train.seed
    init_digest: str | None = None
    error: str | None = None

    @property
    def sampled(self) -> dict[str, str]:
        """The sampled hyperparameters (the params without the seed)."""
        return {k: v for k, v in self.params.items() if k != SEED_PARAM}

    @property
    def seed(self) -> str | None:
        return self.params.get(SEED_PARAM)


@dataclass
class Study:
    key: str
    tags: dict[str, str]
    trials: list[Trial] = field(default_factory=list)
    space: dict[str, str] = field(default_factory=dict)  # the search space: name -> distribution as logged

    @property
    def group(self) -> Group:
        t = self.tags
        return (
            t.get(tags.GATE, "?"),
            t.get(tags.LOCAL_SEARCH, "?"),
            t.get(tags.DATASET, "?"),
            t.get(tags.TASK_WEIGHTS, "equal"),
            t.get(tags.SAMPLER, "random"),
        )


@dataclass
class Sweep:
    name: str
    experiment_id: str
    filters: dict[str, str]
    studies: list[Study]


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
    experiment: str,
    *,
    filters: Mapping[str, object] | Iterable[str] | None = None,
    selection: str = "best_val_loss",
) -> Sweep:
    """The sweep's studies whose tags match ``filters``, each with its FINISHED and FAILED trials in trial order.

    Raises ConfigError for a selection metric of unknown direction, a malformed or unmatched filter, a
    sweep without studies, and a study with fewer than 2 finished trials (no curve can be drawn).
    """
    direction(selection)
    wanted = parse_filters(filters)
    recorded = tracking.read_sweep(experiment)
    studies = [
        Study(
            s.key,
            dict(s.tags),
            [
                Trial(
                    t.index,
                    _finished(t.status, t.metrics, selection),
                    dict(t.metrics),
                    t.status,
                    dict(t.params),
                    t.init_digest,
                    t.error,
                )
                for t in s.trials
            ],
            dict(s.space),
        )
        for s in recorded.studies
    ]
    if not studies:
        raise ConfigError(f"experiment {recorded.name!r} has no study runs (tag {tags.ROLE}={tags.STUDY})")
    for key, value in wanted.items():
        kept = [s for s in studies if s.tags.get(key) == value]
        if not kept:
            seen = sorted({s.tags.get(key, "(unset)") for s in studies})
            raise ConfigError(f"no study matches {key}={value}; values of {key}: {', '.join(seen)}")
        studies = kept
    for s in studies:
        n_ok = sum(t.finished for t in s.trials)
        if n_ok < 2:
            raise ConfigError(
                f"study {s.key!r} has {n_ok} finished trial(s) with {selection} "
                f"out of {len(s.trials)}; a curve needs at least 2"
            )
    return Sweep(recorded.name, recorded.experiment_id, wanted, studies)


def _finished(status: str, metrics: Mapping[str, float], selection: str) -> bool:
    return status == "FINISHED" and math.isfinite(metrics.get(selection, math.nan))


def report_metrics(studies: list[Study], metric: str | None) -> list[str]:
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
