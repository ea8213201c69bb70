"""The layout's rules, checked: which room may import which, and what the light modules keep out."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from moetune.tracking import tags as T

from conftest import REPO

PACKAGE = REPO / "src" / "moetune"

# what each room may import from moetune (data flows one way: no import climbs back up)
ALLOWED = {
    "errors": set(),
    "contract": set(),
    "config": {"errors", "contract"},
    "data": {"errors", "contract"},
    "moe": {"errors", "config", "data"},
    "training": {"errors", "config", "contract", "data", "moe"},
    "tracking": {"errors", "config", "contract"},
    "tuning": {"errors", "config", "contract", "data", "moe", "training", "tracking"},
    "report": {"errors", "contract", "tracking"},
    "cli": {"errors", "config", "contract", "data", "moe", "training", "tracking", "tuning", "report"},
}


def _room(path: Path) -> str:
    return path.relative_to(PACKAGE).parts[0].removesuffix(".py")


def _moetune_imports(path: Path) -> set[str]:
    """The rooms a module imports (top-level and inside functions alike)."""
    rooms = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "moetune" and len(parts) > 1 and parts[1] in ALLOWED:
                rooms.add(parts[1])
    return rooms


MODULES = sorted(p for p in PACKAGE.rglob("*.py") if p.name != "__init__.py" or p.parent != PACKAGE)


def test_every_module_lives_in_a_known_room():
    assert {_room(p) for p in MODULES} == set(ALLOWED)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_import_climbs_back_up(path):
    room = _room(path)
    climbing = _moetune_imports(path) - ALLOWED[room] - {room}
    assert not climbing, f"{path.relative_to(PACKAGE)} ({room}) imports {sorted(climbing)}"


def _loaded_after_import(module: str) -> set[str]:
    code = f"import sys, {module}; print(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return set(out.stdout.split())


def test_trial_workers_import_neither_mlflow_hydra_optuna_nor_plotting():
    loaded = _loaded_after_import("moetune.tuning.trial")
    assert "torch" in loaded and "ray" in loaded  # it did load what training needs
    assert not loaded & {"mlflow", "hydra", "omegaconf", "optuna", "matplotlib", "plotly", "sklearn"}


def test_the_estimator_imports_neither_torch_nor_mlflow():
    loaded = _loaded_after_import("moetune.report.budget")
    assert "numpy" in loaded
    assert not loaded & {"torch", "mlflow", "ray", "hydra"}


def test_the_config_and_the_contract_are_light():
    loaded = _loaded_after_import("moetune.config") | _loaded_after_import("moetune.contract")
    assert not loaded & {"torch", "mlflow", "ray", "hydra", "omegaconf", "optuna", "numpy"}


GATE_MODULE = '''"""A softmax gate with a temperature: the example of adding a gate."""

import torch
from torch import nn

from moetune.moe.gates.base import Gate, GateOutput


class TemperedSoftmaxGate(Gate):
    sparse = False

    def __init__(self, in_dim: int, n_experts: int, k: int = 0, temperature: float = 1.0):
        super().__init__(in_dim, n_experts, n_experts)
        self.linear, self.temperature = nn.Linear(in_dim, n_experts), temperature

    def forward(self, x, routing_ids=None):
        return GateOutput(torch.softmax(self.linear(x) / self.temperature, dim=-1), x.new_zeros(()))


GATE = TemperedSoftmaxGate
'''

GATE_YAML = """name: tempered
k: 2
params:
  temperature: 1.0
search:
  temperature: {type: loguniform, low: 0.1, high: 10.0}
"""


@pytest.mark.slow
def test_a_new_gate_is_one_module_and_one_yaml_file(tmp_path):
    """Copy the project, add exactly two files, and tune the new gate through the real command line."""
    shutil.copytree(PACKAGE, tmp_path / "src" / "moetune", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    shutil.copy(REPO / "train.py", tmp_path / "train.py")
    (tmp_path / "src" / "moetune" / "moe" / "gates" / "tempered.py").write_text(GATE_MODULE)
    (tmp_path / "conf" / "gate" / "tempered.yaml").write_text(GATE_YAML)
    (tmp_path / "mlruns").mkdir()
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src")}
    args = ["gate=tempered", "tuner.n_trials=2", "dataset.n_samples=600", "train.max_epochs=2", "sweep.name=new"]
    proc = subprocess.run(
        [sys.executable, "train.py", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("new")
    study = client.search_runs([exp.experiment_id], f"tags.`{T.ROLE}` = '{T.STUDY}'")[0]
    assert study.data.tags[T.GATE] == "tempered" and study.info.status == "FINISHED"
    assert "space.gate.temperature" in study.data.params  # the search entry came from the gate's own YAML
    trials = client.search_runs([exp.experiment_id], f"tags.`{T.ROLE}` = '{T.TRIAL}'")
    assert len(trials) == 2 and all(t.info.status == "FINISHED" for t in trials)
    temperatures = {float(t.data.params["gate.temperature"]) for t in trials}
    assert len(temperatures) == 2 and all(0.1 <= v <= 10.0 for v in temperatures)
