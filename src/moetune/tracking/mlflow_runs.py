"""The run layout moetune keeps in MLflow (moetune.tracking.tags), shared by the store, a study's record
and the sweep lock: run statuses, page sizes, and the small helpers they all use."""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from mlflow.entities import Run
from mlflow.tracking import MlflowClient

import moetune
from moetune.tracking import tags as T

UNFINISHED = ("RUNNING", "SCHEDULED")
DONE = ("FINISHED", "FAILED")
BATCH = 1000  # MLflow's log_batch and search_runs page limit
SPACE = "space."  # a study run's params: its search space, one "space.<name>" per entry


def clean(value: Any) -> str:
    return str(value)[:6000]


def paged(fetch: Callable[[str | None], Any]) -> Iterator[Any]:
    """Every item of a paged MLflow search."""
    token = None
    while True:
        page = fetch(token)
        yield from page
        token = page.token
        if not token:
            return


def git_commit() -> str:
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            cwd=Path(moetune.__file__).resolve().parent,
        )
        return out.stdout.strip() if out.returncode == 0 else "unknown"
    except OSError:
        return "unknown"


def search(client: MlflowClient, experiment_id: str, filter_string: str) -> list[Run]:
    """Every run of the experiment the filter matches (all pages)."""
    return list(
        paged(
            lambda tok: client.search_runs(
                [experiment_id], filter_string=filter_string, max_results=BATCH, page_token=tok
            )
        )
    )


def trial_name(run: Run) -> str:
    """e.g. "trial-003 of study softmax-ls_off-synthetic-seed0 (run 1f2e...)"."""
    tags = run.data.tags
    index = int(tags.get(T.TRIAL_INDEX, -1))
    return f"trial-{index:03d} of study {tags.get(T.STUDY_KEY, '?')} (run {run.info.run_id})"
