"""Names shared by the trainer, the MLflow logger and the exporter: one place, so they cannot drift.

MLflow layout of a sweep:
- one experiment per sweep (its name is the sweep name);
- one parent run per study, tag ROLE=STUDY, tags below, params = the search space;
- one nested child run per trial, tag ROLE=TRIAL and mlflow.parentRunId, params = the sampled
  hyperparameters, per-epoch metrics (step = epoch), final metrics, status FINISHED or FAILED.
"""
from __future__ import annotations

# tags
ROLE = "moetune.role"
STUDY = "study"
TRIAL = "trial"
SWEEP = "moetune.sweep"
STUDY_KEY = "moetune.study"        # gate/local_search/dataset/seed, unique inside a sweep
TRIAL_ID = "moetune.trial_id"
TRIAL_INDEX = "moetune.trial_index"  # 0-based order in which the tuner proposed the trial
GATE = "gate"
LOCAL_SEARCH = "local_search"      # "on" | "off" | "warmup" (the control arm)
DATASET = "dataset"
TASK_WEIGHTS = "task_weights"      # "equal" or e.g. "0.1_0.9": fixed per study, part of its identity
HEADLINE_METRIC = "moetune.headline_metric"  # the test twin of the selection metric (test_loss): the answer's metric
SAMPLER = "sampler"                # "random" | "tpe"
SEED = "seed"
VERSION = "moetune.version"
GIT_COMMIT = "moetune.git_commit"
ERROR = "moetune.error"            # set on FAILED trials: the error's one-line message
EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow 3's UI opens an experiment by its kind
MODEL_TRAINING = "custom_model_development"

# per-epoch metrics (step = epoch, 1-based)
TRAIN_LOSS = "train_loss"
VAL_LOSS = "val_loss"

# final metrics of a trial
BEST_EPOCH = "best_epoch"
WALL_SECONDS = "wall_seconds"
CPU_SECONDS = "cpu_seconds"
ACTIVE_EXPERTS = "active_experts_mean"

# metric per task kind, and its direction
TASK_METRIC = {"binary": "auc", "regression": "mse", "multiclass": "accuracy"}
HIGHER_IS_BETTER = {"auc": True, "accuracy": True, "mse": False, "loss": False}


def task_metric_name(split: str, task: str, metric: str) -> str:
    """e.g. ("test", "watch", "auc") -> "test_watch_auc"; split in val|test|best_val."""
    return f"{split}_{task}_{metric}"


def higher_is_better(metric_name: str) -> bool:
    """Direction from a metric name's last part: ..._auc, ..._accuracy up; ..._mse, ..._loss down."""
    last = metric_name.rsplit("_", 1)[-1]
    if last not in HIGHER_IS_BETTER:
        raise KeyError(f"metric {metric_name!r}: unknown kind {last!r}; expected one of {sorted(HIGHER_IS_BETTER)}")
    return HIGHER_IS_BETTER[last]
