"""Benchmark of the MoE layer (gate + experts + mixing), forward + backward, on CPU.

    python bench/bench_moe_layer.py            # 20-30 s on 2 quiet cores, ~100 s at most when re-measuring
    python bench/bench_moe_layer.py --quick    # fewer repeats, no re-measuring
    python bench/bench_moe_layer.py --against 42308fb   # [3] also for that commit's package, alternating

--against COMMIT measures section [3] (dense and sparse at the large batch) in fresh worker processes that
alternate (ABBA) between that commit's package (a git worktree) and this tree's, and prints both side by side:
the sparse speed-up is a ratio of two paths that both change, so a speed-up below its target can come from
a faster dense path as well as from a slower sparse one.

MovieLens shape: batch 512, 16 MLP experts 256 -> 256 (MLPExperts(16, 256, [256])), input dim 256,
k = 2 (hash: k = 1), one task (and two tasks for topk). Every timing is a median over repeats that are
interleaved round-robin with the timings they are compared to (the machine is shared, so load drifts),
after a warm-up; time.perf_counter. Backward gets fixed dense upstream gradients, as from task heads.

FLOPs counted (expert layers only, gate and mixing not counted): 2 * rows * d_in * d_out per expert layer
forward, x3 for forward + backward; dense: rows = batch * n_experts; sparse: rows = routed (sample, expert)
pairs. The reference is a square float32 torch.matmul, forward only, measured in the same rounds:
2048 x 2048 by default (on 2 cores 4096 x 4096 takes ~0.75 s a call and reaches the same GFLOP/s).
Rows measured while other processes took more than NOISY of the CPUs are measured again (--tries);
contention that /proc/stat cannot see (other VMs on the host) shows as a lower matmul figure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from moetune.moe.experts import MLPExperts, mix, soft_mix
from moetune.moe.gates import build_gate

N_EXPERTS, D_IN, WIDTH = 16, 256, 256
N_ROUTING_IDS = 6040  # MovieLens-1M users
DENSE_TARGET = 0.60  # dense fwd+bwd GFLOP/s / matmul GFLOP/s
SPARSE_TARGET = 6.0  # top-2-of-16 sparse vs dense speed-up at the large batch
NOISY = 0.05  # other processes' CPU share above which a section's figures are flagged


def interleaved(fns: dict, repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median seconds per call of each fn, the fns run `repeats` rounds after `warmup` calls each, in a new
    (seeded) order each round: a call pays for the allocator and cache state the previous one left, and
    in a fixed order each fn would always follow the same one (measured: up to 10% for the dense rows)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    order = random.Random(0)
    for _ in range(repeats):
        for name in order.sample(list(fns), len(fns)):
            fn = fns[name]
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def load_average() -> str:
    try:
        return " ".join(open("/proc/loadavg").read().split()[:3])
    except OSError:
        return "n/a"


class OtherLoad:
    """Share of the machine's CPU time used by other processes over a stretch of this run (Linux
    /proc/stat busy time minus this process's CPU time); None where /proc/stat is not readable."""

    def __init__(self):
        self.start = self._sample()

    @staticmethod
    def _sample():
        try:
            fields = [int(v) for v in open("/proc/stat").readline().split()[1:9]]
        except (OSError, ValueError):
            return None
        busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
        return busy / os.sysconf("SC_CLK_TCK"), time.process_time(), time.perf_counter()

    def share(self) -> float | None:
        end = self._sample()
        if self.start is None or end is None:
            return None
        busy, own, wall = (b - a for a, b in zip(self.start, end, strict=False))
        return max(0.0, busy - own) / (wall * (os.cpu_count() or 1))


def noise_note(share: float | None) -> str:
    if share is None:
        return "other load unknown"
    return f"other load {share:.0%}" + (" -- NOISY" if share > NOISY else "")


def matmul_fn(size: int):
    a, b = torch.randn(size, size), torch.randn(size, size)
    return lambda: torch.matmul(a, b), 2.0 * size**3


def expert_flops(rows: int) -> float:
    return 3 * 2.0 * rows * D_IN * WIDTH


# ---- dense expert-layer formulations (fixed mixing weights, one task) -----------------------------------


class Baselines:
    """The dense layer relu(x W_i + b_i) mixed by g, written three plain ways, on the same weights."""

    def __init__(self, experts: MLPExperts):
        self.w = experts.expert_weight(0).detach().contiguous().requires_grad_()  # n x d_in x d_out
        self.b = experts.biases[0].detach().clone().requires_grad_()

    def einsum(self, x, g):
        h = F.relu(torch.einsum("bd,ndo->bno", x, self.w) + self.b)
        return torch.einsum("bn,bno->bo", g, h)

    def bmm(self, x, g):
        h = F.relu(torch.bmm(x.unsqueeze(0).expand(N_EXPERTS, -1, -1), self.w).transpose(0, 1) + self.b)
        return torch.bmm(g.unsqueeze(1), h).squeeze(1)

    def fused_permute(self, x, g):
        """The previous moetune dense path: one matmul on a permuted copy of the weight, bmm mixing."""
        n, d_in, d_out = self.w.shape
        h = F.relu((x @ self.w.permute(1, 0, 2).reshape(d_in, n * d_out)).view(-1, n, d_out) + self.b)
        return torch.bmm(g.unsqueeze(1), h).squeeze(1)


def upstream(batch: int, tasks: int) -> list[torch.Tensor]:
    """Fixed dense gradients from the task heads (a bare .sum() loss would hand the layer an expanded,
    zero-stride gradient, which no real head produces and which pushes torch.bmm onto a per-sample loop)."""
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(batch, WIDTH, generator=generator) for _ in range(tasks)]


def fwd_bwd(forward, params, grads):
    def step():
        for p in params:
            p.grad = None
        torch.autograd.backward(forward(), grads)

    return step


def saturate(gate, scale: float = 100.0) -> None:
    """Push DSelect-k / COMET selectors out of the smooth-step band (what entropy regularization does
    during training), so their weights become k-sparse; routing still depends on the input."""
    linear = getattr(gate, "selector_logits", None) or getattr(gate, "node_logits", None)
    with torch.no_grad():
        torch.nn.init.normal_(linear.weight, 0.0, scale / D_IN**0.5)
        torch.nn.init.zeros_(linear.bias)


def gate_layer(name: str, tasks: int, batch: int, saturated: bool = False):
    """(step(sparse) -> None, routed rows) for gate(s) + experts + mixing at `batch`."""
    torch.manual_seed(0)
    experts = MLPExperts(N_EXPERTS, D_IN, [WIDTH])
    params = {"n_routing_ids": N_ROUTING_IDS} if name == "hash" else {}
    k = 1 if name == "hash" else 2
    gates = [build_gate(name, D_IN, N_EXPERTS, k=k, **params) for _ in range(tasks)]
    if saturated:
        for gate in gates:
            saturate(gate)
    x = torch.randn(batch, D_IN, requires_grad=True)
    routing_ids = torch.randint(0, N_ROUTING_IDS, (batch,))
    leaves = [x, *experts.parameters(), *(p for g in gates for p in g.parameters())]

    grads = upstream(batch, tasks)

    def step(sparse: bool) -> None:
        for p in leaves:
            p.grad = None
        outs = [g(x, routing_ids) for g in gates]
        if sparse and outs[0].slots is not None:  # Soft MoE: the experts run on its T * n * p slots only
            mixed = soft_mix(experts, x, [o.slots for o in outs], torch.eye(N_EXPERTS), hard=True)
        else:
            mixed = mix(experts, x, [o.weights for o in outs], sparse)
        aux = [o.aux_loss for o in outs if o.aux_loss.requires_grad]
        torch.autograd.backward([*mixed, *aux], [*grads, *(torch.ones_like(a) for a in aux)])

    with torch.no_grad():
        outs = [g(x, routing_ids) for g in gates]
    if outs[0].slots is not None:
        return step, tasks * N_EXPERTS * outs[0].slots.slots_per_expert  # rows the experts run: the slots
    rows = int(torch.stack([o.weights for o in outs]).ne(0).any(0).sum())
    return step, rows


def steady(measure, deadline: float, tries: int):
    """Run measure() -> result; while other processes took more than NOISY of the CPUs and time is left,
    run it again (up to `tries` times); return (least disturbed result, its other-load share)."""
    best = None
    for _ in range(tries):
        load = OtherLoad()
        result = measure()
        share = load.share()
        if best is None or (share is not None and (best[1] is None or share < best[1])):
            best = (result, share)
        if share is None or share <= NOISY or time.perf_counter() > deadline:
            break
    return best


def large_batch(batch: int, reps: int) -> dict[str, float]:
    """Section [3]'s measurement: median seconds of the top-2 layer's dense and sparse steps at `batch`."""
    step, _ = gate_layer("topk", 1, batch)
    return interleaved({"dense": lambda: step(False), "sparse": lambda: step(True)}, reps, warmup=1)


def against(commit: str, batch: int, rounds: int, threads: int) -> None:
    """Section [3] for `commit`'s package and this tree's, in worker processes that alternate."""
    from bench_trial_throughput import worktree

    sources = {commit: worktree(commit) / "src", "this tree": Path(__file__).resolve().parents[1] / "src"}
    runs: dict[str, list[dict]] = {name: [] for name in sources}
    for repeat in range(rounds):
        order = list(sources.items())
        for name, src in order if repeat % 2 == 0 else order[::-1]:  # ABBA: no side always runs second
            env = {**os.environ, "PYTHONPATH": str(src)}
            cmd = [sys.executable, __file__, "--worker", str(batch), "--threads", str(threads)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
            runs[name].append(json.loads(out.strip().splitlines()[-1]))
    print(
        f"\n[3] against {commit}: topk k=2, 1 task, batch {batch}, {rounds} alternating worker processes each "
        f"(medians over them of each worker's median)"
    )
    print(f"  {'package':12s} {'dense ms':>9s} {'sparse ms':>9s} {'speed-up':>8s}")
    medians = {}
    for name, rs in runs.items():
        dense = statistics.median(r["dense"] for r in rs)
        sparse = statistics.median(r["sparse"] for r in rs)
        medians[name] = (dense, sparse)
        print(f"  {name:12s} {dense * 1e3:9.2f} {sparse * 1e3:9.2f} {dense / sparse:7.2f}x")
    (old_dense, old_sparse), (new_dense, new_sparse) = medians[commit], medians["this tree"]
    print(
        f"  this tree vs {commit}: dense path {old_dense / new_dense:.2f}x as fast, sparse path "
        f"{old_sparse / new_sparse:.2f}x as fast"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=512, help="batch for the dense-efficiency and per-gate tables")
    parser.add_argument("--sparse-batch", type=int, default=4096, help="batch for the top-2 sparse vs dense speed-up")
    parser.add_argument(
        "--threads", type=int, default=os.cpu_count(), help="torch.set_num_threads (default: all cores)"
    )
    parser.add_argument(
        "--matmul-size", type=int, default=2048, help="square float32 matmul used as the peak reference"
    )
    parser.add_argument("--quick", action="store_true", help="fewer repeats, no re-measuring (noisier)")
    parser.add_argument(
        "--tries",
        type=int,
        default=3,
        help="measure a table row again, up to this many times, while other processes disturb it",
    )
    parser.add_argument(
        "--budget", type=float, default=100.0, help="seconds after which disturbed rows are no longer re-measured"
    )
    parser.add_argument("--against", metavar="COMMIT", help="also measure section [3] with this commit's package")
    parser.add_argument("--rounds", type=int, default=4, help="alternating worker processes each for --against")
    parser.add_argument("--worker", type=int, metavar="BATCH", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        torch.set_num_threads(args.threads)
        print(json.dumps(large_batch(args.worker, 9)))
        return 0

    started = time.perf_counter()
    deadline = started + args.budget
    tries = 1 if args.quick else args.tries
    torch.set_num_threads(args.threads)
    reps = 7 if args.quick else 25
    big_reps = 3 if args.quick else 9
    print(
        f"torch {torch.__version__}, torch.get_num_threads() = {torch.get_num_threads()} (cores: {os.cpu_count()}), "
        f"load average {load_average()}"
    )
    print(
        f"shape: batch {args.batch}, {N_EXPERTS} experts {D_IN} -> {WIDTH} (one hidden layer), float32, train mode, "
        f"forward + backward; medians of {reps} interleaved repeats; 'other' = CPU share other processes took "
        f"while a row was measured (rows above {NOISY:.0%} are re-measured, up to {tries}x)"
    )
    shares = []

    # ---- 1. dense expert layer vs a large matmul ------------------------------------------------------------
    torch.manual_seed(0)
    experts = MLPExperts(N_EXPERTS, D_IN, [WIDTH])
    base = Baselines(experts)
    x = torch.randn(args.batch, D_IN, requires_grad=True)
    g = torch.softmax(torch.randn(args.batch, N_EXPERTS), -1).requires_grad_()
    mm, mm_flops = matmul_fn(args.matmul_size)
    common, grads = [x, g], upstream(args.batch, 1)
    rows = {
        "einsum (baseline)": fwd_bwd(lambda: [base.einsum(x, g)], [*common, base.w, base.b], grads),
        "bmm (baseline)": fwd_bwd(lambda: [base.bmm(x, g)], [*common, base.w, base.b], grads),
        "fused matmul, permute per call (previous)": fwd_bwd(
            lambda: [base.fused_permute(x, g)], [*common, base.w, base.b], grads
        ),
        "moetune mix(dense)": fwd_bwd(
            lambda: mix(experts, x, [g], sparse=False), [*common, *experts.parameters()], grads
        ),
        "matmul": mm,
    }
    t, share = steady(lambda: interleaved(rows, reps), deadline, tries)
    shares.append(share)
    peak = mm_flops / t.pop("matmul") / 1e9
    flops = expert_flops(args.batch * N_EXPERTS)
    print(
        f"\n[1] dense expert layer (+ mixing, fixed weights) vs torch.matmul {args.matmul_size}x{args.matmul_size} "
        f"@ {args.matmul_size}x{args.matmul_size} float32 forward = {peak:.1f} GFLOP/s ({noise_note(share)})"
    )
    print(f"{'formulation':44s} {'ms':>8s} {'samples/s':>10s} {'GFLOP/s':>8s} {'% matmul':>9s}")
    for name, sec in t.items():
        gf = flops / sec / 1e9
        mark = ""
        if name.startswith("moetune"):
            mark = f"  target >= {DENSE_TARGET:.0%}: {'PASS' if gf / peak >= DENSE_TARGET else 'FAIL'}"
        print(f"{name:44s} {sec * 1e3:8.2f} {args.batch / sec:10.0f} {gf:8.1f} {gf / peak:9.1%}{mark}")
    dense_fraction = flops / t["moetune mix(dense)"] / 1e9 / peak
    over_bmm = t["bmm (baseline)"] / t["moetune mix(dense)"]
    verdict = "PASS" if over_bmm >= 1 else "FAIL"
    print(f"moetune mix(dense) vs bmm (baseline): {over_bmm:.2f}x   target >= 1x: {verdict}")

    # ---- 2. per gate: gate + experts + mixing, dense vs sparse compute ------------------------------------
    print(
        f"\n[2] gate + experts + mixing at batch {args.batch}: dense path (all {N_EXPERTS} experts) vs sparse path "
        f"(routed rows only; Soft MoE: its slots); GFLOP/s of the expert layer; act = expert rows run per sample"
    )
    print(
        f"{'gate':22s} {'T':>2s} {'act':>5s} {'dense ms':>9s} "
        f"{'sparse ms':>9s} {'dense smp/s':>11s} {'sparse smp/s':>12s} "
        f"{'speed-up':>8s} {'dense GF/s':>10s} {'sparse GF/s':>11s} {'other':>6s}"
    )
    configs = [
        ("softmax", 1, False),
        ("topk", 1, False),
        ("topk", 2, False),
        ("hash", 1, False),
        ("dselect_k", 1, False),
        ("dselect_k", 1, True),
        ("comet", 1, False),
        ("comet", 1, True),
        ("xmoe", 1, False),
        ("expert_choice", 1, False),
        ("usmoe", 1, False),
        ("soft_moe", 1, False),
    ]
    for name, tasks, saturated in configs:
        step, routed = gate_layer(name, tasks, args.batch, saturated)
        t, share = steady(
            lambda step=step: interleaved({"dense": lambda: step(False), "sparse": lambda: step(True)}, reps),
            deadline,
            tries,
        )
        shares.append(share)
        label = name + (" (saturated)" if saturated else "")
        print(
            f"{label:22s} {tasks:2d} {routed / args.batch:5.2f} {t['dense'] * 1e3:9.2f} {t['sparse'] * 1e3:9.2f} "
            f"{args.batch / t['dense']:11.0f} {args.batch / t['sparse']:12.0f} {t['dense'] / t['sparse']:7.2f}x "
            f"{expert_flops(args.batch * N_EXPERTS) / t['dense'] / 1e9:10.1f} "
            f"{expert_flops(routed) / t['sparse'] / 1e9:11.1f} "
            f"{'n/a' if share is None else f'{share:.0%}':>6s}"
        )

    # ---- 3. top-2-of-16 sparse vs dense at a large batch --------------------------------------------------
    step, routed = gate_layer("topk", 1, args.sparse_batch)
    t, share = steady(
        lambda: interleaved(
            {"dense": lambda: step(False), "sparse": lambda: step(True), "matmul": mm}, big_reps, warmup=1
        ),
        deadline,
        tries,
    )
    shares.append(share)
    peak_big = mm_flops / t["matmul"] / 1e9
    speedup = t["dense"] / t["sparse"]
    print(
        f"\n[3] topk k=2, 1 task, batch {args.sparse_batch} (ideal "
        f"speed-up {N_EXPERTS * args.sparse_batch / routed:.1f}x "
        f"from routed rows; matmul {peak_big:.1f} GFLOP/s in these rounds, medians of {big_reps}; {noise_note(share)})"
    )
    for name in ("dense", "sparse"):
        r = args.sparse_batch * N_EXPERTS if name == "dense" else routed
        gf = expert_flops(r) / t[name] / 1e9
        print(
            f"  {name:7s} {t[name] * 1e3:9.2f} ms {args.sparse_batch / t[name]:9.0f} "
            f"samples/s {gf:7.1f} GFLOP/s ({gf / peak_big:.0%} of matmul)"
        )
    print(
        f"  sparse speed-up {speedup:.2f}x   target >= {SPARSE_TARGET:.0f}x: "
        f"{'PASS' if speedup >= SPARSE_TARGET else 'FAIL'}"
    )

    if args.against:
        against(args.against, args.sparse_batch, args.rounds, args.threads)

    print(
        f"\nsummary: dense fwd+bwd at batch {args.batch} = {dense_fraction:.0%} of matmul (target {DENSE_TARGET:.0%}: "
        f"{'PASS' if dense_fraction >= DENSE_TARGET else 'FAIL'}), {over_bmm:.2f}x bmm's (target 1x: "
        f"{'PASS' if over_bmm >= 1 else 'FAIL'}); top-2 sparse speed-up at batch {args.sparse_batch} = "
        f"{speedup:.2f}x (target {SPARSE_TARGET:.0f}x: {'PASS' if speedup >= SPARSE_TARGET else 'FAIL'}); "
        f"{time.perf_counter() - started:.0f} s"
    )
    if any(share is not None and share > NOISY for share in shares):
        print("WARNING: other processes took CPU time while some rows were measured; those figures are not reliable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
