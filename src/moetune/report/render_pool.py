"""The export's figures drawn on two cores: a helper Python process draws part of them.

Drawing one figure (PNG and SVG, or the plotly page) is 0.2-0.6 s of single-threaded Python, and an
export draws ten or more while a second core idles: the main command's export spent about 4.5 of its
8 s there. The helper starts with the export, so its imports (numpy, matplotlib, plotly) overlap the
export's reading and analysis; it is handed every second job (a module-level function and its arguments,
pickled to a file in the export's temp folder), draws them and exits. If it cannot start or fails, its
jobs are drawn here: the files are the same either way, a failing render raises here as it would have.
"""

from __future__ import annotations

import ctypes
import os
import pickle
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import moetune

Job = tuple[Callable[..., None], tuple[Any, ...]]
PR_SET_PDEATHSIG = 1  # prctl(2)
HELPER_IMPORTS = ("numpy", "matplotlib.figure", "plotly.graph_objects", "moetune.report.figures")


def draw_here(render: Callable[..., None], *args: Any) -> None:
    """A figure writer's default: draw at once, in this process."""
    render(*args)


class RenderPool:
    """Collects the export's render jobs (``draw``), then draws them in this process and the helper
    (``finish``). A context manager: on leaving it the helper is stopped, whatever happened."""

    def __init__(self, helper: bool | None = None):
        self.jobs: list[Job] = []
        use_helper = (os.cpu_count() or 1) > 1 if helper is None else helper
        self.helper = _start_helper() if use_helper else None

    def draw(self, render: Callable[..., None], *args: Any) -> None:
        """Queue one render; its files exist once finish() returns."""
        self.jobs.append((render, args))

    def finish(self, folder: Path) -> None:
        """Draw every queued job: every second one in the helper, the rest here; returns when all are drawn."""
        jobs, self.jobs = self.jobs, []
        helper, self.helper = self.helper, None
        theirs = _hand_over(helper, jobs[1::2], folder)
        for render, args in jobs[0::2] if theirs else jobs:
            render(*args)
        if helper is not None and not _helper_done(helper) and theirs:
            for render, args in theirs:  # drawn here after all: the same files
                render(*args)

    def __enter__(self) -> RenderPool:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.helper is not None:  # the export ended before its figures: the helper is not needed
            self.helper.kill()
            self.helper.communicate()
            self.helper = None


def _start_helper() -> subprocess.Popen[bytes] | None:
    root = str(Path(moetune.__file__).resolve().parents[1])  # the package this process runs, wherever it is
    code = (
        f"import sys; sys.path.insert(0, {root!r}); from moetune.report.render_pool import serve; serve({os.getpid()})"
    )
    try:
        return subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
        )
    except OSError:
        return None


def _hand_over(helper: subprocess.Popen[bytes] | None, jobs: list[Job], folder: Path) -> list[Job]:
    """The jobs the helper took: all of ``jobs``, or none when there is no helper or it is gone."""
    if helper is None or not jobs or helper.stdin is None:
        return []
    path = folder / f".render-jobs-{os.getpid()}.pickle"
    path.write_bytes(pickle.dumps(jobs))
    try:
        helper.stdin.write(f"{path}\n".encode())
        helper.stdin.flush()
    except OSError:  # it died early; finish() reaps it
        return []
    return jobs


def _helper_done(helper: subprocess.Popen[bytes]) -> bool:
    """Closes the helper's input and waits for it; true when it exited cleanly."""
    try:
        _, err = helper.communicate()
    except OSError:
        helper.kill()
        helper.wait()
        return False
    if helper.returncode != 0:
        why = (err or b"").decode(errors="replace").strip().splitlines()
        reason = why[-1] if why else f"exit status {helper.returncode}"
        print(f"warning: the figure helper failed ({reason}); drawing its figures here", file=sys.stderr)
    return helper.returncode == 0


def serve(parent: int) -> None:
    """The helper's main: import what rendering needs, then draw the jobs in the file named on stdin."""
    import importlib

    _die_with(parent)
    for name in HELPER_IMPORTS:
        importlib.import_module(name)
    line = sys.stdin.readline().strip()
    if not line:  # the export ended without handing over jobs
        return
    jobs: list[Job] = pickle.loads(Path(line).read_bytes())
    for render, args in jobs:
        render(*args)


def _die_with(parent: int) -> None:
    """A helper that outlived a killed export would go on writing into the export's temp folder while a
    resumed export removes it: on Linux the kernel kills the helper when its parent dies."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:  # the parent died before the line above
        os._exit(0)
