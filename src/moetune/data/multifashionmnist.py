"""MultiFashionMNIST: the MultiMNIST construction on the Fashion-MNIST IDX files (see multimnist.py).

Its own dataset name, so a sweep over dataset=multimnist,multifashionmnist gives two studies."""

from __future__ import annotations

from moetune.data import multimnist
from moetune.data.base import MultiTaskData


def load(
    path: str | None = None, n_train: int = 100000, n_val: int = 20000, n_test: int = 20000, seed: int = 0
) -> MultiTaskData:
    """The overlaid pairs from the Fashion-MNIST IDX files in `path` (None: $MOETUNE_FASHION_MNIST_DIR)."""
    return multimnist.load(path=path, variant="fashion", n_train=n_train, n_val=n_val, n_test=n_test, seed=seed)
