"""The export's figures drawn in two processes: the helper draws every second job; if it fails, this process does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moetune.report.render_pool import RenderPool


def pid_job(path, extra: str = "") -> str:
    """Code that writes the pid of the process that runs it: a job ``exec`` runs (it pickles by reference)."""
    return f"import os\n{extra}\nopen({str(path)!r}, 'w').write(str(os.getpid()))"


def test_the_helper_draws_every_second_job_and_this_process_the_rest(tmp_path):
    with RenderPool(helper=True) as pool:
        helper = pool.helper
        assert helper is not None
        for i in range(5):
            pool.draw(exec, pid_job(tmp_path / f"{i}.pid"))
        pool.finish(tmp_path)
    pids = [int((tmp_path / f"{i}.pid").read_text()) for i in range(5)]
    assert pids[0::2] == [os.getpid()] * 3
    assert pids[1::2] == [helper.pid] * 2
    assert helper.returncode == 0


def test_a_failing_helper_leaves_its_jobs_to_this_process_and_says_so(tmp_path, capsys):
    with RenderPool(helper=True) as pool:
        for i in range(4):  # fails in any process but this one
            pool.draw(exec, pid_job(tmp_path / f"{i}.pid", f"assert os.getpid() == {os.getpid()}, 'not the export'"))
        pool.finish(tmp_path)
    assert [int((tmp_path / f"{i}.pid").read_text()) for i in range(4)] == [os.getpid()] * 4
    assert "warning: the figure helper failed (AssertionError: not the export); drawing its figures here" in (
        capsys.readouterr().err
    )


def test_a_render_that_fails_raises_here(tmp_path):
    with RenderPool(helper=False) as pool:
        pool.draw(exec, "raise ValueError('bad figure')")
        with pytest.raises(ValueError, match="bad figure"):
            pool.finish(tmp_path)


def test_an_export_that_ends_before_its_figures_stops_the_helper(tmp_path):
    with pytest.raises(RuntimeError), RenderPool(helper=True) as pool:
        helper = pool.helper
        raise RuntimeError("the export failed while reading")
    assert helper is not None and helper.poll() is not None


def test_without_a_helper_every_job_is_drawn_here(tmp_path):
    with RenderPool(helper=False) as pool:
        assert pool.helper is None
        for i in range(3):
            pool.draw(exec, pid_job(tmp_path / f"{i}.pid"))
        pool.finish(tmp_path)
    assert [int((tmp_path / f"{i}.pid").read_text()) for i in range(3)] == [os.getpid()] * 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_the_helper_dies_with_an_export_killed_by_sigkill(tmp_path):
    code = (  # the export is killed while its helper draws a long figure
        "import os, pathlib, signal, threading, time\n"
        "from moetune.report.render_pool import RenderPool\n"
        "pool = RenderPool(helper=True)\n"
        "print(pool.helper.pid, flush=True)\n"
        "pool.draw(exec, 'pass')\n"
        "pool.draw(exec, 'import time; time.sleep(60)')\n"
        "threading.Timer(3, os.kill, (os.getpid(), signal.SIGKILL)).start()\n"
        f"pool.finish(pathlib.Path({str(tmp_path)!r}))\n"
    )
    export = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert export.returncode == -signal.SIGKILL
    helper = int(export.stdout.split()[0])
    deadline = time.monotonic() + 10
    while Path(f"/proc/{helper}").exists() and "Z" not in _state(helper) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not Path(f"/proc/{helper}").exists() or "Z" in _state(helper), "the helper outlived the export"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "gone"
