"""The ``moetune`` command: one console script, one subcommand per job (argparse).

    moetune export --experiment NAME [--tracking-uri URI] [--out DIR] ...   curves, figures, summary of a sweep
    moetune list                                                           the datasets and gates available

Studies themselves run through Hydra's command line: ``python train.py -m gate=topk,hash local_search=on,off``.
"""

from __future__ import annotations

import argparse
import sys

from moetune.errors import ConfigError

DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


def _export(args: argparse.Namespace) -> int:
    from moetune.report import export_sweep, print_answer

    export = export_sweep(
        args.tracking_uri,
        args.experiment,
        args.out,
        metric=args.metric,
        filters=args.filter,
        selection=args.selection,
        resamples=args.resamples,
        seed=args.seed,
    )
    print(f"wrote {len(export.files)} files to {export.folder}:")
    for path in export.files.values():
        print(f"  {path}")
    print_answer(export)
    return 0


def _list(args: argparse.Namespace) -> int:
    from moetune.data import available_datasets
    from moetune.moe import available_gates

    print("datasets: " + ", ".join(available_datasets()))
    print("gates: " + ", ".join(available_gates()))
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="moetune", description="Tuning budgets of sparse Mixture-of-Experts gates.")
    commands = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    e = commands.add_parser(
        "export",
        help="budget-vs-quality curves, figures and summary of a sweep",
        description="Budget-vs-quality curves of a sweep, from its MLflow runs.",
    )
    e.add_argument("--experiment", required=True, help="MLflow experiment (= sweep) name")
    e.add_argument("--tracking-uri", default=DEFAULT_TRACKING_URI)
    e.add_argument("--out", default=None, help="output folder (default sweeps/<experiment>/export)")
    e.add_argument("--metric", default=None, help="one test metric (default: every test_* metric recorded)")
    e.add_argument("--selection", default="best_val_loss", help="validation metric that selects a trial")
    e.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="keep studies whose tag KEY equals VALUE (repeatable), e.g. dataset=movielens",
    )
    e.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples for bands and intervals")
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(run=_export)
    ls = commands.add_parser("list", help="the datasets and gates a study can use")
    ls.set_defaults(run=_list)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.run(args))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
