"""Shared helpers: run train.py through its real command line in a scratch folder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moetune.data.base import MultiTaskData, Split, Task

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TINY = ["dataset.n_samples=600", "train.max_epochs=2", "train.patience=2"]


def run_cli(
    workdir: Path, *args: str, timeout: int = 600, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """python train.py ARGS in `workdir` (its sweeps/ and mlruns/ land there); ``env``: extra variables."""
    (workdir / "mlruns").mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, str(REPO / "train.py"), *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


def tabular_data(n: int = 48, n_ids: int = 30, n_features: int = 6) -> MultiTaskData:
    """A tiny two-task dataset (binary + regression) with id, dense features and routing ids, seeded."""
    g = torch.Generator().manual_seed(0)

    def split(rows):
        ids = torch.randint(0, n_ids, (rows,), generator=g)
        return Split(
            inputs={"ids": ids.unsqueeze(1), "dense": torch.randn(rows, n_features, generator=g)},
            targets=torch.stack([torch.randint(0, 2, (rows,), generator=g).float(), torch.randn(rows, generator=g)], 1),
            masks=torch.ones(rows, 2, dtype=torch.bool),
            routing_ids=ids,
        )

    return MultiTaskData(
        "tabular",
        [Task("a", "binary"), Task("b", "regression")],
        split(n),
        split(16),
        split(16),
        id_cardinalities=[n_ids],
        n_routing_ids=n_ids,
    ).validate()
