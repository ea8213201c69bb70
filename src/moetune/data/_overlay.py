"""The MultiMNIST construction shared by multimnist and multidigits: two images on one canvas.

Each sample overlays two s x s images on a (s + 2 * shift) square canvas: the first shifted
`shift` pixels toward the top-left (rows and cols 0..s-1), the second toward the bottom-right
(rows and cols 2*shift..s+2*shift-1); where they overlap the canvas keeps the pixel-wise max,
so overlapping strokes stay in range (the COMET authors' generator adds them instead).
Task 1 is the top-left image's class, task 2 the bottom-right one's.
"""

from __future__ import annotations

import numpy as np
import torch

from moetune.data.base import Split, Task
from moetune.errors import ConfigError

TASKS = [Task("top_left", "multiclass", 10), Task("bottom_right", "multiclass", 10)]


def check_sizes(seed, **sizes) -> None:
    """Every size a positive integer and the seed a non-negative one, else a ConfigError naming it."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")
    for name, value in sizes.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def sample_pairs(pool: np.ndarray, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n (top-left, bottom-right) pairs of two different images drawn uniformly from `pool` (indices)."""
    if len(pool) < 2:
        raise ConfigError(f"a pool of {len(pool)} image(s) cannot make pairs of two different images")
    first = rng.integers(0, len(pool), size=n)
    second = (first + rng.integers(1, len(pool), size=n)) % len(pool)
    return pool[first], pool[second]


def overlay(images: np.ndarray, first: np.ndarray, second: np.ndarray, shift: int, scale: float) -> np.ndarray:
    """float32 canvases N x 1 x C x C (C = s + 2 * shift) of images[first] top-left and images[second]
    bottom-right, pixel-wise max, times `scale` (to map the pixel range onto [0, 1]).

    Vectorised and in place: the only temporaries are the gathered source images in their own
    dtype (uint8 for MNIST), so 100k canvases take a few seconds and about their own size in memory.
    """
    n, s = len(first), images.shape[-1]
    size = s + 2 * shift
    canvas = np.zeros((n, 1, size, size), dtype=np.float32)
    canvas[:, 0, :s, :s] = images[first]
    corner = canvas[:, 0, 2 * shift :, 2 * shift :]
    np.maximum(corner, images[second], out=corner)
    canvas *= np.float32(scale)
    return canvas


def make_split(
    images: np.ndarray, labels: np.ndarray, pool: np.ndarray, n: int, rng: np.random.Generator, shift: int, scale: float
) -> Split:
    """A split of n overlaid pairs drawn from `pool`; targets are the two class indices."""
    first, second = sample_pairs(pool, n, rng)
    canvas = overlay(images, first, second, shift, scale)
    targets = np.stack([labels[first], labels[second]], axis=1).astype(np.float32)
    return Split(
        inputs={"image": torch.from_numpy(canvas)},
        targets=torch.from_numpy(targets),
        masks=torch.ones(n, 2, dtype=torch.bool),
    )


def split_pool(n_images: int, sizes: list[int], rng: np.random.Generator) -> list[np.ndarray]:
    """Disjoint random pools of image indices, each proportional to its split's share of pairs
    (so no source image appears in two splits); every pool gets at least two images."""
    perm = rng.permutation(n_images)
    bounds = np.round(np.cumsum([0] + sizes) / sum(sizes) * n_images).astype(int)
    pools = [perm[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=False)]
    if any(len(p) < 2 for p in pools):
        raise ConfigError(
            f"sizes {sizes} split {n_images} source images into pools of {[len(p) for p in pools]}; "
            f"each needs at least 2: make the sizes less uneven"
        )
    return pools
