"""moetune's entry point: one Hydra job = one tuning study.

    python train.py                                         # one quick study (top-k, no local search)
    python train.py -m gate=topk,hash local_search=on,off   # four studies in one MLflow experiment
"""
import sys
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

import moetune.config  # noqa: F401  (registers ${study_key:...}, which names each study's folder)
from moetune.errors import MoetuneError


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    from moetune.study import run_study

    hydra_cfg = HydraConfig.get()
    sweep_dir = Path(hydra_cfg.sweep.dir if hydra_cfg.mode.name == "MULTIRUN" else hydra_cfg.runtime.output_dir)
    try:
        summary = run_study(cfg, sweep_dir)
    except MoetuneError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        sys.exit(130)
    print(f"[{summary['study']}] done: {summary['trials_finished']} finished, {summary['trials_failed']} failed")


if __name__ == "__main__":
    main()
