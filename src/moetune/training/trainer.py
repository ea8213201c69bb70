"""Training with Adam, early stopping on validation loss, best weights restored, per-task metrics."""

from __future__ import annotations

import contextlib
import copy
import gc
import hashlib
import math
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from moetune import contract
from moetune.config import GateConfig, LocalSearchConfig, ModelConfig, TrainConfig
from moetune.contract import TASK_KINDS, FinalReport
from moetune.data.base import MultiTaskData, Split, Task
from moetune.errors import ConfigError, TrainingDivergedError
from moetune.moe import MMoE
from moetune.moe.upcycle import upcycle
from moetune.training.adam import FusedAdam
from moetune.training.metrics import normalized_mutual_info, roc_auc

BATCHES_PER_GATHER = 64  # training batches gathered from the shuffled rows at once: one indexing op, not 64


@dataclass
class TrainResult:
    """What a run produced: per-epoch history, metrics at the best epoch, gate diagnostics."""

    best_epoch: int
    epochs_run: int
    history: list[dict[str, float]]
    val: dict[str, float]
    test: dict[str, float]
    diagnostics: dict = field(default_factory=dict)
    wall_seconds: float = 0.0
    cpu_seconds: float = 0.0
    train_samples_per_second: float = 0.0  # training steps only: what the gate and experts cost to train
    stopped_at: int | None = None  # the epoch after which on_epoch asked to stop (a scheduler's rung), if it did

    def final_metrics(self) -> dict[str, float]:
        """The final metrics of the trial-report contract: best_val_*, test_*, timings, active experts."""
        out = {contract.best_metric(k): v for k, v in self.val.items()}
        out.update(self.test)
        out[contract.BEST_EPOCH] = float(self.best_epoch)
        out[contract.WALL_SECONDS] = self.wall_seconds
        out[contract.CPU_SECONDS] = self.cpu_seconds
        out[contract.TRAIN_SAMPLES_PER_SECOND] = self.train_samples_per_second
        out[contract.EPOCHS_RUN] = float(self.epochs_run)
        out[contract.ACTIVE_EXPERTS] = self.diagnostics[contract.ACTIVE_EXPERTS]
        out.update(self.diagnostics.get(contract.PHASE, {}))
        if contract.ROUTING_NMI in self.diagnostics:
            out[contract.ROUTING_NMI] = self.diagnostics[contract.ROUTING_NMI]
        return out

    def report(self) -> FinalReport:
        return FinalReport(self.final_metrics(), self.diagnostics)


def weights_digest(model: torch.nn.Module) -> str:
    """A short fingerprint of a model's weights: trials of a study must start from different ones."""
    digest = hashlib.sha1()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device=cuda but no CUDA device is available; use device=auto or cpu")
    return torch.device(name)


# per-sample losses and whole-split metrics, by the names the task-kind table (moetune.contract) gives
LOSSES: dict[str, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {
    "binary_cross_entropy": lambda out, y: F.binary_cross_entropy_with_logits(out.squeeze(1), y, reduction="none"),
    "squared_error": lambda out, y: (out.squeeze(1) - y).pow(2),
    "cross_entropy": lambda out, y: F.cross_entropy(out, y.long().clamp_min(0), reduction="none"),
}
METRICS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "auc": lambda y, pred: roc_auc(y, pred[:, 0]) if np.isfinite(pred).all() else float("nan"),
    "mse": lambda y, pred: float(((pred[:, 0] - y) ** 2).mean()),
    "accuracy": lambda y, pred: float((pred.argmax(1) == y).mean()),
}


def task_losses(
    tasks: list[Task], outputs: list[torch.Tensor], targets: torch.Tensor, masks: torch.Tensor
) -> torch.Tensor:
    """Per-task mean loss over the samples where the task's target is present (T,)."""
    # a missing target may hold anything (NaN too); zero it so its skipped loss stays finite
    filled, present = targets.masked_fill(~masks, 0.0), masks.to(outputs[0].dtype)
    sums = [
        torch.dot(LOSSES[TASK_KINDS[task.kind].loss](out, filled[:, t]), present[:, t])
        for t, (task, out) in enumerate(zip(tasks, outputs, strict=True))
    ]
    return torch.stack(sums) / present.sum(0).clamp_min(1.0)


@contextlib.contextmanager
def long_lived_objects_frozen() -> Iterator[None]:
    """Keeps the objects alive on entry out of Python's cyclic collector until exit (gc.freeze).

    A trial's process holds 200k-400k objects that outlive its fit (torch, Ray, the data, the model). The
    autograd objects that survive the young generations set off a full collection about every second
    movielens_cpu epoch, and each walked all of them: 0.16 s in a bare process, 0.26 s in a Ray trial
    worker (gc.callbacks). Objects made inside stay collectable; what a caller had frozen before stays
    frozen."""
    frozen_before = gc.get_freeze_count()
    gc.freeze()
    try:
        yield
    finally:
        if not frozen_before:
            gc.unfreeze()


class Trainer:
    """Fits one MMoE on one dataset. on_epoch(epoch, metrics) is called after each epoch (e.g. to report to Tune);
    a true return stops training after that epoch (a scheduler's decision), as early stopping does."""

    def __init__(
        self,
        data: MultiTaskData,
        model_cfg: ModelConfig,
        gate_cfg: GateConfig,
        ls_cfg: LocalSearchConfig,
        train_cfg: TrainConfig,
        init_state: Mapping[str, torch.Tensor] | None = None,
    ):
        """``init_state``: a dense (one-expert) model's state dict to upcycle from (moetune.moe.upcycle), the
        checkpoint ``model_cfg.init_from`` names; its noise (``model_cfg.init_noise``) is drawn from the seed."""
        # the config was checked once, on the driver (moetune.config); a trial does not check it again
        self.data = data
        self.cfg = train_cfg
        self.seed = 0 if train_cfg.seed is None else train_cfg.seed
        self.ls_cfg = ls_cfg
        self.device = resolve_device(train_cfg.device)
        torch.manual_seed(self.seed)
        model = MMoE(data, model_cfg, gate_cfg, ls_cfg)
        if init_state is not None:
            upcycle(model, init_state, model_cfg.init_noise, self.seed, model_cfg.init_from or "")
        self.model = model.to(self.device)
        self.init_digest = weights_digest(self.model)
        weights = train_cfg.task_weights or [1.0] * len(data.tasks)
        self.task_weights = torch.tensor(weights, dtype=torch.float32, device=self.device)
        self.splits = {name: split.to(self.device) for name, split in data.splits.items()}

    def fit(self, on_epoch: Callable[[int, dict[str, float]], bool | None] | None = None) -> TrainResult:
        with long_lived_objects_frozen():
            return self._fit(on_epoch)

    def _fit(self, on_epoch: Callable[[int, dict[str, float]], bool | None] | None) -> TrainResult:
        start_wall, start_cpu = time.perf_counter(), time.process_time()
        cfg, model = self.cfg, self.model
        # torch's fused Adam (dense moments, every parameter every step), its kernel called directly
        optimizer = FusedAdam([p for p in model.parameters() if p.requires_grad], lr=cfg.lr)
        torch.manual_seed(self.seed)  # dropout and noise draw from the global generator: same seed, same run
        generator = torch.Generator().manual_seed(self.seed)
        train = self.splits["train"]
        n_batches = math.ceil(len(train) / cfg.batch_size)
        ls = model.local_search
        best_loss, best_epoch, best_state, stale = math.inf, 0, None, 0
        phase: dict[str, float] = {}
        history = []
        step_seconds, step_samples, perm_steps = 0.0, 0, 0
        stopped_at: int | None = None
        for epoch in range(1, cfg.max_epochs + 1):
            model.train()
            epoch_start = time.perf_counter()
            order = torch.randperm(len(train), generator=generator).to(self.device)
            loss_sum = torch.zeros(len(self.data.tasks), device=self.device)
            for b in range(n_batches):
                if ls is not None and not ls.hardened:
                    ls.progress = ((epoch - 1) * n_batches + b) / max(1, self.ls_cfg.e_perm * n_batches - 1)
                    perm_steps += 1
                if b % BATCHES_PER_GATHER == 0:  # one gather for the next batches; each batch is a view of it
                    block = train.index(order[b * cfg.batch_size : (b + BATCHES_PER_GATHER) * cfg.batch_size])
                within = (b % BATCHES_PER_GATHER) * cfg.batch_size
                batch = block.index(slice(within, within + cfg.batch_size))
                out = model(batch.inputs, batch.routing_ids)
                losses = task_losses(self.data.tasks, out.outputs, batch.targets, batch.masks)
                loss = (self.task_weights * losses).sum() + out.aux_loss
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                loss_sum += losses.detach()
            train_losses = (loss_sum / n_batches).tolist()  # on the host: also waits for the device's steps
            step_seconds += time.perf_counter() - epoch_start
            step_samples += len(train)
            if ls is not None and not ls.hardened and epoch >= self.ls_cfg.e_perm:
                phase = self.phase_report(perm_steps)
                ls.freeze()
            bad = [task.name for task, v in zip(self.data.tasks, train_losses, strict=False) if not math.isfinite(v)]
            if bad:
                raise TrainingDivergedError(epoch, f"non-finite training loss for task(s) {bad} (lower train.lr?)")
            metrics = {contract.TRAIN_LOSS: float((self.task_weights.cpu() * torch.tensor(train_losses)).sum())}
            metrics.update(self.evaluate("val"))
            if not math.isfinite(metrics[contract.VAL_LOSS]):
                raise TrainingDivergedError(epoch, "non-finite validation loss")
            history.append({"epoch": epoch, **metrics})
            stop = on_epoch(epoch, metrics) if on_epoch is not None else None
            if metrics[contract.VAL_LOSS] < best_loss:
                best_loss, best_epoch, stale = metrics[contract.VAL_LOSS], epoch, 0
                best_state = copy.deepcopy(model.state_dict())
            else:
                stale += 1
                if stale >= cfg.patience:
                    break
            if stop and epoch < cfg.max_epochs:  # after this epoch counted for the best one (restored below)
                stopped_at = epoch
                break
        if ls is not None and not phase:  # stopped early, inside the phase
            phase = self.phase_report(perm_steps)
        model.load_state_dict(best_state)
        if phase:
            phase[contract.BEST_EPOCH_AFTER_PERM] = float(best_epoch - self.ls_cfg.e_perm)
        result = TrainResult(
            best_epoch=best_epoch,
            epochs_run=len(history),
            history=history,
            val=self.evaluate("val"),
            test=self.evaluate("test"),
            diagnostics=self.diagnostics("test"),
        )
        result.diagnostics[contract.PHASE] = phase
        result.stopped_at = stopped_at
        result.wall_seconds = time.perf_counter() - start_wall
        result.cpu_seconds = time.process_time() - start_cpu
        result.train_samples_per_second = step_samples / max(step_seconds, 1e-9)
        return result

    def phase_report(self, perm_steps: int) -> dict[str, float]:
        """What the local-search phase did (moetune.contract's PERM_* metrics), taken as it ends."""
        ls = self.model.local_search
        return {
            contract.E_PERM: float(self.ls_cfg.e_perm),
            contract.PERM_STEPS: float(perm_steps),
            **ls.phase_report(),
        }

    @torch.no_grad()
    def predict(self, split_name: str) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Model outputs and gate weights on a whole split, in eval mode (hard permutation).

        A batch-level gate (Expert Choice, USMoE, Soft MoE) routes a sample by the rest of its batch, so it is
        evaluated in batches of train.batch_size, the size it was trained on; the last batch ends at the
        split's end and overlaps the one before (its overlapping rows are not counted twice)."""
        self.model.eval()
        split = self.splits[split_name]
        batch_level = self.model.gates[0].batch_level
        size = self.cfg.batch_size if batch_level else self.cfg.eval_batch_size
        outs, gates = [], []
        for start in range(0, len(split), size):
            first = max(0, min(start, len(split) - size)) if batch_level else start
            part = split.index(torch.arange(first, min(start + size, len(split)), device=self.device))
            out = self.model(part.inputs, part.routing_ids)
            new_rows = slice(start - first, None)
            outs.append([o[new_rows] for o in out.outputs])
            gates.append([g[new_rows] for g in out.gate_weights])
        return [torch.cat(o) for o in zip(*outs, strict=False)], [torch.cat(g) for g in zip(*gates, strict=False)]

    def evaluate(self, split_name: str) -> dict[str, float]:
        """{split}_loss (task-weighted, no regularizers) and {split}_{task}_{auc|mse|accuracy}."""
        split: Split = self.splits[split_name]
        outputs, _ = self.predict(split_name)
        losses = task_losses(self.data.tasks, outputs, split.targets, split.masks)
        metrics = {f"{split_name}_loss": float((self.task_weights * losses).sum())}
        for t, (task, out) in enumerate(zip(self.data.tasks, outputs, strict=False)):
            mask = split.masks[:, t]
            y, pred = split.targets[mask, t].cpu().numpy(), out[mask].float().cpu().numpy()
            metric = TASK_KINDS[task.kind].metric
            metrics[contract.task_metric_name(split_name, task.name, metric)] = METRICS[metric](y, pred)
        return metrics

    def diagnostics(self, split_name: str) -> dict:
        """Active experts per sample, per-expert load, the permutation, and routing recovery on synthetic data."""
        _, gates = self.predict(split_name)
        active = [(g != 0).float() for g in gates]
        diag = {
            contract.INIT_DIGEST: self.init_digest,
            contract.ACTIVE_EXPERTS: float(torch.stack([a.sum(1).mean() for a in active]).mean()),
            contract.ACTIVE_EXPERTS_PER_TASK: [float(a.sum(1).mean()) for a in active],
            contract.EXPERT_LOAD_PER_TASK: [a.mean(0).tolist() for a in active],
        }
        if self.model.local_search is not None:
            diag[contract.PERMUTATION] = self.model.local_search.permutation()
        truth = (self.data.truth or {}).get(f"{split_name}_expert")
        if truth is not None:
            chosen = gates[0].argmax(1).cpu().numpy()
            diag[contract.ROUTING_NMI] = float(normalized_mutual_info(np.asarray(truth), chosen))
        return diag
