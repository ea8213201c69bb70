"""The report of a sweep: how good a model each tuning budget buys, with and without local search.

Data flows one way through the modules:

- ``sweep``: read a sweep's studies and trials from a tracking store, keep those the filters ask for;
- ``budget``: the budget-vs-quality estimators and reduction factors (numpy only);
- ``paired``: trial n of one arm against trial n of another (differences, bootstrap, Wilcoxon);
- ``analysis``: curves per group, reductions over no local search, top trials, the paired differences, and
  the answer (worded by ``answer``);
- ``tables`` and ``figures``: write them (CSV, summary.md; PNG, SVG and one interactive HTML page), with
  ``paired_figure``, ``trials_table`` (every trial, what the permutation phase did) and ``importance``
  (fANOVA per study); ``labels``: the words they share;
- ``export``: run the above into a folder and keep the files with the sweep.

``export_sweep``, ``print_answer`` and ``Export`` are loaded on first use, so that importing the
estimator alone (``moetune.report.budget``) loads neither MLflow nor the plotting libraries.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from moetune.report.export import Export, export_sweep, print_answer

__all__ = ["Export", "export_sweep", "print_answer"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("moetune.report.export"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
