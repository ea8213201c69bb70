"""The dose-response of local search: one sweep per phase length, then its effect against the phase's steps.

    python scripts/dose_response.py experiment=dose_synthetic --gates topk --e-perm 1,4,20 \
        --out docs/results/dose-response

For each E in --e-perm, runs through train.py's real command line
    python train.py -m <overrides> gate=<gates> local_search=on,frozen,off local_search.e_perm=E
        train.max_epochs=<10 E> train.patience=<max(5, E)> sweep.name=<name>-e<E>
(the phase is 10% of training, the top of the paper's 1-10%, and early stopping cannot end a trial inside
its phase), each sweep with its own export. A sweep already complete is only re-read, an interrupted one
resumes (the same command again). Then reads every sweep back and writes to --out: points.csv (per phase
length, gate and comparison: the paired difference, the reduction at the headline n, what the phase did,
routing NMI), dose_response.png, and each sweep's trials.csv as trials_e<E>.csv.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for every sweep, e.g. experiment=dose_synthetic")
    parser.add_argument("--e-perm", default="1,4,20", help="phase lengths in epochs (default %(default)s)")
    parser.add_argument("--gates", default="topk,hash", help="gates (default %(default)s)")
    parser.add_argument("--epochs-per-phase", type=int, default=10, help="train.max_epochs = this x E (default 10)")
    parser.add_argument("--name", default=None, help="sweep name prefix (default dose-<experiment without dose_>)")
    parser.add_argument("--out", default=None, help="output folder (default sweeps/<name>)")
    parser.add_argument("--metric", default="test_loss", help="the compared test metric (default %(default)s)")
    parser.add_argument("--tracking-uri", default="sqlite:///mlruns/mlflow.db")
    args = parser.parse_args()
    try:
        phases = [int(e) for e in args.e_perm.split(",")]
    except ValueError:
        print(f"error: --e-perm {args.e_perm!r} is not a comma-separated list of epochs, e.g. 1,4,20", file=sys.stderr)
        return 2
    if not phases or min(phases) < 1:
        print("error: --e-perm needs positive phase lengths in epochs, e.g. 1,4,20", file=sys.stderr)
        return 2
    experiment = next((o.split("=", 1)[1] for o in args.overrides if o.startswith("experiment=")), "quick")
    name = args.name or f"dose-{experiment.removeprefix('dose_')}"
    out = Path(args.out or Path("sweeps") / name)
    sweeps = []
    for e_perm in phases:
        sweep = f"{name}-e{e_perm}"
        cmd = [
            sys.executable,
            str(REPO / "train.py"),
            "-m",
            *args.overrides,
            f"gate={args.gates}",
            "local_search=on,frozen,off",
            f"local_search.e_perm={e_perm}",
            f"train.max_epochs={args.epochs_per_phase * e_perm}",
            f"train.patience={max(5, e_perm)}",
            f"sweep.name={sweep}",
        ]
        print("$ " + " ".join(cmd[1:]), flush=True)
        if subprocess.run(cmd).returncode != 0:
            print(f"error: sweep {sweep} did not complete; run the same command again to resume it", file=sys.stderr)
            return 1
        sweeps.append((e_perm, sweep))

    from moetune.report.dose_response import points, write_csv, write_figure
    from moetune.report.sweep import read_sweep
    from moetune.tracking.mlflow_store import MlflowTracking

    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for e_perm, sweep in sweeps:
        rows += points(read_sweep(MlflowTracking(args.tracking_uri, experiment=sweep)), args.metric)
        shutil.copyfile(Path("sweeps") / sweep / "export" / "trials.csv", out / f"trials_e{e_perm}.csv")
    write_csv(out / "points.csv", rows)
    write_figure(out / "dose_response.png", rows)
    print(f"dose-response: {out}/points.csv, {out}/dose_response.png")
    for r in rows:
        print(
            f"  {r.gate} E={r.e_perm:g} ({r.perm_steps:.0f} steps) {r.comparison}: {r.mean:+.4f} "
            f"[90% {r.mean_low:+.4f}, {r.mean_high:+.4f}] n={r.n_pairs} p={r.wilcoxon_p:.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
