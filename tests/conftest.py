"""Shared helpers: run train.py through its real command line in a scratch folder."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
TINY = ["dataset.n_samples=600", "train.max_epochs=2", "train.patience=2"]


def run_cli(workdir: Path, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """python train.py ARGS in `workdir` (its sweeps/ and mlruns/ land there)."""
    (workdir / "mlruns").mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, str(REPO / "train.py"), *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path
