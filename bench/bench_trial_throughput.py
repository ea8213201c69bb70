"""Training throughput of one movielens_cpu trial: this tree's training step against a baseline commit's.

The movielens_cpu model (16 experts 64 wide, embeddings 32, heads 64, dropout 0.5, batch 512, 80k training
rows of the shared MovieLens split), Top-k and Hash, local search off (the sparse path) and on (every
measured epoch inside the permutation phase: the dense path). Each measurement is a fresh worker process
with one thread, as the sweep driver runs a trial; the baseline's worker imports the package from a git
worktree of the baseline commit, and the two alternate in ABBA order (baseline, current, current, baseline,
...) so the machine's noise falls on both alike. In a fixed order the second one measured slower on this
machine: Hash off against a commit with the same step measured 0.87-0.92x in fixed order and 1.05x in
alternating order. `--concurrent 2` runs two copies of each worker at once, as a 2-core sweep runs two
trials.

Printed per gate and arm: training samples/s (the trainer's own figure: forward, backward and update
only), the ratio current / baseline, and the step's achieved FLOP/s (torch's FLOP counter over one
training step) against a plain matmul of similar size measured in the same worker.

    python bench/bench_trial_throughput.py                       # about 3 minutes on 2 cores
    python bench/bench_trial_throughput.py --baseline 42308fb --repeats 3 --concurrent 2
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data" / "movielens-comet"
BASELINE = "42308fb"  # the commit before the faster training step


def worker(gate: str, arm: str, epochs: int) -> dict:
    """One trial's training in this process (the package imported from PYTHONPATH): samples/s and FLOP/s."""
    import time

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    import moetune
    from moetune.config import GateConfig, LocalSearchConfig, ModelConfig, TrainConfig
    from moetune.data import load_dataset
    from moetune.training import Trainer

    torch.set_num_threads(1)
    data = load_dataset("movielens", path=str(DATA), max_rows=100000, seed=0)
    model = ModelConfig(
        n_experts=16, expert_hidden=[64], expert_dropout=0.5, embed_dim=32, dense_hidden=[], head_hidden=[64]
    )
    names = {f.name for f in dataclasses.fields(LocalSearchConfig)}
    ls = {"name": arm, "e_perm": epochs}
    if "enabled" in names:  # the baseline's config spelled the arm out
        ls["enabled"] = arm != "off"
    train = TrainConfig(lr=2e-4, batch_size=512, max_epochs=epochs, patience=epochs, seed=1, device="cpu")
    trainer = Trainer(data, model, GateConfig(gate, 2 if gate == "topk" else 1), LocalSearchConfig(**ls), train)
    result = trainer.fit()

    # FLOPs of one training step (forward, backward), as torch counts them, and the step's time
    split = trainer.splits["train"]
    batch = split.index(torch.arange(512))
    trainer.model.train()
    if trainer.model.local_search is not None:
        trainer.model.local_search.hardened = arm == "off"
    with FlopCounterMode(display=False) as counter:
        out = trainer.model(batch.inputs, batch.routing_ids)
        sum(o.float().pow(2).mean() for o in out.outputs).backward()
    step_flops = counter.get_total_flops()
    a, b = torch.randn(512, 512), torch.randn(512, 1024)
    for _ in range(3):
        a @ b
    start, reps = time.perf_counter(), 50
    for _ in range(reps):
        a @ b
    matmul_flops = 2 * 512 * 512 * 1024 * reps / (time.perf_counter() - start)
    step_flop_rate = step_flops * result.train_samples_per_second / 512
    return {
        "samples_per_s": result.train_samples_per_second,
        "flop_rate": step_flop_rate,
        "matmul": matmul_flops,
        "package": moetune.__file__,
    }


def worktree(commit: str) -> Path:
    """A checkout of the baseline commit (kept under the system temp folder between runs)."""
    path = Path(tempfile.gettempdir()) / f"moetune-bench-{commit}"
    if not (path / "src" / "moetune").exists():
        subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(path), commit], check=True)
    return path


def measure(src: Path, gate: str, arm: str, epochs: int, concurrent: int) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, __file__, "--worker", gate, arm, str(epochs)]
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True, cwd=REPO) for _ in range(concurrent)]
    out = []
    for p in procs:
        stdout, _ = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"worker failed for {src}: {gate} {arm}")
        run = json.loads(stdout.strip().splitlines()[-1])
        if not run["package"].startswith(str(src)):
            raise SystemExit(f"worker imported {run['package']}, not the package under {src}")
        out.append(run)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", default=BASELINE, help="commit to compare with (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=2, help="alternating measurements of each (default 2)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs per measurement (default 2)")
    parser.add_argument("--concurrent", type=int, default=1, help="workers at once, like sweep slots (default 1)")
    parser.add_argument("--gates", default="topk,hash", help="gates to measure (default %(default)s)")
    parser.add_argument("--arms", default="off,on", help="local-search arms to measure (default %(default)s)")
    parser.add_argument("--worker", nargs=3, metavar=("GATE", "ARM", "EPOCHS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        gate, arm, epochs = args.worker
        print(json.dumps(worker(gate, arm, int(epochs))))
        return
    sources = {"baseline": worktree(args.baseline) / "src", "current": REPO / "src"}
    print(f"movielens_cpu trial, 1 thread per worker, {args.concurrent} worker(s) at once, {args.repeats} alternating")
    print(f"repeats; baseline {args.baseline} vs this tree; samples/s = training steps only (median over runs)\n")
    print(f"{'gate':6} {'arm':4} {'baseline/s':>11} {'current/s':>10} {'ratio':>6}  {'step GFLOP/s':>12} {'matmul':>7}")
    for gate in args.gates.split(","):
        for arm in args.arms.split(","):
            runs: dict[str, list[dict]] = {"baseline": [], "current": []}
            for repeat in range(args.repeats):
                order = list(sources.items())
                for name, src in order if repeat % 2 == 0 else order[::-1]:
                    runs[name] += measure(src, gate, arm, args.epochs, args.concurrent)
            old = statistics.median(r["samples_per_s"] for r in runs["baseline"])
            new = statistics.median(r["samples_per_s"] for r in runs["current"])
            flops = statistics.median(r["flop_rate"] for r in runs["current"]) / 1e9
            matmul = statistics.median(r["matmul"] for r in runs["current"]) / 1e9
            print(f"{gate:6} {arm:4} {old:11.0f} {new:10.0f} {new / old:5.2f}x  {flops:12.2f} {matmul:7.1f}")


if __name__ == "__main__":
    main()
