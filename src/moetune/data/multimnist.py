"""MultiMNIST and MultiFashionMNIST, as in the COMET paper, built from the standard IDX files.

Two 28x28 images are overlaid on a 36x36 canvas: one shifted 4 px toward the top-left (rows and
cols 0..27), the other toward the bottom-right (rows and cols 8..35), keeping the pixel-wise max
where they overlap, scaled to [0, 1]. Task 1 classifies the top-left item, task 2 the bottom-right
one. Train and validation pairs come from disjoint pools of the IDX train images (5/6 and 1/6 at
the paper's sizes, like the authors' split), test pairs from the t10k images.

Files in `path` (each optionally gzipped, name + ".gz"): train-images-idx3-ubyte,
train-labels-idx1-ubyte, t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte.
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np

from moetune.data._overlay import TASKS, check_sizes, make_split, split_pool
from moetune.data.base import MultiTaskData
from moetune.errors import ConfigError, DataError

IMAGES_MAGIC, LABELS_MAGIC = 2051, 2049
SIDE, SHIFT = 28, 4
VARIANTS = {
    "mnist": (
        "MOETUNE_MNIST_DIR",
        "MNIST (http://yann.lecun.com/exdb/mnist/ or a mirror; torchvision's MNIST/raw folder holds the same files)",
    ),
    "fashion": (
        "MOETUNE_FASHION_MNIST_DIR",
        "Fashion-MNIST (https://github.com/zalandoresearch/fashion-mnist, folder data/fashion)",
    ),
}


def load(
    path: str | None = None,
    variant: str = "mnist",
    n_train: int = 100000,
    n_val: int = 20000,
    n_test: int = 20000,
    seed: int = 0,
) -> MultiTaskData:
    """Build the overlaid pairs from the IDX files in `path` (None: $MOETUNE_MNIST_DIR, or
    $MOETUNE_FASHION_MNIST_DIR for variant=fashion). variant only names the data in messages."""
    if variant not in VARIANTS:
        raise ConfigError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    check_sizes(seed, n_train=n_train, n_val=n_val, n_test=n_test)
    env_var, source = VARIANTS[variant]
    if path is None:
        path = os.environ.get(env_var)
        if path is None:
            raise ConfigError(
                f"multimnist ({variant}) needs path=<folder with the IDX files> (or ${env_var}); get them from {source}"
            )
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise DataError(
            f"{variant} IDX folder {folder.resolve()} does not exist; it should hold "
            f"train-images-idx3-ubyte[.gz] and the other three IDX files from {source}"
        )

    train_images, train_labels = read_idx_pair(folder, "train", source)
    test_images, test_labels = read_idx_pair(folder, "t10k", source)
    rng = np.random.default_rng(seed)
    train_pool, val_pool = split_pool(len(train_images), [n_train, n_val], rng)
    splits = {
        "train": make_split(train_images, train_labels, train_pool, n_train, rng, SHIFT, 1 / 255),
        "val": make_split(train_images, train_labels, val_pool, n_val, rng, SHIFT, 1 / 255),
        "test": make_split(test_images, test_labels, np.arange(len(test_images)), n_test, rng, SHIFT, 1 / 255),
    }
    name = "multimnist" if variant == "mnist" else "multifashionmnist"
    return MultiTaskData(name=name, tasks=list(TASKS), **splits)


def read_idx_pair(folder: Path, prefix: str, source: str) -> tuple[np.ndarray, np.ndarray]:
    """Images (N x 28 x 28 uint8) and labels (N, 0..9) of one IDX set, checked against each other."""
    images_file = _find(folder, f"{prefix}-images-idx3-ubyte", source)
    labels_file = _find(folder, f"{prefix}-labels-idx1-ubyte", source)
    images = read_idx(images_file, IMAGES_MAGIC)
    labels = read_idx(labels_file, LABELS_MAGIC)
    if images.ndim != 3 or images.shape[1:] != (SIDE, SIDE):
        raise DataError(f"{images_file}: images of shape {images.shape[1:]}, expected {SIDE}x{SIDE}")
    if len(images) != len(labels):
        raise DataError(f"{images_file} has {len(images)} images but {labels_file} has {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise DataError(f"{labels_file}: label {labels.max()} at index {int(labels.argmax())} is outside 0..9")
    return images, labels


def read_idx(file: Path, expected_magic: int) -> np.ndarray:
    """An unsigned-byte IDX array; the magic number says the type (0x08 = ubyte) and the number of dims."""
    with (gzip.open if file.name.endswith(".gz") else open)(file, "rb") as handle:
        try:
            data = handle.read()
        except (OSError, EOFError) as exc:
            raise DataError(f"{file}: cannot be read ({exc})") from None
    if len(data) < 4:
        raise DataError(f"{file}: {len(data)} bytes, too short for an IDX header")
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        what = "images" if expected_magic == IMAGES_MAGIC else "labels"
        raise DataError(f"{file}: IDX magic number {magic}, expected {expected_magic} (an unsigned-byte {what} file)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{file}: truncated IDX header")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=header)
    if body.size != int(np.prod(dims)):
        raise DataError(f"{file}: header says dims {dims} ({int(np.prod(dims))} bytes of data), found {body.size}")
    return body.reshape(dims)


def _find(folder: Path, stem: str, source: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    raise DataError(f"{folder / stem}[.gz] does not exist; expected the IDX file from {source}")
