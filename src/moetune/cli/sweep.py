"""``python train.py``: one Hydra job = one study; a multirun ends with the sweep's export and answer."""

from __future__ import annotations

import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback as HydraCallback
from omegaconf import DictConfig

import moetune.tuning.hydra_config  # noqa: F401  (registers the config schema and ${study_key:...})
from moetune.errors import MoetuneError


def run_job(cfg: DictConfig) -> None:
    """Run the job's study; bad input exits 2 with one ``error:`` line, an interrupt 130 with how to resume."""
    from moetune.tuning.study import run_study

    hydra_cfg = HydraConfig.get()
    multirun = hydra_cfg.mode is not None and hydra_cfg.mode.name == "MULTIRUN"
    sweep_dir = Path(hydra_cfg.sweep.dir if multirun else hydra_cfg.runtime.output_dir)
    try:
        summary = run_study(cfg, sweep_dir)
    except MoetuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        sys.exit(130)
    print(f"[{summary['study']}] done: {summary['trials_finished']} finished, {summary['trials_failed']} failed")


class ExportOnMultirunEnd(HydraCallback):
    """At the end of a multirun, write the sweep's budget-vs-quality curves (moetune export) and print the
    answer; when the export cannot run, say why and how to run it, and exit non-zero."""

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        if not config.sweep.export:
            return
        from hydra.utils import instantiate

        from moetune.report import export_sweep, print_answer

        out = Path(config.hydra.sweep.dir) / "export"
        experiment, uri = config.tracking.experiment, config.tracking.uri
        try:
            print_answer(export_sweep(instantiate(config.tracking), experiment, out))
        except MoetuneError as exc:
            print(
                f"error: export failed: {exc}\n  once fixed: moetune export --experiment {experiment} "
                f"--tracking-uri {uri} --out {out}",
                file=sys.stderr,
            )
            sys.exit(1)
