"""The trial-report contract: what a trial tells the tuner, and what the tracker and the report read back.

A trial reports to Ray Tune, in this order:

- an ``EpochReport`` for every epoch: ``train_loss``, ``val_loss`` and ``val_<task>_<metric>`` (step =
  epoch), sent in batches at most every few seconds (moetune.tuning.trial.EpochSender): Tune holds a
  trial at each report until the driver's loop has taken it, tens of milliseconds, so one report per epoch
  of a short trial costs more than its training;
- one ``FinalReport`` when it ends normally: ``best_val_*`` and ``test_*`` metrics at the best epoch,
  ``best_epoch``, wall and CPU seconds, ``active_experts_mean`` (and ``routing_nmi`` where the data
  knows its true routing), plus diagnostics as plain data (the permutation, per-expert loads, ...). It
  carries the epochs not sent yet.

Each report is one Tune result: ``{"report": "epochs" | "final", "epochs": [[epoch, {...}], ...], ...}``,
with the tuner's selection metric also at the top level, where Tune's own result handling finds a metric;
the driver reads the epochs back with ``reported_epochs`` and the final report with ``parse_report``.

From what Tune saw, the driver decides one ``Outcome`` per trial: FINISHED (its final report came),
PRUNED (its final report came, and says the study's scheduler stopped it: diagnostics ``STOPPED_AT``),
FAILED (it raised; the error's message is kept) or STOPPED (it ended without a final report: an
interrupt, Ctrl-C or a signal; re-run on resume). One callback records each outcome once.

Also here, because the trainer and the report must agree on them: the table of task kinds (the
loss, the metric and the metric's direction of each) and the names of the metrics.
This module imports nothing heavy: trial workers, the tracker and the estimator all load it.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# ---------------------------------------------------------------- task kinds


@dataclass(frozen=True)
class TaskKind:
    """What a task's targets are: how it is trained (loss), scored (metric) and which way is better."""

    loss: str  # binary_cross_entropy | squared_error | cross_entropy (moetune.training.trainer.LOSSES)
    metric: str  # auc | mse | accuracy (moetune.training.trainer.METRICS)
    higher_is_better: bool


TASK_KINDS: dict[str, TaskKind] = {
    "binary": TaskKind(loss="binary_cross_entropy", metric="auc", higher_is_better=True),
    "regression": TaskKind(loss="squared_error", metric="mse", higher_is_better=False),
    "multiclass": TaskKind(loss="cross_entropy", metric="accuracy", higher_is_better=True),
}

# the direction of every metric kind a trial reports; "loss" is the task-weighted loss
HIGHER_IS_BETTER: dict[str, bool] = {kind.metric: kind.higher_is_better for kind in TASK_KINDS.values()}
HIGHER_IS_BETTER["loss"] = False

# ---------------------------------------------------------------- metric names

TRAIN_LOSS = "train_loss"  # per epoch: task-weighted training loss
VAL_LOSS = "val_loss"  # per epoch: task-weighted validation loss, what selects a trial
BEST_EPOCH = "best_epoch"
WALL_SECONDS = "wall_seconds"
CPU_SECONDS = "cpu_seconds"
ACTIVE_EXPERTS = "active_experts_mean"
TRAIN_SAMPLES_PER_SECOND = "train_samples_per_second"  # training steps only (forward, backward, update)
ROUTING_NMI = "routing_nmi"
EPOCHS_RUN = "epochs_run"
# what local search did inside a trial (final metrics of the arms with a permutation phase: on, frozen, warmup)
E_PERM = "e_perm"  # epochs of the permutation phase
PERM_STEPS = "perm_steps"  # optimizer steps in the phase
PERM_SHIFT = "perm_shift"  # max |L - L0| at the end of the phase, over the initial draw's spread (max L0 - min L0)
PERM_REASSIGNED = "perm_reassigned"  # experts whose hard assignment at the phase's end differs from its start
PERM_EFFECTIVE_START = "perm_effective_experts_start"  # exp(mean row entropy of P) at the phase's first step
PERM_EFFECTIVE_END = "perm_effective_experts_end"  # the same at its last step
BEST_EPOCH_AFTER_PERM = "best_epoch_after_perm"  # best_epoch - e_perm
PERM_METRICS = (
    E_PERM,
    PERM_STEPS,
    PERM_SHIFT,
    PERM_REASSIGNED,
    PERM_EFFECTIVE_START,
    PERM_EFFECTIVE_END,
    BEST_EPOCH_AFTER_PERM,
)

# ---------------------------------------------------------------- diagnostics

# The final report's diagnostics: plain data the tracker keeps beside the metrics (MLflow: diagnostics.json,
# and the tags moetune.tracking.tags names for the first four).
INIT_DIGEST = "init_digest"  # fingerprint of the trial's initial weights: paired arms start from the same
PERMUTATION = "permutation"  # the learned permutation of an arm with a permutation phase
NODE = "node"  # the Ray node a trial ran on
WEIGHTS_ERROR = "weights_error"  # why a finished trial's weights were not saved (train.save_weights)
STOPPED_AT = "stopped_at_epoch"  # the epoch after which the study's scheduler (ASHA, Hyperband) stopped the trial
ACTIVE_EXPERTS_PER_TASK = "active_experts_per_task"
EXPERT_LOAD_PER_TASK = "expert_load_per_task"
PHASE = "phase"  # the permutation phase's metrics (PERM_METRICS), copied into the final metrics
DIAGNOSTICS = (
    INIT_DIGEST,
    PERMUTATION,
    NODE,
    WEIGHTS_ERROR,
    STOPPED_AT,
    ACTIVE_EXPERTS,
    ACTIVE_EXPERTS_PER_TASK,
    EXPERT_LOAD_PER_TASK,
    PHASE,
    ROUTING_NMI,
)


def task_metric_name(split: str, task: str, metric: str) -> str:
    """e.g. ("test", "watch", "auc") -> "test_watch_auc"; split in val|test|best_val."""
    return f"{split}_{task}_{metric}"


def best_metric(metric: str) -> str:
    """The final report's name for a per-epoch metric at the best epoch: val_loss -> best_val_loss."""
    return "best_" + metric


def higher_is_better(metric_name: str) -> bool:
    """Direction from a metric name's last part: ..._auc, ..._accuracy up; ..._mse, ..._loss down."""
    last = metric_name.rsplit("_", 1)[-1]
    if last not in HIGHER_IS_BETTER:
        raise KeyError(f"metric {metric_name!r}: unknown kind {last!r}; expected one of {sorted(HIGHER_IS_BETTER)}")
    return HIGHER_IS_BETTER[last]


# ---------------------------------------------------------------- reports and outcomes

REPORT = "report"
EPOCHS = "epochs"  # a report's kind (a batch of epochs) and the key of the epochs any report carries
FINAL = "final"


@dataclass(frozen=True)
class EpochReport:
    epoch: int  # 1-based
    metrics: dict[str, float]


def _epochs_to_tune(epochs: Sequence[EpochReport]) -> list[list[Any]]:
    return [[e.epoch, dict(e.metrics)] for e in epochs]


def epochs_to_tune(epochs: Sequence[EpochReport], selection: str) -> dict[str, Any]:
    """A batch of epochs as one Tune result (the last epoch's selection metric at the top level)."""
    return {REPORT: EPOCHS, EPOCHS: _epochs_to_tune(epochs), selection: epochs[-1].metrics[selection]}


@dataclass(frozen=True)
class FinalReport:
    metrics: dict[str, float]
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def to_tune(self, selection: str, epochs: Sequence[EpochReport] = ()) -> dict[str, Any]:
        """One Tune result: the final metrics and diagnostics, and ``epochs`` (those not sent yet)."""
        return {
            REPORT: FINAL,
            "metrics": dict(self.metrics),
            "diagnostics": self.diagnostics,
            EPOCHS: _epochs_to_tune(epochs),
            selection: self.metrics[best_metric(selection)],
        }


def reported_epochs(result: dict[str, Any] | None) -> list[EpochReport]:
    """The epochs a Tune result carries (a batch's, or the final report's last ones); none for Tune's own."""
    if not result or result.get(REPORT) not in (EPOCHS, FINAL):
        return []
    return [EpochReport(int(epoch), dict(metrics)) for epoch, metrics in result.get(EPOCHS) or []]


def parse_report(result: dict[str, Any] | None) -> FinalReport | None:
    """The final report a Tune result holds; None for any other result (a batch of epochs, Tune's own)."""
    if not result or result.get(REPORT) != FINAL:
        return None
    return FinalReport(dict(result["metrics"]), dict(result.get("diagnostics") or {}))


class Outcome(str, enum.Enum):
    """How a trial ended. FINISHED, PRUNED and FAILED trials count in the budget and are never re-run;
    STOPPED ones (interrupted) are re-run on resume.

    - FINISHED: trained to its end (train.max_epochs or early stopping) and sent its final report;
    - PRUNED: the study's scheduler stopped it at a rung (moetune.tuning.scheduler); it still sent its final
      report, at its best epoch so far, with ``STOPPED_AT`` in its diagnostics. It is recorded as a finished
      run (status FINISHED, tag moetune.outcome=stopped) and counts with the epochs it ran;
    - FAILED: it raised (the error's message is kept);
    - STOPPED: it ended without a final report (Ctrl-C, a signal, kill): an interrupted attempt, not a result.
    """

    FINISHED = "FINISHED"
    PRUNED = "PRUNED"
    FAILED = "FAILED"
    STOPPED = "STOPPED"

    @property
    def status(self) -> str:
        """The run status a tracking store keeps: a PRUNED trial is a finished run (its tag says stopped)."""
        return "FINISHED" if self is Outcome.PRUNED else self.value


def outcome_of(last_result: dict[str, Any] | None, error: str | None = None) -> Outcome:
    """The one rule: an error makes a trial FAILED, a final report FINISHED (PRUNED when it says the
    scheduler stopped it), anything else STOPPED."""
    if error is not None:
        return Outcome.FAILED
    report = parse_report(last_result)
    if report is None:
        return Outcome.STOPPED
    return Outcome.PRUNED if report.diagnostics.get(STOPPED_AT) is not None else Outcome.FINISHED
