"""moetune's Hydra launcher: the jobs of a multirun are the studies of one sweep, run together by one
driver (moetune.tuning.driver) on one Ray instance, instead of one after another.

conf/config.yaml selects it (``override hydra/launcher: moetune``); ``hydra/launcher=basic`` runs the
studies one by one, each its own sweep driver (the bench's baseline). Hydra requires launchers to live in
the ``hydra_plugins`` package, and Hydra loads them without registering the module, so no
``from __future__ import annotations`` here (dataclasses then fail)."""

import copy
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from hydra.core.config_store import ConfigStore
from hydra.core.hydra_config import HydraConfig
from hydra.core.utils import JobReturn, JobStatus, configure_log, filter_overrides
from hydra.plugins.launcher import Launcher
from hydra.types import HydraContext, TaskFunction
from omegaconf import DictConfig, OmegaConf, open_dict, read_write

log = logging.getLogger(__name__)


@dataclass
class MoetuneLauncherConf:
    _target_: str = "hydra_plugins.moetune_launcher.moetune_launcher.MoetuneLauncher"


ConfigStore.instance().store(group="hydra/launcher", name="moetune", node=MoetuneLauncherConf, provider="moetune")


class MoetuneLauncher(Launcher):
    def __init__(self) -> None:
        self.config: DictConfig | None = None
        self.hydra_context: HydraContext | None = None

    def setup(self, *, hydra_context: HydraContext, task_function: TaskFunction, config: DictConfig) -> None:
        self.config, self.hydra_context = config, hydra_context

    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        from moetune.cli.sweep import run_sweep_or_exit

        assert self.config is not None and self.hydra_context is not None
        configure_log(self.config.hydra.hydra_logging, self.config.hydra.verbose)
        sweep_dir = Path(self.config.hydra.sweep.dir)
        studies = f"{len(job_overrides)} {'study' if len(job_overrides) == 1 else 'studies'}"
        log.info(f"moetune: {studies} in one sweep driver, folder {sweep_dir}")
        jobs: list[tuple[list[str], DictConfig]] = []
        for index, overrides in enumerate(job_overrides):
            log.info(f"\t#{initial_job_idx + index} : {' '.join(filter_overrides(overrides))}")
            job = self.hydra_context.config_loader.load_sweep_config(self.config, list(overrides))
            with open_dict(job):
                job.hydra.job.id = f"{job.hydra.job.name}_{initial_job_idx + index}"
                job.hydra.job.num = initial_job_idx + index
                job.hydra.runtime.output_dir = str((sweep_dir / str(job.hydra.sweep.subdir)).resolve())
            HydraConfig.instance().set_config(job)
            task = copy.deepcopy(job)  # the task's config, as Hydra's launchers pass it: without hydra
            with read_write(task), open_dict(task):
                del task["hydra"]
            self._save_job_config(Path(job.hydra.runtime.output_dir), task, list(overrides))
            jobs.append((list(overrides), task))
        summaries = run_sweep_or_exit([job for _, job in jobs], sweep_dir)  # in the jobs' order
        returns = []
        for (overrides, job), summary in zip(jobs, summaries, strict=True):
            result = JobReturn(overrides=overrides, cfg=job, hydra_cfg=None, working_dir=str(sweep_dir))
            result.status, result.return_value = JobStatus.COMPLETED, summary
            returns.append(result)
        return returns

    @staticmethod
    def _save_job_config(output_dir: Path, task: DictConfig, overrides: list[str]) -> None:
        """Each study's folder keeps its composed config and overrides, as Hydra's own launchers do."""
        folder = output_dir / ".hydra"
        try:
            folder.mkdir(parents=True, exist_ok=True)
            OmegaConf.save(task, folder / "config.yaml", resolve=False)
            OmegaConf.save(OmegaConf.create(overrides), folder / "overrides.yaml")
        except OSError:
            pass  # an unwritable output folder is the driver's one-line error, before anything starts
