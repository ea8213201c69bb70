"""Security drill: who gets in to the scale-out setup. A real ``mlflow server --app-name basic-auth`` on a real
PostgreSQL with password authentication, on loopback, in temporary folders: no login and a wrong password are
refused (401), a user without permission on a sweep's experiment can neither delete its runs nor take its
lock (403), a read-only user can export but not sweep, PostgreSQL refuses a connection without the password,
and nothing the sweep wrote holds a credential. The first tests need no services: a database URI that cannot
be reached, or that carries a password, is one line and exit 2 in seconds."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest
import requests
from services import mlflow_server, postgres, postgres_available

from moetune.errors import ConfigError
from moetune.tracking import mlflow_access
from moetune.tracking import tags as T

from conftest import TINY, run_cli

LOGIN = ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD")
needs_postgres = pytest.mark.skipif(not postgres_available(), reason="PostgreSQL 15 (postgresql-15) is not installed")


def cli(workdir: Path, env: dict[str, str], *args: str) -> tuple[subprocess.CompletedProcess, float]:
    """train.py ARGS with exactly the login in ``env`` (none when empty); the wall time."""
    with pytest.MonkeyPatch.context() as mp:
        for name in (*LOGIN, "PGPASSWORD"):
            mp.delenv(name, raising=False)
        for name, value in env.items():
            mp.setenv(name, value)
        start = time.time()
        proc = run_cli(workdir, *args)
    return proc, time.time() - start


def one_error(proc: subprocess.CompletedProcess) -> str:
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return errors[0]


# ------------------------------------------------------------------ no services needed


@pytest.mark.slow  # waits out a 5 s connection timeout
def test_unreachable_database_uri_is_one_line_in_seconds(workdir):
    proc, seconds = cli(workdir, {}, "sweep.name=db", "tracking.uri=postgresql+psycopg2://nobody@127.0.0.1:1/x")
    line = one_error(proc)
    print(f"{seconds:.1f}s: {line}")
    assert "is unreachable" in line and "127.0.0.1:1" in line
    assert seconds < 10
    assert list((workdir / "mlruns").iterdir()) == []


def test_a_password_in_the_uri_is_refused_and_never_shown(workdir):
    proc, _ = cli(workdir, {}, "sweep.name=db", "tracking.uri=postgresql+psycopg2://me:hunter2pw@127.0.0.1:1/x")
    line = one_error(proc)
    assert "carries a password" in line and "me:***@127.0.0.1" in line
    assert "hunter2pw" not in proc.stdout + proc.stderr
    assert mlflow_access.redact("http://u:p@h:5000/x") == "http://u:***@h:5000/x"


def test_a_password_in_the_uri_is_refused_before_hydra_logs_the_config(workdir):
    proc, _ = cli(workdir, {}, "sweep.name=db", "tracking.uri=postgresql+psycopg2://me:hunter2pw@127.0.0.1:1/x")
    assert proc.returncode == 2
    written = [p for p in workdir.rglob("*") if p.is_file() and b"hunter2pw" in p.read_bytes()]
    assert written == []


def test_a_database_uri_without_its_driver_is_one_line():
    with pytest.raises(ConfigError, match=r"tracking.uri 'mysql\+nodriver://u@127.0.0.1:1/x': "):
        mlflow_access.check_database("mysql+nodriver://u@127.0.0.1:1/x")


# ------------------------------------------------------------------ the drill


class Stack:
    def __init__(self, database, server):
        self.database, self.server = database, server
        self.sweeper = server.add_user("sweeper")
        self.stranger = server.add_user("stranger")
        self.reader = server.add_user("reader")
        self.refusals: list[str] = []
        self.granted = False

    def read_only(self, experiment_id: str) -> None:
        """``reader`` gets READ on the experiment (once: a second grant of the same is an error)."""
        if not self.granted:
            self.server.grant("reader", experiment_id, "READ")
            self.granted = True

    @staticmethod
    def auth(env: dict[str, str]) -> tuple[str, str]:
        return env[LOGIN[0]], env[LOGIN[1]]

    def call(self, method: str, path: str, auth=None, **body) -> requests.Response:
        kwargs = {"json": body} if method == "POST" else {"params": body}
        return requests.request(method, self.server.uri + path, auth=auth, timeout=30, **kwargs)

    def refused(self, what: str, answer: requests.Response, status: int) -> None:
        self.refusals.append(f"{what}: HTTP {answer.status_code}")
        print(self.refusals[-1])
        assert answer.status_code == status, f"{what}: {answer.status_code} {answer.text[:300]}"


@pytest.fixture(scope="module")
def stack():
    with postgres() as database, mlflow_server(database) as server:
        yield Stack(database, server)


@pytest.fixture(scope="module")
def swept(stack, tmp_path_factory):
    """A small sweep as ``sweeper`` (local Ray), then the experiment's id and the folder it ran in."""
    workdir = tmp_path_factory.mktemp("swept")
    args = ["-m", "gate=topk", "tuner.n_trials=2", *TINY, f"tracking.uri={stack.server.uri}", "sweep.name=drill"]
    proc, seconds = cli(workdir, stack.sweeper, *args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"sweep as sweeper: {seconds:.0f}s")
    found = stack.call(
        "GET", "/api/2.0/mlflow/experiments/get-by-name", stack.auth(stack.sweeper), experiment_name="drill"
    )
    return found.json()["experiment"]["experiment_id"], workdir, proc


SEARCH = "/api/2.0/mlflow/experiments/search"
CREATE = "/api/2.0/mlflow/experiments/create"


@pytest.mark.slow
@needs_postgres
def test_no_login_and_a_wrong_password_are_refused_for_reading_and_writing(stack):
    wrong = ("sweeper", "not-the-password")
    stack.refused("search experiments, no login", stack.call("GET", SEARCH, max_results=1), 401)
    stack.refused("create an experiment, no login", stack.call("POST", CREATE, name="intruder"), 401)
    stack.refused("search experiments, wrong password", stack.call("GET", SEARCH, wrong, max_results=1), 401)
    stack.refused("create an experiment, wrong password", stack.call("POST", CREATE, wrong, name="intruder"), 401)
    stack.refused(
        "reset admin's password, no login",
        stack.call("POST", "/api/2.0/mlflow/users/update-password", username="admin", password="x"),
        401,
    )


@pytest.mark.slow
@needs_postgres
def test_a_sweep_without_a_valid_login_is_one_line_and_writes_nothing(stack, tmp_path):
    args = ["-m", "gate=topk", "tuner.n_trials=2", *TINY, f"tracking.uri={stack.server.uri}", "sweep.name=nologin"]
    for env, expected in (({}, "requires a login (HTTP 401)"), ({**stack.sweeper, LOGIN[1]: "wrong"}, "refused")):
        workdir = tmp_path / str(len(env))
        workdir.mkdir()
        proc, seconds = cli(workdir, env, *args)
        line = one_error(proc)
        stack.refusals.append(f"sweep via CLI, {'wrong password' if env else 'no login'}: exit 2 in {seconds:.0f}s")
        print(f"{seconds:.1f}s: {line}")
        assert expected in line and "MLFLOW_TRACKING_USERNAME" in line and "MLFLOW_TRACKING_PASSWORD" in line
        assert list((workdir / "mlruns").iterdir()) == []
    missing = stack.call(
        "GET", "/api/2.0/mlflow/experiments/get-by-name", stack.server.admin, experiment_name="nologin"
    )
    assert missing.status_code == 404


@pytest.mark.slow
@needs_postgres
def test_a_stranger_can_neither_read_nor_delete_nor_take_the_lock(stack, swept, tmp_path):
    experiment_id, _, _ = swept
    stranger, admin = stack.auth(stack.stranger), stack.server.admin
    runs = stack.call("POST", "/api/2.0/mlflow/runs/search", admin, experiment_ids=[experiment_id]).json()["runs"]
    victim = runs[0]["info"]["run_id"]
    stack.refused("stranger reads a run", stack.call("GET", "/api/2.0/mlflow/runs/get", stranger, run_id=victim), 403)
    hidden = stack.call("POST", "/api/2.0/mlflow/runs/search", stranger, experiment_ids=[experiment_id])
    stack.refusals.append(f"stranger searches the sweep's runs: HTTP {hidden.status_code}, {hidden.json()} (filtered)")
    assert hidden.status_code == 200 and hidden.json().get("runs", []) == []  # filtered out, not an error
    stack.refused(
        "stranger deletes a run", stack.call("POST", "/api/2.0/mlflow/runs/delete", stranger, run_id=victim), 403
    )
    lock = {"experiment_id": experiment_id, "run_name": "driver pid 1", "tags": [{"key": T.ROLE, "value": T.DRIVER}]}
    stack.refused(
        "stranger takes the sweep's lock", stack.call("POST", "/api/2.0/mlflow/runs/create", stranger, **lock), 403
    )
    stack.refused(
        "stranger deletes the experiment",
        stack.call("POST", "/api/2.0/mlflow/experiments/delete", stranger, experiment_id=experiment_id),
        403,
    )
    assert (
        stack.call("GET", "/api/2.0/mlflow/runs/get", admin, run_id=victim).json()["run"]["info"]["lifecycle_stage"]
        == "active"
    )
    proc, _ = cli(
        tmp_path,
        stack.stranger,
        "-m",
        "gate=topk",
        "tuner.n_trials=2",
        *TINY,
        f"tracking.uri={stack.server.uri}",
        "sweep.name=drill",
    )
    line = one_error(proc)
    stack.refusals.append(f"stranger resumes the sweep via CLI: exit 2 ({line[:90]}...)")
    assert "HTTP 403" in line and "stranger" in line


@pytest.mark.slow
@needs_postgres
def test_a_reader_cannot_sweep(stack, swept, tmp_path):
    experiment_id, _, _ = swept
    stack.read_only(experiment_id)
    admin = stack.server.admin
    before = len(
        stack.call("POST", "/api/2.0/mlflow/runs/search", admin, experiment_ids=[experiment_id]).json()["runs"]
    )
    proc, seconds = cli(
        tmp_path,
        stack.reader,
        "-m",
        "gate=topk",
        "tuner.n_trials=3",
        *TINY,
        f"tracking.uri={stack.server.uri}",
        "sweep.name=drill",
    )
    line = one_error(proc)
    stack.refusals.append(f"reader (READ) resumes the sweep via CLI: exit 2 in {seconds:.0f}s")
    print(line)
    assert "READ permission" in line and "reader" in line
    after = len(stack.call("POST", "/api/2.0/mlflow/runs/search", admin, experiment_ids=[experiment_id]).json()["runs"])
    assert after == before and list((tmp_path / "mlruns").iterdir()) == []


@pytest.mark.slow
@needs_postgres
def test_a_reader_can_export(stack, swept, tmp_path):
    experiment_id, _, _ = swept
    stack.read_only(experiment_id)
    env = {k: v for k, v in os.environ.items() if k not in LOGIN} | stack.reader
    export = subprocess.run(
        [
            sys.executable,
            "-m",
            "moetune.cli.main",
            "export",
            "--experiment",
            "drill",
            "--tracking-uri",
            stack.server.uri,
            "--out",
            str(tmp_path / "export"),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    assert export.returncode == 0, export.stderr[-3000:]
    assert (tmp_path / "export" / "summary.md").is_file()
    assert "may only read it" in export.stdout  # the files stay on disk, and the user is told why


@pytest.mark.slow
@needs_postgres
def test_postgres_refuses_a_connection_without_the_password(stack, tmp_path, monkeypatch):
    db = stack.database
    monkeypatch.setenv("PGPASSFILE", str(tmp_path / "none"))
    monkeypatch.delenv("PGPASSWORD", raising=False)
    for user, password in (("mlflow", None), ("mlflow", "wrong"), ("postgres", None)):
        with pytest.raises(psycopg2.OperationalError) as refused:
            psycopg2.connect(
                host=db.host, port=db.port, user=user, dbname="mlflow", password=password, connect_timeout=5
            )
        reason = str(refused.value).strip().splitlines()[0].split("failed: ")[-1]
        stack.refusals.append(f"PostgreSQL as {user}, {'wrong' if password else 'no'} password: {reason}")
        print(stack.refusals[-1])
    proc, seconds = cli(tmp_path, {"PGPASSFILE": str(tmp_path / "none")}, f"tracking.uri={db.uri}", "sweep.name=db")
    line = one_error(proc)
    stack.refusals.append(f"sweep on the database URI without its password: exit 2 in {seconds:.1f}s")
    assert "refused the login" in line and "PGPASSFILE" in line and seconds < 10
    monkeypatch.setenv("PGPASSFILE", str(db.passfile))
    mlflow_access.check_database(db.uri)  # the owner's 0600 password file lets the mlflow role in


@pytest.mark.slow
@needs_postgres
def test_nothing_the_sweep_wrote_holds_a_credential(stack, swept):
    _, workdir, proc = swept
    secrets = [s for s in stack.server.secrets if s]
    assert len(secrets) >= 7  # two PostgreSQL roles, the admin, the session key, three users
    folders = [workdir, stack.server.artifacts]
    files = [p for folder in folders for p in folder.rglob("*") if p.is_file()] + [stack.server.folder / "server.log"]
    assert any(p.name == "config.yaml" for p in files) and any(".hydra" in p.parts for p in files)
    leaks = [str(p) for p in files for s in secrets if s.encode() in p.read_bytes()]
    leaks += [
        f"the sweep's {name}"
        for name, text in (("stdout", proc.stdout), ("stderr", proc.stderr))
        for s in secrets
        if s in text
    ]
    stack.refusals.append(
        f"credential search: {len(files)} files, stdout and stderr, {len(secrets)} secrets: {len(leaks)} found"
    )
    print(stack.refusals[-1])
    print("\n".join(stack.refusals))
    assert leaks == []
