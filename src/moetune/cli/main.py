"""The ``moetune`` command: one console script, one subcommand per job (argparse).

    moetune export --experiment NAME [--tracking-uri URI | --tracking KEY=VALUE ...] [--out DIR] ...
                                                           curves, figures, summary of a sweep
    moetune list                                                           the datasets and gates available

Studies themselves run through Hydra's command line: ``python train.py -m gate=topk,hash local_search=on,off``.
"""

from __future__ import annotations

import argparse
import sys

from moetune.errors import ConfigError

MLFLOW = "moetune.tracking.mlflow_store.MlflowTracking"  # conf/tracking/mlflow.yaml, the default backend
DEFAULT_TRACKING_URI = "sqlite:///mlruns/mlflow.db"


def tracking_node(options: list[str], uri: str | None) -> dict[str, str]:
    """The tracking node ``--tracking KEY=VALUE`` options give (``_target_=<class>`` picks a backend; its
    keys as in its conf/tracking file), MLflow at ``--tracking-uri`` (default sqlite:///mlruns/mlflow.db)
    when no other backend is named."""
    node: dict[str, str] = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--tracking {item!r} is not KEY=VALUE (e.g. _target_=my_pkg.MyTracking)")
        node[key.strip()] = value.strip()
    node.setdefault("_target_", MLFLOW)
    if uri is not None or node["_target_"] == MLFLOW:
        node.setdefault("uri", uri or DEFAULT_TRACKING_URI)
    return node


def _export(args: argparse.Namespace) -> int:
    from moetune.report import export_sweep, print_answer
    from moetune.tracking import build_tracking

    tracking = build_tracking(tracking_node(args.tracking, args.tracking_uri), experiment=args.experiment)
    export = export_sweep(
        tracking,
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
        description="Budget-vs-quality curves of a sweep, read back from its tracking store.",
    )
    e.add_argument("--experiment", required=True, help="the sweep's name (its MLflow experiment)")
    e.add_argument("--tracking-uri", default=None, help=f"MLflow store or server (default {DEFAULT_TRACKING_URI})")
    e.add_argument(
        "--tracking",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another tracking backend: _target_=<its class> and its keys (repeatable), as in conf/tracking/",
    )
    e.add_argument("--out", default=None, help="output folder (default sweeps/<experiment>/export)")
    e.add_argument("--metric", default=None, help="one test metric (default: every test_* metric recorded)")
    e.add_argument(
        "--selection", default=None, help="final metric that selects a trial (default: the one the studies ran with)"
    )
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
