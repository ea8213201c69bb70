"""Training one MMoE: Adam, early stopping on the validation loss, per-task metrics, gate diagnostics."""

from moetune.training.trainer import Trainer, TrainResult, task_losses

__all__ = ["TrainResult", "Trainer", "task_losses"]
