"""Platform overhead of a study: its wall time against the ideal (sum of the trials' own training time
divided by the concurrent slots), for short and longer trials, and the throughput of 2 slots against 1.

Runs real studies through train.py (Hydra -> Ray Tune -> MLflow) in a scratch folder and reads the
timings back from MLflow: the study's wall time is its parent run's start-to-end (tuning only, after
Ray has started); a trial's own time is the wall_seconds its trainer measured.

    python bench/bench_platform.py            # about 4 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]

# (label, overrides) giving trials of about 1 s and about 5 s of training on this machine
TRIAL_SIZES = {
    "~1s": ["dataset.n_samples=8000", "train.max_epochs=6", "train.patience=6"],
    "~5s": ["dataset.n_samples=25000", "train.max_epochs=14", "train.patience=14"],
}


def run_study(workdir: Path, name: str, n_trials: int, concurrency: int, overrides: list[str]) -> dict:
    args = [
        sys.executable,
        str(REPO / "train.py"),
        f"sweep.name={name}",
        f"tuner.n_trials={n_trials}",
        f"tuner.concurrency={concurrency}",
        "search_space.train.lr.low=0.001",
        "search_space.train.lr.high=0.003",
        *overrides,
    ]
    proc = subprocess.run(args, cwd=workdir, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"study {name} failed:\n{proc.stderr[-2000:]}")
    client = MlflowClient(f"sqlite:///{workdir}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id])
    parent = next(r for r in runs if r.data.tags.get("moetune.role") == "study")
    trials = [r for r in runs if r.data.tags.get("moetune.role") == "trial"]
    wall = (parent.info.end_time - parent.info.start_time) / 1000
    busy = sum(r.data.metrics["wall_seconds"] for r in trials)
    return {"wall": wall, "busy": busy, "trials": len(trials), "ideal": busy / concurrency}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=16)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "mlruns").mkdir()
        rows = {}
        for label, overrides in TRIAL_SIZES.items():
            for slots in (1, 2):
                rows[(label, slots)] = run_study(workdir, f"bench-{label[1:]}-{slots}", args.trials, slots, overrides)
    print(
        f"{'trials':>7} {'slots':>5} {'n':>3} {'mean trial s':>12} "
        f"{'ideal s':>8} {'wall s':>7} {'wall/ideal':>10} {'trials/min':>10}"
    )
    for (label, slots), r in rows.items():
        print(
            f"{label:>7} {slots:>5} {r['trials']:>3} {r['busy'] / r['trials']:>12.2f} {r['ideal']:>8.1f} "
            f"{r['wall']:>7.1f} {r['wall'] / r['ideal']:>10.2f} {60 * r['trials'] / r['wall']:>10.1f}"
        )
    for label in TRIAL_SIZES:
        one, two = rows[(label, 1)], rows[(label, 2)]
        print(
            f"{label} trials: throughput with 2 slots / 1 slot = {one['wall'] / two['wall']:.2f}x "
            f"(ideal 2x; each trial's own time grows {two['busy'] / one['busy']:.2f}x when two share 2 cores)"
        )
    five = rows[("~5s", 2)]
    verdict = "met" if five["wall"] <= 1.10 * five["ideal"] else "NOT met"
    print(f"target: ~5s trials, 2 slots, wall within 10% of ideal: {five['wall'] / five['ideal']:.2f}x -> {verdict}")


if __name__ == "__main__":
    main()
