"""The main command's wall time now against a baseline commit, run side by side on this machine.

``python train.py -m gate=topk,hash local_search=on,off`` runs verbatim, each time in a fresh scratch folder
(its own mlruns/ and sweeps/, so each run creates its MLflow store, as on a fresh clone), alternating
baseline and current tree N times in ABBA order: the machine's load drifts, so only runs side by side compare. The
baseline is a ``git worktree`` of the commit, imported through PYTHONPATH with this venv's Python (checked:
moetune and the launcher must come from the worktree). Wall = start to the process's exit, what a shell's
``time`` shows. The fixed costs come from the times the command's lines appear and the trial records:

- start: Python, imports, Hydra's main config (to the launcher's "N studies in one sweep driver" line);
- setup: the jobs' configs, planning, the MLflow store, Ray's start (to the driver's "sweep ...:" line);
- 1st trial: a slot's first trial, its record's duration minus the training it measured (the actor's
  start, the worker's imports, the first model), averaged over the slots; later: the same for the others;
- sweep: first trial's record to the last one's end; ideal: the trials' training seconds / slots;
- tail: last trial's end to the "done" lines (Tune's end, records closed);
- export: to the "export:" line; exit: to the process's exit (Ray's shutdown).

    python bench/bench_main_command.py              # 2 x (baseline, current): 4 runs of one to two minutes
    python bench/bench_main_command.py --reps 3 --baseline 42308fb
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[1]
MAIN_COMMAND = ["-m", "gate=topk,hash", "local_search=on,off"]
BASELINE = "42308fb"  # the commit before the fixed-cost work
SLOTS = 2  # tuner.concurrency of the default preset
COLUMNS = ("wall", "start", "setup", "1st trial", "later", "sweep", "ideal", "tail", "export", "exit")


def checkout(commit: str, folder: Path) -> Path:
    git = ["git", "worktree", "add", "--detach", str(folder), commit]
    subprocess.run(git, cwd=REPO, check=True, capture_output=True)
    return folder


def check_imports(tree: Path) -> None:
    """The tree's own package and launcher must be the ones imported (not the editable install's)."""
    code = "import moetune, hydra_plugins.moetune_launcher as l; print(moetune.__file__); print(l.__file__)"
    out = subprocess.run([sys.executable, "-c", code], env=_env(tree), capture_output=True, text=True, check=True)
    for path in out.stdout.split():
        if not Path(path).resolve().is_relative_to(tree.resolve()):
            sys.exit(f"{tree} imports {path}, not its own code")


def _env(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree / "src"), "PYTHONUNBUFFERED": "1"}


def run(tree: Path, scratch: Path, extra: tuple[str, ...] = ()) -> dict[str, float]:
    """One main command (plus ``extra`` overrides) in a fresh folder; its wall time and fixed costs (seconds)."""
    scratch.mkdir()
    (scratch / "mlruns").mkdir()
    lines: list[tuple[float, str]] = []
    started, epoch = time.perf_counter(), time.time()
    proc = subprocess.Popen(
        [sys.executable, str(tree / "train.py"), *MAIN_COMMAND, *extra],
        cwd=scratch,
        env=_env(tree),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )

    def read() -> None:
        for line in proc.stdout:
            lines.append((time.perf_counter() - started, line))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    proc.wait()
    wall = time.perf_counter() - started
    reader.join(timeout=10)
    if proc.returncode != 0:
        sys.exit(f"{tree} failed ({proc.returncode}):\n{''.join(line for _, line in lines)[-3000:]}")

    def at(test) -> float:
        return next(t for t, line in lines if test(line))

    client = MlflowClient(f"sqlite:///{scratch}/mlruns/mlflow.db")
    (experiment,) = [e for e in client.search_experiments() if e.name != "Default"]
    trials = client.search_runs([experiment.experiment_id], "tags.`moetune.role` = 'trial'", max_results=1000)
    trials.sort(key=lambda r: r.info.start_time)
    overhead = [(r.info.end_time - r.info.start_time) / 1000 - r.data.metrics["wall_seconds"] for r in trials]
    first_start = trials[0].info.start_time / 1000 - epoch
    last_end = max(r.info.end_time for r in trials) / 1000 - epoch
    done = at(lambda line: "] done:" in line)
    exported = at(lambda line: line.startswith("export:"))
    return {
        "wall": wall,
        "start": at(lambda line: "in one sweep driver" in line),
        "setup": at(lambda line: line.startswith("sweep ")) - at(lambda line: "in one sweep driver" in line),
        "1st trial": statistics.mean(overhead[:SLOTS]),
        "later": statistics.mean(overhead[SLOTS:]),
        "sweep": last_end - first_start,
        "ideal": sum(r.data.metrics["wall_seconds"] for r in trials) / SLOTS,
        "tail": done - last_end,
        "export": exported - done,
        "exit": wall - exported,
    }


def row(label: str, values: dict[str, float]) -> str:
    return f"{label:16}" + " ".join(f"{values[c]:9.2f}" for c in COLUMNS)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=2, help="runs of each tree, alternating (default 2)")
    parser.add_argument("--baseline", default=BASELINE, help=f"the commit to compare with (default {BASELINE})")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {"baseline": [], "current": []}
    with tempfile.TemporaryDirectory(prefix="bench-main-") as tmp:
        base = checkout(args.baseline, Path(tmp) / "baseline")
        try:
            trees = {"baseline": base, "current": REPO}
            for tree in trees.values():
                check_imports(tree)
            print(f"python train.py {' '.join(MAIN_COMMAND)}: baseline {args.baseline} vs current tree, seconds")
            print(f"{'run':16}" + " ".join(f"{c:>9}" for c in COLUMNS), flush=True)
            for rep in range(args.reps):
                order = list(trees.items())
                for label, tree in order if rep % 2 == 0 else order[::-1]:  # ABBA: no side always runs second
                    result = run(tree, Path(tmp) / f"{label}-{rep}")
                    results[label].append(result)
                    print(row(f"{label} {rep + 1}", result), flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(base)], cwd=REPO, capture_output=True)
    medians = {label: {c: statistics.median(r[c] for r in runs) for c in COLUMNS} for label, runs in results.items()}
    for label, medians_row in medians.items():
        print(row(f"{label} median", medians_row))
    old, new = medians["baseline"], medians["current"]
    print(row("ratio", {c: new[c] / old[c] if old[c] > 0 else float("nan") for c in COLUMNS}))
    pairs = zip(results["baseline"], results["current"], strict=True)
    each = ", ".join(f"{b['wall'] / a['wall']:.2f}" for a, b in pairs)
    print(f"main command, current/baseline: {new['wall'] / old['wall']:.2f} (medians; pair by pair {each})")
    print("target: <= 0.70")


if __name__ == "__main__":
    main()
