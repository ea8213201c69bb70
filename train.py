"""moetune's sweep command: one Hydra job = one tuning study.

python train.py                                         # one quick study (top-k, no local search)
python train.py -m gate=topk,hash local_search=on,off   # four studies in one MLflow experiment
"""

import atexit
import os
import sys

_status: list[int] = []  # the command's exit status, once main has ended


def _exit_without_teardown() -> None:
    """Registered before anything else, so it runs after every other exit handler (Ray's shutdown, logging,
    temp folders) and after Python has joined the threads. What would follow is Python freeing the modules of
    torch, Ray, MLflow and the plotting libraries one by one: seconds that write nothing. Exit instead."""
    if _status:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(_status[0])


atexit.register(_exit_without_teardown)

import hydra  # noqa: E402  (after the exit handler: see _exit_without_teardown)
from omegaconf import DictConfig  # noqa: E402

from moetune.cli.sweep import run_job  # noqa: E402


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> None:
    run_job(cfg)


if __name__ == "__main__":
    try:
        main()
    except SystemExit as exc:  # the status Python gives it: None 0, a number itself, a message 1
        _status.append(exc.code if isinstance(exc.code, int) else int(exc.code is not None))
        raise
    _status.append(0)
