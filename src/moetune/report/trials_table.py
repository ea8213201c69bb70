"""Every trial as one row (``trials.csv``), and what local search did inside the trials (summary.md).

The curves and the paired view are computed from these rows; writing them out lets a reviewer recompute
either, check that paired trials really share their seed, and see each trial's own diagnostics.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from moetune.contract import (
    ACTIVE_EXPERTS,
    BEST_EPOCH,
    BEST_EPOCH_AFTER_PERM,
    CPU_SECONDS,
    E_PERM,
    EPOCHS_RUN,
    PERM_EFFECTIVE_END,
    PERM_EFFECTIVE_START,
    PERM_REASSIGNED,
    PERM_SHIFT,
    PERM_STEPS,
    ROUTING_NMI,
    WALL_SECONDS,
)
from moetune.report.labels import ARM_ORDER
from moetune.report.sweep import group_of
from moetune.tracking.base import RecordedStudy, RecordedTrial

HEAD = ["study", "gate", "local_search", "dataset", "task_weights", "sampler", "trial", "seed", "init_digest"]
RUN = [E_PERM, PERM_STEPS, BEST_EPOCH, EPOCHS_RUN, "status"]
COST = [WALL_SECONDS, CPU_SECONDS]
DIAGNOSTICS = [
    PERM_SHIFT,
    PERM_REASSIGNED,
    PERM_EFFECTIVE_START,
    PERM_EFFECTIVE_END,
    BEST_EPOCH_AFTER_PERM,
    ACTIVE_EXPERTS,
    ROUTING_NMI,
]
INTEGERS = {E_PERM, PERM_STEPS, BEST_EPOCH, EPOCHS_RUN, PERM_REASSIGNED, BEST_EPOCH_AFTER_PERM}
# the summary's per-study table of the permutation phase
PHASE = [PERM_STEPS, PERM_SHIFT, PERM_REASSIGNED, PERM_EFFECTIVE_START, PERM_EFFECTIVE_END, BEST_EPOCH_AFTER_PERM]


def _ordered(studies: list[RecordedStudy]) -> list[RecordedStudy]:
    return sorted(
        studies, key=lambda s: (group_of(s).gate, group_of(s)[2:], ARM_ORDER.get(group_of(s).local_search, 9), s.key)
    )


def columns(studies: list[RecordedStudy]) -> list[str]:
    """HEAD, the sampled parameters (one column per name, sorted), RUN, best_val_* and test_* metrics, COST,
    DIAGNOSTICS, error."""
    params = sorted({k for s in studies for t in s.trials for k in t.sampled})
    metrics = {m for s in studies for t in s.trials for m in t.metrics}
    val = sorted(m for m in metrics if m.startswith("best_val_"))
    test = sorted(m for m in metrics if m.startswith("test_"))
    return HEAD + params + RUN + val + test + COST + DIAGNOSTICS + ["error"]


def _cell(trial: RecordedTrial, column: str) -> str:
    if column == "status":
        return trial.status
    if column == "error":
        return trial.error or ""
    if column in trial.params:
        return trial.params[column]
    value = trial.metrics.get(column, math.nan)
    if not math.isfinite(value):
        return ""
    return str(int(value)) if column in INTEGERS and value == int(value) else repr(float(value))


def write_csv(path: Path, studies: list[RecordedStudy]) -> None:
    """One row per FINISHED or FAILED trial, studies grouped by gate and setting, trials in number order;
    a cell is empty where the trial has no such value (e.g. perm_* for the off arm, metrics of a failure)."""
    cols = columns(studies)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for s in _ordered(studies):
            gate, arm, dataset, weights, sampler = group_of(s)
            for t in s.trials:
                head = [s.key, gate, arm, dataset, weights, sampler, t.index, t.seed or "", t.init_digest or ""]
                w.writerow(head + [_cell(t, c) for c in cols[len(HEAD) :]])


def _spread(values: list[float]) -> str:
    """ "median (min–max)" of the finite values, "—" without any."""
    v = np.array([x for x in values if math.isfinite(x)], dtype=float)
    if not v.size:
        return "—"
    med, lo, hi = np.median(v), v.min(), v.max()
    return f"{med:.3g} ({lo:.3g}–{hi:.3g})"


def diagnostics_lines(studies: list[RecordedStudy]) -> list[str]:
    """Per study with a permutation phase (a finished trial reported perm_steps): median and range over its
    finished trials of what the phase did. The number of steps bounds how far the permutation can travel."""
    phased = [s for s in _ordered(studies) if any(t.finished and PERM_STEPS in t.metrics for t in s.trials)]
    lines = ["## Local search inside the trials", ""]
    if not phased:
        return lines + ["No study reported a permutation phase (perm_steps): nothing to summarize.", ""]
    lines += [
        "Per study with a permutation phase, over its finished trials: median (min–max). perm_shift = the "
        "largest move of the permutation's log-weights L over the phase, relative to the spread of their "
        "initial draw; perm_reassigned = experts whose hard assignment changed over the phase; effective "
        "experts = exp(mean row entropy) of the soft permutation at the phase's first and last step; "
        "best_epoch_after_perm = best epoch − E_perm.",
        "",
        "| study | arm | trials | " + " | ".join(PHASE) + " |",
        "|---|---|---|" + "---|" * len(PHASE),
    ]
    for s in phased:
        done = [t for t in s.trials if t.finished]
        cells = [_spread([t.metrics.get(m, math.nan) for t in done]) for m in PHASE]
        lines.append(f"| {s.key} | {group_of(s).local_search} | {len(done)} | " + " | ".join(cells) + " |")
    return lines + [""]
