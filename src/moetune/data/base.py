"""The dataset interface every study trains on: named inputs, per-task targets and masks, three splits.

A dataset module under moetune.data exposes ``load(**params) -> MultiTaskData``; the config file
conf/dataset/<name>.yaml names the module in ``name`` and passes the rest as params.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from moetune.contract import TASK_KINDS

INPUT_KINDS = ("ids", "dense", "image")


@dataclass(frozen=True)
class Task:
    """One prediction task; its kind (moetune.contract.TASK_KINDS) gives its loss, metric and direction."""

    name: str
    kind: str
    n_classes: int = 1

    def __post_init__(self):
        if self.kind not in TASK_KINDS:
            raise ValueError(f"task {self.name!r}: kind {self.kind!r} is not one of {sorted(TASK_KINDS)}")

    @property
    def out_dim(self) -> int:
        return self.n_classes if self.kind == "multiclass" else 1


@dataclass
class Split:
    """Aligned tensors for one split.

    inputs: any of "ids" (long, N x F: categorical features), "dense" (float, N x D),
            "image" (float, N x C x H x W).
    targets: float, N x T (class index for multiclass tasks, 0/1 for binary).
    masks: bool, N x T; False where a task's target is missing (its loss is skipped there).
    routing_ids: long, N; the id hash routing uses (e.g. the user id), or None.
    """

    inputs: dict[str, torch.Tensor]
    targets: torch.Tensor
    masks: torch.Tensor
    routing_ids: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def index(self, idx: torch.Tensor | slice) -> Split:
        """The rows ``idx`` picks: a copy for an index tensor, views for a slice."""
        return Split(
            inputs={k: v[idx] for k, v in self.inputs.items()},
            targets=self.targets[idx],
            masks=self.masks[idx],
            routing_ids=None if self.routing_ids is None else self.routing_ids[idx],
        )

    def to(self, device) -> Split:
        return Split(
            inputs={k: v.to(device) for k, v in self.inputs.items()},
            targets=self.targets.to(device),
            masks=self.masks.to(device),
            routing_ids=None if self.routing_ids is None else self.routing_ids.to(device),
        )


@dataclass
class MultiTaskData:
    """A multi-task dataset with train, validation and test splits.

    id_cardinalities: vocabulary size of each column of inputs["ids"] (for embeddings).
    n_routing_ids: how many distinct routing ids exist (for hash routing), or None.
    truth: optional ground truth from a synthetic generator (e.g. the teacher's routing).
    """

    name: str
    tasks: list[Task]
    train: Split
    val: Split
    test: Split
    id_cardinalities: list[int] = field(default_factory=list)
    n_routing_ids: int | None = None
    truth: dict[str, Any] | None = None

    @property
    def splits(self) -> dict[str, Split]:
        return {"train": self.train, "val": self.val, "test": self.test}

    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v.shape[1:]) for k, v in self.train.inputs.items()}

    def validate(self) -> MultiTaskData:
        """Check the invariants every consumer relies on; raises ValueError naming the split and field."""
        n_tasks = len(self.tasks)
        for split_name, split in self.splits.items():
            n = len(split)
            if n == 0:
                raise ValueError(f"{self.name}: split {split_name!r} is empty")
            if tuple(split.targets.shape) != (n, n_tasks):
                raise ValueError(
                    f"{self.name}/{split_name}: targets shape {tuple(split.targets.shape)} != ({n}, {n_tasks})"
                )
            if tuple(split.masks.shape) != (n, n_tasks) or split.masks.dtype != torch.bool:
                raise ValueError(f"{self.name}/{split_name}: masks must be bool of shape ({n}, {n_tasks})")
            for key, value in split.inputs.items():
                if key not in INPUT_KINDS:
                    raise ValueError(f"{self.name}/{split_name}: unknown input {key!r}; expected one of {INPUT_KINDS}")
                if value.shape[0] != n:
                    raise ValueError(f"{self.name}/{split_name}: input {key!r} has {value.shape[0]} rows, targets {n}")
            if "ids" in split.inputs:
                ids = split.inputs["ids"]
                if ids.shape[1] != len(self.id_cardinalities):
                    raise ValueError(
                        f"{self.name}/{split_name}: {ids.shape[1]} id columns "
                        f"but {len(self.id_cardinalities)} cardinalities"
                    )
                for col, card in enumerate(self.id_cardinalities):
                    if ids.numel() and (int(ids[:, col].min()) < 0 or int(ids[:, col].max()) >= card):
                        raise ValueError(f"{self.name}/{split_name}: id column {col} outside [0, {card})")
            if split.routing_ids is not None:
                if self.n_routing_ids is None:
                    raise ValueError(f"{self.name}: routing_ids given but n_routing_ids is None")
                if int(split.routing_ids.min()) < 0 or int(split.routing_ids.max()) >= self.n_routing_ids:
                    raise ValueError(f"{self.name}/{split_name}: routing ids outside [0, {self.n_routing_ids})")
        return self


def split_indices(
    n: int, fractions: tuple[float, float, float], seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A seeded random split of range(n) into train/val/test index tensors by fractions (summing to 1)."""
    if len(fractions) != 3 or any(f <= 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"split fractions must be three positive numbers summing to 1, got {list(fractions)}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_train = int(round(fractions[0] * n))
    n_val = int(round(fractions[1] * n))
    return perm[:n_train], perm[n_train : n_train + n_val], perm[n_train + n_val :]
