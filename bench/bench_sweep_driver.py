"""The default main job (``python train.py -m gate=topk,hash local_search=on,off``) run by the sweep driver
(all four studies at once on one Ray instance) and, in the same run, by the sequential baseline (Hydra's
basic launcher: one study after another, each its own Tune run), against the ideal.

Ideal = the trials' own seconds divided by the slots (tuner.concurrency), two ways: "training" counts the
wall_seconds each trainer measured (its epochs and evaluations only); "trial" counts each trial's run in
the store, from its record before it starts to its end (adds the trial actor's start, the model's
construction, reporting). Sweep wall = first trial's start to last trial's end (tuning only); command =
the whole ``python train.py`` process (Hydra, planning, Ray start-up, export). The store is created before
either runs, so neither pays MLflow's first-time table creation.

    python bench/bench_sweep_driver.py            # about 4 minutes on 2 cores (two main jobs)
    python bench/bench_sweep_driver.py --quick    # smaller trials, about 1 minute
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
MAIN_JOB = ["-m", "gate=topk,hash", "local_search=on,off"]
DRIVERS = {"sweep driver": [], "sequential (basic launcher)": ["hydra/launcher=basic"]}
SLOTS = 2  # tuner.concurrency of the default preset


def run(workdir: Path, name: str, extra: list[str]) -> dict[str, float]:
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(REPO / "train.py"), *MAIN_JOB, *extra, f"sweep.name={name}"],
        cwd=workdir,
        capture_output=True,
        text=True,
    )
    command = time.perf_counter() - started
    if proc.returncode != 0:
        sys.exit(f"{name} failed:\n{proc.stderr[-3000:]}")
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name(name)
    trials = client.search_runs([exp.experiment_id], "tags.`moetune.role` = 'trial'", max_results=1000)
    training = sum(t.data.metrics["wall_seconds"] for t in trials)
    trial = sum(t.info.end_time - t.info.start_time for t in trials) / 1000
    sweep = (max(t.info.end_time for t in trials) - min(t.info.start_time for t in trials)) / 1000
    return {
        "trials": len(trials),
        "training": training / SLOTS,
        "trial": trial / SLOTS,
        "sweep": sweep,
        "command": command,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tuner.n_trials=8, smaller data")
    args = parser.parse_args()
    extra = ["tuner.n_trials=8", "dataset.n_samples=2000"] if args.quick else []
    with tempfile.TemporaryDirectory(prefix="bench-driver-") as tmp:
        workdir = Path(tmp)
        (workdir / "mlruns").mkdir()
        MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db").search_experiments()  # creates the store's tables
        results = {}
        for index, (label, launcher) in enumerate(DRIVERS.items()):
            results[label] = run(workdir, f"bench{index}", [*launcher, *extra])
    print(f"default main job{' (--quick)' if args.quick else ''}, {SLOTS} slots; ideal = own seconds / slots")
    header = ("trials", "ideal train", "ideal trial", "sweep s", "command s")
    ratios = ("sweep/train", "cmd/train", "sweep/trial", "cmd/trial")
    print(f"{'driver':28} " + " ".join(f"{h:>11}" for h in header + ratios))
    for label, r in results.items():
        figures = [r["trials"], r["training"], r["trial"], r["sweep"], r["command"]]
        figures += [r["sweep"] / r["training"], r["command"] / r["training"]]
        figures += [r["sweep"] / r["trial"], r["command"] / r["trial"]]
        print(f"{label:28} " + " ".join(f"{f:11.2f}" for f in figures))
    new, old = results["sweep driver"], results["sequential (basic launcher)"]
    print(
        f"sweep driver vs sequential: sweep {old['sweep'] / new['sweep']:.2f}x, "
        f"command {old['command'] / new['command']:.2f}x faster"
    )
    print("targets (sweep driver): sweep/ideal <= 1.10, command/ideal <= 1.30")


if __name__ == "__main__":
    main()
