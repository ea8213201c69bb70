"""What early stopping does inside a sweep that ran scheduler=asha,none with the same seeds (docs/early-stopping.md).

Trial n of an ASHA study and of its full-length twin (scheduler=none, same gate, arm and seed) draw the same
hyperparameters and training seed, so they can be compared trial by trial. Prints, from the MLflow store:
the stop profile per gate, arm and scheduler; per full-length study, its winner (by best_val_loss), the
winner's rank by val_loss at each rung among the study's trials, and what ASHA did with the same trial; the
on - off difference of val_loss at each rung over the full-length pairs (seed, trial n), with a paired
bootstrap 90% interval (2000 resamples, seed 0); and ASHA's stops per rung and arm.

    python scripts/early_stopping_rungs.py --tracking-uri sqlite:///mlruns/mlflow.db --experiment asha-synthetic
    python scripts/early_stopping_rungs.py --experiment movielens-asha --rungs 1,3,9,27,81 --max-epochs 100
"""

import argparse
import math

import mlflow
import numpy as np

ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("--tracking-uri", default="sqlite:///mlruns/mlflow.db")
ap.add_argument("--experiment", default="asha-synthetic")
ap.add_argument("--rungs", default="1,3,9,27", help="the scheduler's rungs, in epochs")
ap.add_argument("--max-epochs", type=int, default=60, help="train.max_epochs of the sweep")
args = ap.parse_args()
c = mlflow.tracking.MlflowClient(args.tracking_uri)
e = c.get_experiment_by_name(args.experiment)
runs = c.search_runs([e.experiment_id], max_results=5000)
studies = {r.info.run_id: r for r in runs if r.data.tags.get("moetune.role") == "study"}
trials = [r for r in runs if r.data.tags.get("moetune.role") == "trial" and r.info.status in ("FINISHED", "FAILED")]
S = {}
for t in trials:
    p = studies[t.data.tags["mlflow.parentRunId"]]
    g = p.data.tags
    key = (g["gate"], g["local_search"], g.get("moetune.scheduler", "none"), g["seed"])
    S.setdefault(key, {})[int(t.data.tags["moetune.trial_index"])] = t
print("studies", len(S), "trials", len(trials))
RUNGS = [int(r) for r in args.rungs.split(",")]
MAX = args.max_epochs
hist_cache = {}


def hist(t):
    if t.info.run_id not in hist_cache:
        h = {m.step: m.value for m in c.get_metric_history(t.info.run_id, "val_loss")}
        hist_cache[t.info.run_id] = h
    return hist_cache[t.info.run_id]


print("\n## stop profile (per gate/arm/scheduler, over seeds)")
for gate in ("topk", "hash"):
    for ls in ("on", "off"):
        for sch in ("asha", "none"):
            ks = [k for k in S if k[:3] == (gate, ls, sch)]
            ep = [t.data.metrics.get("epochs_run", 0) for k in ks for t in S[k].values()]
            tot = [sum(t.data.metrics.get("epochs_run", 0) for t in S[k].values()) for k in ks]
            stopped = sum(t.data.tags.get("moetune.outcome") == "stopped" for k in ks for t in S[k].values())
            dist = {r: sum(1 for x in ep if x == r) for r in [*RUNGS, MAX]}
            print(gate, ls, sch, "trials", len(ep), "stopped", stopped, "epochs/study", tot, "dist", dist)

print("\n## the full-length winner under ASHA (same trial n = same hyperparameters and seed)")
for gate in ("topk", "hash"):
    for ls in ("on", "off"):
        for seed in ("0", "1", "2"):
            full, asha = S.get((gate, ls, "none", seed)), S.get((gate, ls, "asha", seed))
            if not full or not asha:
                continue
            ok = {i: t for i, t in full.items() if t.info.status == "FINISHED"}
            b = min(ok, key=lambda i: ok[i].data.metrics["best_val_loss"])
            aok = {i: t for i, t in asha.items() if t.info.status == "FINISHED"}
            a = min(aok, key=lambda i: aok[i].data.metrics["best_val_loss"])
            tb = asha.get(b)
            # rank of the winner at each rung among the full-length study's trials (1 = best)
            ranks = []
            for r in RUNGS:
                vals = {i: hist(t).get(r, math.nan) for i, t in ok.items()}
                order = sorted(vals, key=lambda i: vals[i])
                ranks.append(order.index(b) + 1)
            ran = (tb.data.metrics.get("epochs_run"), tb.data.tags.get("moetune.outcome")) if tb else (None, None)
            full_test, asha_test = ok[b].data.metrics["test_loss"], aok[a].data.metrics["test_loss"]
            print(
                f"{gate} {ls} seed {seed}: full-length winner trial {b} (test {full_test:.4f}), its val_loss rank "
                f"at epochs {', '.join(map(str, RUNGS))}: {ranks} of {len(ok)}; "
                f"under asha it ran {ran[0]} epochs ({ran[1]}); "
                f"asha selects trial {a} ({aok[a].data.metrics.get('epochs_run')} epochs, test {asha_test:.4f})"
            )

print("\n## on - off val_loss at the rungs, full-length studies, pairs (seed, trial n)")
rng = np.random.default_rng(0)
for gate in ("topk", "hash"):
    for r in RUNGS:
        d = []
        for seed in ("0", "1", "2"):
            on, off = S.get((gate, "on", "none", seed), {}), S.get((gate, "off", "none", seed), {})
            for i in on.keys() & off.keys():
                a, b = hist(on[i]).get(r), hist(off[i]).get(r)
                if a is not None and b is not None:
                    d.append(a - b)
        d = np.array(d)
        if d.size:
            boot = d[rng.integers(0, d.size, (2000, d.size))].mean(1)
            lo, hi = np.quantile(boot, [0.05, 0.95])
            print(
                gate,
                "epoch",
                r,
                f"n={d.size} mean {d.mean():+.4f} [{lo:+.4f}, {hi:+.4f}] on worse in {int((d > 0).sum())}/{d.size}",
            )
print("\n## asha stops by arm and rung (stopped_at_epoch)")
for gate in ("topk", "hash"):
    for ls in ("on", "off"):
        ks = [k for k in S if k[:3] == (gate, ls, "asha")]
        ts = [t for k in ks for t in S[k].values()]
        at = [t.data.tags.get("moetune.stopped_at_epoch") for t in ts]
        print(
            gate,
            ls,
            "n",
            len(ts),
            {r: sum(1 for x in at if x == str(r)) for r in RUNGS},
            f"ran {MAX}:",
            sum(t.data.metrics.get("epochs_run") == MAX for t in ts),
        )
