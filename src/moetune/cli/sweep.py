"""``python train.py``: Hydra composes each study's config; one driver runs them (moetune.tuning.driver).

A multirun's jobs reach the driver through moetune's Hydra launcher (hydra_plugins.moetune_launcher), so
all studies share one Ray instance and its slots; a single run (no -m) is a sweep of one study. The
multirun ends with the sweep's export and answer (``ExportOnMultirunEnd``)."""

from __future__ import annotations

import atexit
import os
import shlex
import sys
import tempfile
from pathlib import Path
from typing import Any, NoReturn

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig

import moetune.tuning.hydra_config  # noqa: F401  (registers the config schema and ${study_key:...}; Hydra finds the launcher in hydra_plugins)
from moetune.errors import MoetuneError


def resume_command(sweep_name: str) -> str:
    """The command line that resumes this sweep: the one typed, naming the sweep."""
    args = [a for a in sys.argv[1:] if not a.startswith("sweep.name=")]
    return shlex.join(["python", Path(sys.argv[0]).name, *args, f"sweep.name={sweep_name}"])


def run_sweep_or_exit(job_configs: list[DictConfig], sweep_dir: Path) -> list[dict[str, Any]]:
    """Plan every study, then run them in one driver. Bad input exits 2 with one ``error:`` line before
    anything starts; a signal or an interrupt exits 130 (143 for SIGTERM) with the command to resume."""
    from moetune.tuning.driver import SweepInterrupted, run_sweep
    from moetune.tuning.planning import plan_study
    from moetune.tuning.ray_runtime import stop_ray

    try:
        datasets: dict = {}
        checkpoints: dict = {}  # a dense checkpoint (model.init_from) is loaded once for the multirun
        plans = [plan_study(cfg, datasets, checkpoints) for cfg in job_configs]
        summaries = run_sweep(plans, sweep_dir)
    except MoetuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except SweepInterrupted as exc:
        print(f"interrupted: {exc}; resume with: {resume_command(exc.sweep)}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        print("interrupted before the sweep started; nothing was run", file=sys.stderr)
        sys.exit(130)
    stop_ray()  # the sweep is over, before the export and its signal handlers
    for summary in summaries:
        print(f"[{summary['study']}] done: {summary['trials_finished']} finished, {summary['trials_failed']} failed")
    return summaries


def exit_without_teardown() -> NoReturn:
    """End a command that finished normally at once: the exit hooks run, the stores close and the output is
    flushed, then the process ends without the interpreter's teardown of torch, Ray, MLflow and matplotlib
    (about 2 s on 2 cores, after the last line). An error or an interrupt exits the usual way, with its status."""
    atexit._run_exitfuncs()
    if "moetune.tracking.mlflow_store" in sys.modules:
        from moetune.tracking.mlflow_store import close_stores

        close_stores()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def run_job(cfg: DictConfig) -> None:
    """The Hydra task: one study (``python train.py`` without -m, or a launcher that runs jobs one by one)."""
    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode is not None and hydra_cfg.mode.name == "MULTIRUN"
    sweep_dir = Path(hydra_cfg.sweep.dir if multirun else hydra_cfg.runtime.output_dir)
    run_sweep_or_exit([cfg], sweep_dir)


class CheckOutputFolder(HydraCallback):
    """Before Hydra creates the output folder (and writes its config there): an unwritable one, or a
    tracking.uri carrying a password, is one line and exit 2, not a traceback or a logged secret."""

    @staticmethod
    def _check(folder: Path) -> None:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-check-"):
                pass
        except OSError as exc:
            print(
                f"error: output folder {folder} is not writable ({exc.strerror}); fix its permissions "
                "or run from another folder",
                file=sys.stderr,
            )
            sys.exit(2)

    @staticmethod
    def _no_password(config: DictConfig) -> None:
        """A password in tracking.uri would be logged with the config Hydra writes next: refused first."""
        from moetune.tracking.mlflow_access import refuse_password_in_uri

        uri = config.get("tracking", {}).get("uri")
        if isinstance(uri, str):
            try:
                refuse_password_in_uri(uri)
            except MoetuneError as exc:
                print(f"error: {exc}", file=sys.stderr)
                sys.exit(2)

    def on_run_start(self, config: DictConfig, **kwargs) -> None:
        self._no_password(config)
        self._check(Path(config.hydra.run.dir))

    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        self._no_password(config)
        self._check(Path(config.hydra.sweep.dir))


class ExportOnMultirunEnd(HydraCallback):
    """At the end of a multirun, write the sweep's budget-vs-quality curves (moetune export) and print the
    answer; when the export cannot run, say why and how to run it, and exit non-zero."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if not config.sweep.export:
            return
        from omegaconf import OmegaConf

        from moetune.report import export_sweep, print_answer
        from moetune.tracking import build_tracking
        from moetune.tuning.signals import StopSignals

        out = Path(config.hydra.sweep.dir) / "export"
        tracking = build_tracking(OmegaConf.to_container(config.tracking, resolve=True))  # the sweep's own: it ran
        signals = StopSignals()
        try:
            with signals:
                print_answer(export_sweep(tracking, out))
        except KeyboardInterrupt:  # the export writes into a temp folder: nothing half-written is left
            print(f"interrupted: the export stopped; resume with: {resume_command(config.sweep.name)}", file=sys.stderr)
            sys.exit(signals.exit_code)
        except MoetuneError as exc:
            print(
                f"error: export failed: {exc}\n  once fixed: "
                + shlex.join(["moetune", "export", "--experiment", tracking.experiment, *tracking.export_args()])
                + f" --out {shlex.quote(str(out))}",
                file=sys.stderr,
            )
            sys.exit(1)
