"""The README's "Adding things", done as a user would: a copy of the project gains a dataset (one module and
one YAML file), a sampler (one YAML file) and a tracking backend (one module and one YAML file), and the
main command's shape runs through them: trials recorded by the new backend, the export read back through
it at the multirun's end and again by ``moetune export --tracking``. (A new gate: test_architecture.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO

DATASET_MODULE = '''"""Two tasks from one random linear score: the example of adding a dataset."""

import torch

from moetune.data.base import MultiTaskData, Split, Task


def load(n_samples: int = 600, n_ids: int = 20, seed: int = 0) -> MultiTaskData:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, n_ids, (n_samples,), generator=g)
    dense = torch.randn(n_samples, 4, generator=g)
    score = dense @ torch.randn(4, generator=g) + torch.randn(n_ids, generator=g)[ids]
    targets = torch.stack([(score > 0).float(), score + 0.1 * torch.randn(n_samples, generator=g)], 1)

    def split(rows):
        masks = torch.ones(len(rows), 2, dtype=torch.bool)
        return Split({"ids": ids[rows, None], "dense": dense[rows]}, targets[rows], masks, ids[rows])

    cut = [int(0.8 * n_samples), int(0.9 * n_samples)]
    order = torch.randperm(n_samples, generator=g)
    parts = order[: cut[0]], order[cut[0] : cut[1]], order[cut[1] :]
    tasks = [Task("sign", "binary"), Task("score", "regression")]
    return MultiTaskData("linear", tasks, *(split(p) for p in parts), id_cardinalities=[n_ids], n_routing_ids=n_ids)
'''

DATASET_YAML = """name: linear
n_samples: 600
n_ids: 20
seed: ${seed}
"""

SAMPLER_YAML = """_target_: optuna.samplers.QMCSampler
seed: ${seed}
"""

# A backend that keeps a sweep as one JSON file: Tracking, StudyRecord and SweepLock, nothing else.
BACKEND_MODULE = '''"""A sweep kept as one JSON file per experiment: the example of adding a tracking backend."""

import json
import os
from pathlib import Path

from moetune.errors import ConfigError, SweepLockedError
from moetune.tracking.base import (
    LedgerEntry, RecordedStudy, RecordedSweep, RecordedTrial, StudyRecord, SweepLock, Tracking,
)


class JsonTracking(Tracking):
    def __init__(self, experiment: str, folder: str = "jsonruns"):
        self.experiment, self.folder = experiment, Path(folder)
        self.path = self.folder / f"{experiment}.json"

    def check(self, must_exist=False, writable=False):
        if must_exist and not self.path.is_file():
            raise ConfigError(f"no sweep file {self.path}; pass --tracking folder=<its folder>")
        if writable:
            self.folder.mkdir(parents=True, exist_ok=True)

    def load(self):
        return json.loads(self.path.read_text()) if self.path.is_file() else {"studies": {}, "lock": None}

    def save(self, data):
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path)

    def lock_sweep(self):
        return JsonLock(self)

    def open_study(self, study_key, tags, search_space, config_yaml):
        data = self.load()
        study = data["studies"].setdefault(study_key, {"tags": tags, "space": search_space, "trials": {}})
        study["trials"] = {n: t for n, t in study["trials"].items() if t["status"] in ("FINISHED", "FAILED")}
        self.save(data)
        return JsonRecord(self, study_key)

    def read_sweep(self):
        self.check(must_exist=True)
        studies = [
            RecordedStudy(key, s["tags"], [
                RecordedTrial(int(n), t["status"], t["metrics"], t["params"], error=t.get("error"))
                for n, t in sorted(s["trials"].items(), key=lambda item: int(item[0]))
            ], s["space"])
            for key, s in sorted(self.load()["studies"].items())
        ]
        return RecordedSweep(self.experiment, self.experiment, studies)

    def log_export(self, files, params):
        data = self.load()
        data["export"] = {"files": sorted(Path(f).name for f in files), "params": params}
        self.save(data)

    def browse_hint(self, experiment_id):
        return f"browse: {self.path}"

    def options(self):
        return {"folder": str(self.folder)}


class JsonLock(SweepLock):
    def __init__(self, tracking):
        self.tracking = tracking
        data = tracking.load()
        if data.get("lock"):
            raise SweepLockedError(f"sweep {tracking.experiment} is held by process {data['lock']}")
        data["lock"] = os.getpid()
        tracking.save(data)

    def release(self):
        data = self.tracking.load()
        data["lock"] = None
        self.tracking.save(data)


class JsonRecord(StudyRecord):
    def __init__(self, tracking, key):
        self.tracking, self.key = tracking, key

    def _update(self, number, **fields):
        data = self.tracking.load()
        data["studies"][self.key]["trials"].setdefault(str(number), {}).update(fields)
        self.tracking.save(data)

    def _trials(self):
        return self.tracking.load()["studies"][self.key]["trials"]

    def ledger(self):
        return [
            LedgerEntry(int(n), t["status"], t["sampled"], t["metrics"])
            for n, t in sorted(self._trials().items(), key=lambda item: int(item[0]))
            if t["status"] in ("FINISHED", "FAILED")
        ]

    def start_trial(self, number, params, sampled, tuner_trial_id):
        self._update(number, status="RUNNING", params={k: str(v) for k, v in params.items()}, sampled=sampled,
                     metrics={}, epochs=[])

    def log_epoch(self, number, report):
        epochs = self._trials()[str(number)]["epochs"] + [report.metrics]
        self._update(number, epochs=epochs)

    def end_trial(self, number, outcome, final=None, error=None):
        if outcome.value == "STOPPED":
            return
        self._update(number, status=outcome.value, metrics=dict(final.metrics) if final else {}, error=error)

    def counts(self):
        statuses = [t["status"] for t in self._trials().values()]
        return statuses.count("FINISHED"), statuses.count("FAILED")

    def close(self, summary, complete):
        pass
'''

BACKEND_YAML = """_target_: moetune.tracking.jsonfile.JsonTracking
folder: jsonruns
experiment: ${sweep.name}
"""


@pytest.mark.slow
def test_a_new_dataset_sampler_and_tracking_backend_are_each_a_module_and_or_a_yaml_file(tmp_path):
    shutil.copytree(
        REPO / "src" / "moetune", tmp_path / "src" / "moetune", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(REPO / "src" / "hydra_plugins", tmp_path / "src" / "hydra_plugins")
    shutil.copytree(REPO / "conf", tmp_path / "conf")
    shutil.copy(REPO / "train.py", tmp_path / "train.py")
    added = {
        "src/moetune/data/linear.py": DATASET_MODULE,
        "conf/dataset/linear.yaml": DATASET_YAML,
        "conf/sampler/qmc.yaml": SAMPLER_YAML,
        "src/moetune/tracking/jsonfile.py": BACKEND_MODULE,
        "conf/tracking/jsonfile.yaml": BACKEND_YAML,
    }
    for path, text in added.items():
        (tmp_path / path).write_text(text)
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "src"), "PYTHONUNBUFFERED": "1"}
    args = [
        "-m",
        "gate=topk,hash",
        "local_search=on,off",
        "dataset=linear",
        "sampler=qmc",
        "tracking=jsonfile",
        "tuner.n_trials=3",
        "train.max_epochs=3",
        "sweep.name=extended",
    ]
    proc = subprocess.run(
        [sys.executable, "train.py", *args], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (tmp_path / "mlruns").exists()  # MLflow was never touched: the new backend recorded everything

    sweep = json.loads((tmp_path / "jsonruns" / "extended.json").read_text())
    assert len(sweep["studies"]) == 4 and sweep["lock"] is None
    for key, study in sweep["studies"].items():
        assert "-linear-" in key and study["tags"]["sampler"] == "qmc" and study["tags"]["dataset"] == "linear"
        assert sorted(study["trials"]) == ["0", "1", "2"]
        for trial in study["trials"].values():
            assert trial["status"] == "FINISHED" and len(trial["epochs"]) == trial["metrics"]["epochs_run"]
        assert all("test_sign_auc" in t["metrics"] for t in study["trials"].values())
    assert "summary.md" in sweep["export"]["files"]  # the multirun's export logged through the backend
    summary = (tmp_path / "sweeps" / "extended" / "export" / "summary.md").read_text()
    assert "qmc" in summary and "linear" in summary  # an adaptive sampler: running-best curves per seed
    assert "browse: jsonruns/extended.json" in proc.stdout

    # moetune export on its own, through the same backend
    export = [sys.executable, "-m", "moetune.cli.main", "export", "--experiment", "extended"]
    backend = ["--tracking", "_target_=moetune.tracking.jsonfile.JsonTracking", "--tracking", "folder=jsonruns"]
    again = subprocess.run(
        [*export, *backend, "--out", "again"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    assert again.returncode == 0, again.stderr[-2000:]
    assert (tmp_path / "again" / "summary.md").read_text() == summary
