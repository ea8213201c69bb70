"""Hyperparameter importance per study: which sampled values move the selection metric, arm by arm.

If local search makes a gate less sensitive to its hyperparameters (the paper's claim), the importances of
the "on" study should spread differently from the "off" study's. Computed with Optuna's own fANOVA
evaluator (a random forest over the trials, then the share of the objective's variance each parameter
explains), on an in-memory Optuna study rebuilt from the recorded trials: the objective is the selection
metric the tuner saw. The distributions come from the study's recorded search space, or, where it was not
recorded, from the values themselves. Optuna is imported only here, when an export runs.
"""

from __future__ import annotations

import ast
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from moetune.contract import higher_is_better
from moetune.report.labels import ARM_LABELS, ARM_ORDER, GATE_LABELS, setting_text
from moetune.report.sweep import group_of
from moetune.tracking import tags
from moetune.tracking.base import RecordedStudy

MIN_TRIALS = 4  # below this a forest over the trials says nothing
N_TREES = 64
EVALUATOR = f"fANOVA (optuna.importance.FanovaImportanceEvaluator, {N_TREES} trees, seed 0)"
COLUMNS = [
    "study",
    "gate",
    "local_search",
    "dataset",
    "task_weights",
    "sampler",
    "seed",
    "param",
    "importance",
    "n_trials",
    "objective",
]
DISTRIBUTIONS = ("FloatDistribution", "IntDistribution", "CategoricalDistribution")


@dataclass
class Importance:
    """One study's importances (normalized to sum 1), or why there are none."""

    study: RecordedStudy
    objective: str
    n_trials: int
    values: dict[str, float] = field(default_factory=dict)  # param -> importance, largest first
    skipped: str | None = None


def parse_distribution(text: str) -> Any:
    """An Optuna distribution from its repr as the search space was logged, e.g.
    "FloatDistribution(high=0.03, log=True, low=0.0003, step=None)"; None for anything else.
    Parsed as literals, never evaluated."""
    import optuna

    try:
        node = ast.parse(text.strip(), mode="eval").body
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in DISTRIBUTIONS):
            return None
        kwargs = {kw.arg: ast.literal_eval(kw.value) for kw in node.keywords if kw.arg}
        return getattr(optuna.distributions, node.func.id)(**kwargs)
    except (SyntaxError, ValueError, TypeError):
        return None


def _value(text: str, dist: Any) -> Any:
    """A logged value (a string) as the distribution's own value; None when it does not fit."""
    import optuna.distributions as d

    try:
        if isinstance(dist, d.CategoricalDistribution):
            return next(c for c in dist.choices if text in (str(c), str(list(c)) if isinstance(c, tuple) else ""))
        value = int(float(text)) if isinstance(dist, d.IntDistribution) else float(text)
        return value if dist.low <= value <= dist.high else None
    except (ValueError, StopIteration):
        return None


def infer_distribution(texts: list[str]) -> Any:
    """From the values alone: integers -> an int range, numbers -> a float range (log when positive and
    spanning more than a factor 10, as learning rates are searched), anything else -> categorical."""
    import optuna.distributions as d

    try:
        numbers = [float(t) for t in texts]
    except ValueError:
        return d.CategoricalDistribution(sorted(set(texts)))
    low, high = min(numbers), max(numbers)
    if all(x == int(x) and "." not in t and "e" not in t.lower() for x, t in zip(numbers, texts, strict=True)):
        return d.IntDistribution(int(low), int(high))
    return d.FloatDistribution(low, high, log=low > 0 and high / low > 10)


def study_importance(study: RecordedStudy, selection: str) -> Importance:
    """fANOVA importances of the sampled parameters that vary across the study's finished trials."""
    import optuna

    done = [t for t in study.trials if t.finished and math.isfinite(t.metrics.get(selection, math.nan))]
    result = Importance(study, selection, len(done))
    if len(done) < MIN_TRIALS:
        result.skipped = f"{len(done)} finished trial(s), fewer than {MIN_TRIALS}"
        return result
    names = sorted(set.intersection(*(set(t.sampled) for t in done)))
    dists = {}
    for name in names:
        texts = [t.sampled[name] for t in done]
        if len(set(texts)) < 2:
            continue  # one value: nothing to attribute
        dist = parse_distribution(study.space.get(name, ""))
        if dist is None or any(_value(x, dist) is None for x in texts):
            dist = infer_distribution(texts)
        dists[name] = dist
    if len(dists) < 2:
        result.skipped = f"{len(dists)} sampled parameter(s) that vary; importance needs at least 2"
        return result
    frozen = [
        optuna.trial.create_trial(
            params={k: _value(t.sampled[k], dist) for k, dist in dists.items()},
            distributions=dists,
            value=t.metrics[selection],
        )
        for t in done
    ]
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        opt = optuna.create_study(direction="maximize" if higher_is_better(selection) else "minimize")
        opt.add_trials(frozen)
        evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=N_TREES, seed=0)
        got = optuna.importance.get_param_importances(opt, evaluator=evaluator)
        result.values = {k: float(v) for k, v in got.items()}
    finally:
        optuna.logging.set_verbosity(verbosity)
    return result


def importances(studies: list[RecordedStudy], selection: str) -> list[Importance]:
    return [study_importance(s, selection) for s in studies]


# ---------------------------------------------------------------- importance.csv and summary.md


def write_csv(path: Path, results: list[Importance]) -> None:
    """One row per study and parameter; a skipped study has no rows (summary.md says why)."""
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(COLUMNS)
        for r in results:
            gate, arm, dataset, weights, sampler = group_of(r.study)
            seed = r.study.tags.get(tags.SEED, "")
            for param, value in r.values.items():
                w.writerow(
                    [r.study.key, gate, arm, dataset, weights, sampler, seed, param, repr(float(value))]
                    + [r.n_trials, r.objective]
                )


def summary_lines(results: list[Importance]) -> list[str]:
    """One table per (gate, setting, sampler, seed): a row per parameter, a column per arm."""
    lines = [
        "## Hyperparameter importance",
        "",
        f"Per study, {EVALUATOR} of the selection metric over the study's finished trials: the share of its "
        "variance each sampled parameter explains (sums to 1 per study; rough with few trials). Side by side "
        "per arm: a parameter that matters less with local search is one the tuning budget need not cover.",
        "",
    ]
    tables: dict[tuple[str, ...], list[Importance]] = {}
    for r in results:
        gate, _, dataset, weights, sampler = group_of(r.study)
        tables.setdefault((gate, dataset, weights, sampler, r.study.tags.get(tags.SEED, "0")), []).append(r)
    for (gate, dataset, weights, sampler, seed), rows in sorted(tables.items()):
        rows.sort(key=lambda r: ARM_ORDER.get(group_of(r.study).local_search, 9))
        where = setting_text(dataset, weights) + ("" if sampler == "random" else f", {sampler}") + f", seed {seed}"
        lines += [f"### {GATE_LABELS.get(gate, gate)} — {where}", ""]
        shown = [r for r in rows if r.skipped is None]
        if shown:
            params = sorted({p for r in shown for p in r.values})
            arms = [f"{_arm_label(r.study)} ({r.n_trials} trials)" for r in shown]
            lines += ["| parameter | " + " | ".join(arms) + " |", "|---|" + "---|" * len(shown)]
            for p in params:
                cells = [f"{r.values[p]:.2f}" if p in r.values else "—" for r in shown]
                lines.append(f"| {p} | " + " | ".join(cells) + " |")
            lines.append("")
        for r in rows:
            if r.skipped is not None:
                lines.append(f"- {r.study.key} ({group_of(r.study).local_search}): skipped, {r.skipped}.")
        lines.append("")
    return lines


def _arm_label(study: RecordedStudy) -> str:
    arm = group_of(study).local_search
    return ARM_LABELS.get(arm, arm)
