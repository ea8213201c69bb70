"""The sweep driver through the real command line: kills at every stage, signals, a second driver,
the sockets Ray listens on, read-only stores. Tiny trials; the counts are exact."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from moetune.tracking import tags as T

from conftest import REPO, run_cli

pytestmark = pytest.mark.slow

N_TRIALS = 4
STUDIES = 4
SWEEP = [
    "-m",
    "gate=topk,hash",
    "local_search=on,off",
    f"tuner.n_trials={N_TRIALS}",
    "search_space.local_search.e_perm.high=2",
    "dataset.n_samples=1500",
    "train.max_epochs=8",
    "train.patience=8",
]
EXPORT_FILES = ("curves.csv", "reductions.csv", "top_trials.csv", "summary.md", "budget_curves.html")


class Sweep:
    """One sweep's command line in a work folder, and its record read back from the store."""

    def __init__(self, workdir: Path, name: str, args: list[str] = SWEEP):
        self.workdir, self.name, self.args = workdir, name, [*args, f"sweep.name={name}"]
        (workdir / "mlruns").mkdir(exist_ok=True)
        self.client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
        self.logs: dict[int, Path] = {}

    def start(self) -> subprocess.Popen:
        path = self.workdir / f"driver-{time.time_ns()}.log"
        with open(path, "w") as log:
            proc = subprocess.Popen(
                [sys.executable, str(REPO / "train.py"), *self.args],
                cwd=self.workdir,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        self.logs[proc.pid] = path
        return proc

    def output(self, proc: subprocess.Popen) -> str:
        return self.logs[proc.pid].read_text()

    def runs(self, role: str):
        exp = self.client.get_experiment_by_name(self.name)
        if exp is None:
            return []
        return self.client.search_runs([exp.experiment_id], f"tags.`{T.ROLE}` = '{role}'", max_results=1000)

    def trial_statuses(self) -> list[str]:
        try:
            return [r.info.status for r in self.runs(T.TRIAL)]
        except Exception:  # the store is being created
            return []

    def wait_for(self, proc: subprocess.Popen, condition: Callable[[], bool], timeout: float = 300) -> bool:
        """Poll until ``condition`` holds (True) or the driver exits (False)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            if proc.poll() is not None:
                return False
            try:
                if condition():
                    return True
            except Exception:
                pass
            time.sleep(0.1)
        raise AssertionError(f"condition not reached in {timeout}s:\n{self.output(proc)[-3000:]}")

    def check_complete(self) -> None:
        """Every study has exactly n_trials FINISHED or FAILED runs numbered 0..n-1, no setting twice, nothing
        RUNNING or KILLED left, the studies FINISHED, no lock left, and a complete export."""
        studies = self.runs(T.STUDY)
        trials = self.runs(T.TRIAL)
        assert len(studies) == STUDIES
        for study in studies:
            assert study.info.status == "FINISHED", study.data.tags[T.STUDY_KEY]
            children = [t for t in trials if t.data.tags[T.PARENT_RUN_ID] == study.info.run_id]
            assert sorted(int(t.data.tags[T.TRIAL_INDEX]) for t in children) == list(range(N_TRIALS))
            assert all(t.info.status in ("FINISHED", "FAILED") for t in children)
            settings = [json.dumps(json.loads(t.data.tags[T.SAMPLED]), sort_keys=True) for t in children]
            assert len(set(settings)) == N_TRIALS, "a setting was trained twice"
            assert study.data.metrics["trials_finished"] + study.data.metrics["trials_failed"] == N_TRIALS
        assert len(trials) == STUDIES * N_TRIALS
        assert not self.runs(T.DRIVER), "a driver's lock was left behind"
        export = self.workdir / "sweeps" / self.name / "export"
        for name in EXPORT_FILES:
            assert (export / name).is_file(), name
        assert not list(export.glob(".export-*")), "a half-written export was left"
        assert len(self.runs(T.EXPORT)) == 1


def _some_study_complete_but_not_all(sweep: Sweep) -> bool:
    by_study: dict[str, int] = {}
    for run in sweep.runs(T.TRIAL):
        if run.info.status in ("FINISHED", "FAILED"):
            by_study[run.data.tags[T.STUDY_KEY]] = by_study.get(run.data.tags[T.STUDY_KEY], 0) + 1
    complete = [k for k, n in by_study.items() if n == N_TRIALS]
    return 0 < len(complete) < STUDIES


def _listening_sockets(root_pid: int) -> list[str]:
    """``ss -ltnp`` lines of the sockets that the process ``root_pid`` and its descendants listen on."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    tree, todo = set(), [root_pid]
    while todo:
        pid = todo.pop()
        tree.add(pid)
        todo.extend(children.get(pid, []))
    lines = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout.splitlines()
    return [line for line in lines if {int(p) for p in re.findall(r"pid=(\d+)", line)} & tree]


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_sweep_stopped_at_every_stage_ends_with_exactly_n_trials(workdir, stop):
    """Stopped before any trial ends, mid-study, between studies and during the export, then re-run until
    done: exact counts, no setting twice, nothing RUNNING or KILLED, a complete export. SIGTERM exits 143
    with the resume command and no crash dump, leaving nothing RUNNING."""
    sweep = Sweep(workdir, "chaos")
    export = workdir / "sweeps" / "chaos" / "export"
    stages = {
        "before any trial ends": lambda: (
            "RUNNING" in sweep.trial_statuses() and "FINISHED" not in sweep.trial_statuses()
        ),
        "mid-study": lambda: 2 <= sweep.trial_statuses().count("FINISHED") < STUDIES * N_TRIALS - 4,
        "between studies": lambda: _some_study_complete_but_not_all(sweep),
        "during the export": lambda: export.is_dir(),
    }
    reached = []
    for stage, condition in stages.items():
        proc = sweep.start()
        if sweep.wait_for(proc, condition):
            reached.append(stage)
            proc.send_signal(stop)
        proc.wait(timeout=120)
        out = sweep.output(proc)
        if stop == signal.SIGTERM and proc.returncode != 0:
            assert proc.returncode == 143, out[-3000:]
            assert "resume with: python train.py -m gate=topk,hash" in out and "sweep.name=chaos" in out
            assert "Traceback" not in out and "core dumped" not in out and "Aborted" not in out
            assert "RUNNING" not in sweep.trial_statuses(), "SIGTERM left a trial RUNNING"
        if stage != "before any trial ends":
            assert "Warning" not in out, out[-3000:]  # a resumed driver does not repeat warnings
    print(f"{stop.name}: stopped {reached}")
    assert reached[:3] == list(stages)[:3], f"stages reached: {reached}"
    proc = sweep.start()
    assert proc.wait(timeout=300) == 0, sweep.output(proc)[-3000:]
    sweep.check_complete()
    exp = sweep.client.get_experiment_by_name("chaos")
    replaced = sweep.client.search_runs([exp.experiment_id], f"tags.`{T.ROLE}` = '{T.TRIAL}'", run_view_type=2)
    print(f"{stop.name}: {STUDIES * N_TRIALS} trials recorded, {len(replaced)} cut-off attempts replaced")


def test_second_driver_refuses_and_a_new_one_takes_over_after_kill_9(workdir):
    sweep = Sweep(workdir, "locked")
    first = sweep.start()
    assert sweep.wait_for(first, lambda: "RUNNING" in sweep.trial_statuses())
    # Ray, started by moetune, listens on loopback only
    sockets = _listening_sockets(first.pid)
    assert sockets, "no listening sockets found for the driver's processes"
    for line in sockets:
        local = line.split()[3]
        assert local.startswith(("127.0.0.1:", "[::ffff:127.0.0.1]:", "[::1]:")), line
    started = time.time()
    second = run_cli(workdir, *sweep.args, timeout=120)
    assert second.returncode == 2
    lines = second.stderr.strip().splitlines()
    assert lines[-1].startswith("error: sweep 'locked' is being run by another driver")
    assert f"pid {first.pid} on" in lines[-1]
    assert time.time() - started < 60
    assert first.poll() is None, "the refused driver disturbed the running one"
    first.kill()
    first.wait()
    third = sweep.start()  # takes the dead driver's lock over at once (its PID is gone)
    assert third.wait(timeout=300) == 0, sweep.output(third)[-3000:]
    sweep.check_complete()


def test_studies_draw_the_same_settings_alone_and_beside_others(workdir):
    tiny = ["train.max_epochs=2", "dataset.n_samples=600"]
    together = Sweep(workdir, "together", [*SWEEP[:5], *tiny])
    proc = run_cli(workdir, *together.args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    alone = Sweep(workdir, "alone", ["gate=hash", "local_search=on", *SWEEP[3:5], *tiny])
    proc = run_cli(workdir, *alone.args)
    assert proc.returncode == 0, proc.stderr[-3000:]

    def settings(sweep: Sweep) -> dict[int, str]:
        return {
            int(r.data.tags[T.TRIAL_INDEX]): r.data.tags[T.SAMPLED]
            for r in sweep.runs(T.TRIAL)
            if r.data.tags[T.STUDY_KEY] == "hash-ls_on-synthetic-seed0"
        }

    assert settings(alone) == settings(together) and len(settings(alone)) == N_TRIALS


@pytest.mark.parametrize("target", ["store file", "store folder", "output folder"])
def test_unwritable_store_or_output_folder_is_one_line_before_ray_starts(workdir, target):
    (workdir / "mlruns").mkdir()
    db = workdir / "mlruns" / "mlflow.db"
    args = ["tuner.n_trials=1", "train.max_epochs=1", "dataset.n_samples=600", "sweep.name=readonly"]
    if target == "store file":
        assert run_cli(workdir, *args[:-1], "sweep.name=first").returncode == 0
        locked = db
    elif target == "store folder":
        locked = workdir / "mlruns"
    else:
        (workdir / "sweeps").mkdir()
        locked = workdir / "sweeps"
    subprocess.run(["chattr", "+i", str(locked)], check=True)  # read-only even for root
    try:
        started = time.time()
        proc = run_cli(workdir, *args, timeout=120)
    finally:
        subprocess.run(["chattr", "-i", str(locked)], check=True)
    assert proc.returncode == 2, proc.stderr[-3000:]
    error = proc.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and "not writable" in error, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "Ray" not in proc.stdout + proc.stderr
    assert time.time() - started < 30
    assert not (workdir / "sweeps" / "readonly" / "ray").exists(), "Ray started before the check"


def test_live_view_redraws_one_line_per_study_on_a_terminal(workdir):
    """On a terminal the studies' lines are redrawn in place (tqdm), not printed once per trial."""
    import fcntl
    import pty
    import struct
    import termios

    (workdir / "mlruns").mkdir()
    args = ["-m", "gate=topk,hash", "tuner.n_trials=3", "train.max_epochs=2", "dataset.n_samples=600"]
    primary, secondary = pty.openpty()
    fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 160, 0, 0))  # a 160-column terminal
    proc = subprocess.Popen(
        [sys.executable, str(REPO / "train.py"), *args, "sweep.name=tty"],
        cwd=workdir,
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(primary, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    assert proc.wait(timeout=300) == 0
    os.close(primary)
    out = b"".join(chunks).decode(errors="replace")
    assert "\r" in out and "\x1b[A" in out, out[-2000:]  # redrawn in place, cursor moved up between lines
    for key in ("topk-ls_off-synthetic-seed0", "hash-ls_off-synthetic-seed0"):
        assert re.search(re.escape(key) + r" .*3/3, 0 failed, best val_loss \d", out), out[-3000:]
    assert not re.search(r"\] \d+/3 trials done", out)  # the plain per-study lines are for logs only


def test_a_sweep_setting_that_differs_between_studies_is_one_line(workdir):
    proc = run_cli(workdir, "-m", "gate=topk", "tuner.concurrency=1,2", "sweep.name=mixed", timeout=120)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip()
        .splitlines()[-1]
        .startswith("error: tuner.concurrency is a setting of the whole sweep, but its studies differ")
    )
    assert list((workdir / "mlruns").iterdir()) == []
