"""The scale-out setup on one machine, started the real way, then a demo sweep against it, then stopped:
PostgreSQL 15 with password authentication, ``mlflow server`` on it with MLflow's authentication app and
served artifacts, and a two-node Ray cluster (``ray start``). The sweep signs in as a user of its own.

    python scripts/scale_out_demo.py                # about 2 minutes on 2 cores

Each service is started as docs/scale-out.md describes for real machines, on loopback and free ports."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from services import RayCluster, mlflow_server, postgres  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=8, help="tuner.n_trials per study")
    args = parser.parse_args()
    cluster = RayCluster(cpus_per_node=1)
    with postgres() as database, mlflow_server(database) as server:
        login = server.add_user("sweeper")  # MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD
        print(f"PostgreSQL: {database.uri} (password in a 0600 PGPASSFILE)", flush=True)
        print(f"MLflow server: {server.uri} (basic-auth; the sweep signs in as 'sweeper')", flush=True)
        cluster.start()
        try:
            print(f"Ray cluster: head {cluster.address} + 1 worker node, 1 CPU each", flush=True)
            command = [
                sys.executable,
                str(REPO / "train.py"),
                "-m",
                "gate=topk,hash",
                "local_search=on,off",
                f"tuner.n_trials={args.trials}",
                "search_space.local_search.e_perm.high=2",
                "dataset.n_samples=1500",
                "train.max_epochs=4",
                f"tuner.ray_address={cluster.address}",
                f"tracking.uri={server.uri}",
                "sweep.name=scale-out-demo",
            ]
            print("$ " + " ".join(command[1:]), flush=True)
            env = {**os.environ, **login, "RAY_AUTH_MODE": "token"}
            result = subprocess.run(command, cwd=REPO, env=env)
            if result.returncode != 0:
                sys.exit(result.returncode)
        finally:
            cluster.stop()


if __name__ == "__main__":
    main()
