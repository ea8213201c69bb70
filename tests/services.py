"""Throwaway services for the scale-out tests, started the real way and removed afterwards: PostgreSQL 15
(initdb and pg_ctl, as the unprivileged ``postgres`` user when run as root) with password authentication,
``mlflow server`` on it with MLflow's authentication app and served artifacts, and a two-node Ray cluster
(``ray start --head`` plus ``ray start --address``), all on loopback and free ports, each in its own
temporary folder. Passwords are random, and travel only through environment variables and 0600 files."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import requests

PG_BIN = Path("/usr/lib/postgresql/15/bin")
BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(args: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else args


def postgres_available() -> bool:
    return (PG_BIN / "initdb").exists()


def _secret_file(path: Path, text: str, owner: str | None = None) -> Path:
    """A file only its owner can read (0600), written without ever being readable by others."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    if owner:
        shutil.chown(path, owner)
    return path


@dataclasses.dataclass
class Database:
    """A PostgreSQL database owned by the ``mlflow`` role, which logs in with a password (scram-sha-256)."""

    uri: str  # SQLAlchemy URI without the password: libpq reads it from ``passfile`` (PGPASSFILE)
    host: str
    port: int
    passfile: Path  # 0600, the mlflow role's line only
    secrets: tuple[str, ...]  # every password set up, for the tests that look for leaks

    @property
    def env(self) -> dict[str, str]:
        return {"PGPASSFILE": str(self.passfile)}


@contextlib.contextmanager
def postgres() -> Iterator[Database]:
    """A PostgreSQL cluster that lets no one in without a password (initdb --auth=scram-sha-256, the
    superuser's password from a 0600 file), with a ``mlflow`` role that owns only its ``mlflow`` database."""
    import psycopg2

    folder = Path(tempfile.mkdtemp(prefix="moetune-pg-"))
    owner = "postgres" if os.geteuid() == 0 else None
    if owner:
        shutil.chown(folder, owner)
    port, data = free_port(), folder / "data"
    superuser_password, mlflow_password = secrets.token_urlsafe(24), secrets.token_urlsafe(24)
    pwfile = _secret_file(folder / "superuser.pw", superuser_password + "\n", owner)
    try:
        subprocess.run(
            _as_postgres(
                [str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=scram-sha-256"]
                + [f"--pwfile={pwfile}", "-E", "UTF8"]
            ),
            check=True,
            capture_output=True,
        )
        pwfile.unlink()
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
        subprocess.run(
            _as_postgres(
                [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-o", options, "-w", "start"]
            ),
            check=True,
            capture_output=True,
        )
        admin = psycopg2.connect(
            host="127.0.0.1", port=port, user="postgres", password=superuser_password, dbname="postgres"
        )
        admin.autocommit = True
        with admin.cursor() as cur:
            cur.execute("CREATE ROLE mlflow LOGIN PASSWORD %s", (mlflow_password,))
            cur.execute("CREATE DATABASE mlflow OWNER mlflow")
            cur.execute("REVOKE ALL ON DATABASE mlflow FROM PUBLIC")
        admin.close()
        passfile = _secret_file(folder / "pgpass", f"127.0.0.1:{port}:mlflow:mlflow:{mlflow_password}\n")
        yield Database(
            f"postgresql+psycopg2://mlflow@127.0.0.1:{port}/mlflow",
            "127.0.0.1",
            port,
            passfile,
            (superuser_password, mlflow_password),
        )
    finally:
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True
        )
        shutil.rmtree(folder, ignore_errors=True)


@dataclasses.dataclass
class Server:
    """A running ``mlflow server --app-name basic-auth``; strangers get no permission on others' experiments."""

    uri: str
    folder: Path  # its log, artifacts and auth database
    admin: tuple[str, str]
    secrets: list[str]  # every password and key it was given or gave out, for leak checks

    @property
    def artifacts(self) -> Path:
        return self.folder / "artifacts"

    def _admin_call(self, path: str, body: dict) -> None:
        answer = requests.post(self.uri + path, json=body, auth=self.admin, timeout=30)
        answer.raise_for_status()

    def add_user(self, username: str) -> dict[str, str]:
        """A new, non-admin user; returns the environment a client of that user sets (MLflow's own variables)."""
        password = secrets.token_urlsafe(18)
        self.secrets.append(password)
        self._admin_call("/api/2.0/mlflow/users/create", {"username": username, "password": password})
        return {"MLFLOW_TRACKING_USERNAME": username, "MLFLOW_TRACKING_PASSWORD": password}

    def grant(self, username: str, experiment_id: str, permission: str) -> None:
        self._admin_call(
            "/api/3.0/mlflow/users/permissions/grant",
            {
                "username": username,
                "resource_type": "experiment",
                "resource_id": experiment_id,
                "permission": permission,
            },
        )


AUTH_INI = """[mlflow]
default_permission = NO_PERMISSIONS
database_uri = sqlite:///{folder}/auth.db
admin_username = admin
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
"""


@contextlib.contextmanager
def mlflow_server(database: Database, timeout: float = 120, workers: int = 2) -> Iterator[Server]:
    """``mlflow server`` with MLflow's authentication app on the database, serving artifacts from a temporary
    folder. The admin's password, the session key and the database password reach it through its
    environment and 0600 files, never its command line."""
    folder = Path(tempfile.mkdtemp(prefix="moetune-mlflow-"))
    port = free_port()
    admin = ("admin", secrets.token_urlsafe(18))
    secret_key = secrets.token_urlsafe(32)
    env = {
        **os.environ,
        **database.env,
        "MLFLOW_AUTH_CONFIG_PATH": str(_secret_file(folder / "auth.ini", AUTH_INI.format(folder=folder))),
        "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],  # sets the admin's password when the auth database is created
        "MLFLOW_FLASK_SERVER_SECRET_KEY": secret_key,
    }
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_URI"):
        env.pop(name, None)
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--app-name",
            "basic-auth",
            "--backend-store-uri",
            database.uri,
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    server = Server(uri, folder, admin, [*database.secrets, admin[1], secret_key])
    try:
        deadline = time.time() + timeout
        while True:
            try:  # /health answers before the auth app is ready: wait for a signed-in call
                answer = requests.get(uri + "/api/2.0/mlflow/users/current", auth=admin, timeout=2)
                if answer.status_code == 200:
                    break
            except requests.RequestException:
                pass
            if proc.poll() is not None or time.time() > deadline:
                log_text = (folder / "server.log").read_text()[-3000:]
                raise RuntimeError("mlflow server did not start:\n" + log_text) from None
            time.sleep(0.5)
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
        log.close()
        shutil.rmtree(folder, ignore_errors=True)


class RayCluster:
    """A head node and a worker node, each a ``ray start`` with its own CPUs and temporary folder."""

    def __init__(self, cpus_per_node: int = 1):
        self.cpus, self.port = cpus_per_node, free_port()
        self.folders: list[Path] = []
        self.env = {**os.environ, "RAY_AUTH_MODE": "token"}  # `ray start --head` turns token auth on

    @property
    def address(self) -> str:
        return f"{socket.gethostbyname(socket.gethostname())}:{self.port}"

    def _start(self, *args: str) -> Path:
        folder = Path(tempfile.mkdtemp(prefix="moetune-ray-"))
        self.folders.append(folder)
        subprocess.run(
            [
                str(BIN / "ray"),
                "start",
                *args,
                f"--num-cpus={self.cpus}",
                "--num-gpus=0",
                "--disable-usage-stats",
                f"--temp-dir={folder}",
            ],
            check=True,
            capture_output=True,
            env=self.env,
            timeout=120,
        )
        return folder

    def start(self) -> RayCluster:
        self._start("--head", f"--port={self.port}", "--include-dashboard=false")
        self._start(f"--address={self.address}")
        return self

    def worker_raylet_pid(self) -> int:
        """The worker node's raylet (its temporary folder is the second one)."""
        out = subprocess.run(["pgrep", "-f", f"raylet.*{self.folders[1]}"], capture_output=True, text=True)
        return int(out.stdout.split()[0])

    def stop(self) -> None:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, env=self.env, timeout=120)
        for folder in self.folders:
            shutil.rmtree(folder, ignore_errors=True)
