"""MultiDigits: the MultiMNIST construction on scikit-learn's bundled 8x8 digits (no download).

A CPU-sized stand-in for MultiMNIST with the same geometry scaled by 8/28: two 8x8 digits
(0..16 scaled to [0, 1]) on a 12x12 canvas, one shifted 2 px toward the top-left (rows and cols
0..7), the other toward the bottom-right (rows and cols 4..11), pixel-wise max where they overlap.
Task 1 classifies the top-left digit, task 2 the bottom-right one. The 1,797 digits are first
split into disjoint pools (proportional to the split sizes), so test pairs never reuse a train or
validation digit.
"""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from moetune.data._overlay import TASKS, check_sizes, make_split, split_pool
from moetune.data.base import MultiTaskData

SHIFT = 2


def load(n_train: int = 8000, n_val: int = 1000, n_test: int = 1000, seed: int = 0) -> MultiTaskData:
    """Seeded pairs of sklearn digits; train/val/test digits are disjoint."""
    check_sizes(seed, n_train=n_train, n_val=n_val, n_test=n_test)
    digits = load_digits()
    images = digits.images.astype(np.float32)  # 1797 x 8 x 8, values 0..16
    labels = digits.target
    rng = np.random.default_rng(seed)
    sizes = {"train": n_train, "val": n_val, "test": n_test}
    pools = split_pool(len(images), list(sizes.values()), rng)
    splits = {
        name: make_split(images, labels, pool, n, rng, SHIFT, 1 / 16)
        for (name, n), pool in zip(sizes.items(), pools, strict=False)
    }
    return MultiTaskData(name="multidigits", tasks=list(TASKS), **splits)
