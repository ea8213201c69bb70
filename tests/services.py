"""Throwaway services for the scale-out tests, started the real way and removed afterwards: PostgreSQL 15
(initdb and pg_ctl, as the unprivileged ``postgres`` user when run as root), ``mlflow server`` on it with
served artifacts, and a two-node Ray cluster (``ray start --head`` plus ``ray start --address``), all
on loopback and free ports, each in its own temporary folder."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

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


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    """A PostgreSQL cluster with an empty ``mlflow`` database; yields its SQLAlchemy URI."""
    folder = Path(tempfile.mkdtemp(prefix="moetune-pg-"))
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres")
    port, data = free_port(), folder / "data"
    try:
        subprocess.run(
            _as_postgres([str(PG_BIN / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust", "-E", "UTF8"]),
            check=True,
            capture_output=True,
        )
        options = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1"
        subprocess.run(
            _as_postgres(
                [str(PG_BIN / "pg_ctl"), "-D", str(data), "-l", str(folder / "log"), "-o", options, "-w", "start"]
            ),
            check=True,
            capture_output=True,
        )
        subprocess.run(
            _as_postgres([str(PG_BIN / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "mlflow"]),
            check=True,
            capture_output=True,
        )
        yield f"postgresql+psycopg2://postgres@127.0.0.1:{port}/mlflow"
    finally:
        subprocess.run(
            _as_postgres([str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop"]), capture_output=True
        )
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(backend_uri: str, timeout: float = 120) -> Iterator[str]:
    """``mlflow server`` on the backend store, serving artifacts from a temporary folder; yields its URI."""
    folder = Path(tempfile.mkdtemp(prefix="moetune-mlflow-"))
    port = free_port()
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen(
        [
            str(BIN / "mlflow"),
            "server",
            "--backend-store-uri",
            backend_uri,
            "--artifacts-destination",
            str(folder / "artifacts"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "2",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + timeout
        while True:
            try:
                urllib.request.urlopen(uri + "/health", timeout=2)
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    log_text = (folder / "server.log").read_text()[-3000:]
                    raise RuntimeError("mlflow server did not start:\n" + log_text) from None
                time.sleep(0.5)
        yield uri
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
