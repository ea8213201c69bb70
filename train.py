"""moetune's sweep command: one Hydra job = one tuning study.

python train.py                                         # one quick study (top-k, no local search)
python train.py -m gate=topk,hash local_search=on,off   # four studies in one MLflow experiment
"""

import hydra
from omegaconf import DictConfig

from moetune.cli.sweep import exit_without_teardown, run_job


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_job(cfg)


if __name__ == "__main__":
    main()
    exit_without_teardown()
