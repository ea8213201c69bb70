"""MultiMNIST (from small IDX files written here) and MultiDigits: shapes, labels, geometry, bad input."""

from __future__ import annotations

import gzip
import inspect
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.datasets import load_digits

from moetune.data import _overlay, load_dataset, multidigits, multifashionmnist, multimnist
from moetune.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


def _reference_overlay(top_left: np.ndarray, bottom_right: np.ndarray, shift: int) -> np.ndarray:
    """The construction written out pixel by pixel: canvas[r, c] = max of the two shifted images."""
    s = top_left.shape[0]
    size = s + 2 * shift
    canvas = np.zeros((size, size), dtype=np.float64)
    for r in range(size):
        for c in range(size):
            a = top_left[r, c] if r < s and c < s else 0
            b = bottom_right[r - 2 * shift, c - 2 * shift] if r >= 2 * shift and c >= 2 * shift else 0
            canvas[r, c] = max(a, b)
    return canvas


@pytest.mark.parametrize(
    "config, loader", [("multimnist.yaml", multimnist.load), ("multifashionmnist.yaml", multifashionmnist.load)]
)
def test_mnist_yaml_files(config, loader):
    conf = yaml.safe_load((REPO / "conf/dataset" / config).read_text())
    defaults = {n: p.default for n, p in inspect.signature(loader).parameters.items()}
    assert conf.pop("name") == config.removesuffix(".yaml")
    assert conf == defaults
    assert conf["n_train"] == 100_000 and conf["n_val"] == 20_000 and conf["n_test"] == 20_000


def test_multidigits_yaml_file():
    conf = yaml.safe_load((REPO / "conf/dataset/multidigits.yaml").read_text())
    assert conf.pop("name") == "multidigits"
    assert conf == {n: p.default for n, p in inspect.signature(multidigits.load).parameters.items()}


def test_overlay_places_and_maxes():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    canvas = _overlay.overlay(images, np.array([0, 2]), np.array([1, 0]), shift=4, scale=1 / 255)
    assert canvas.shape == (2, 1, 36, 36) and canvas.dtype == np.float32
    np.testing.assert_allclose(canvas[0, 0], _reference_overlay(images[0], images[1], 4) / 255, rtol=1e-6)
    np.testing.assert_allclose(canvas[1, 0], _reference_overlay(images[2], images[0], 4) / 255, rtol=1e-6)
    # outside the overlap each image is copied as it is
    np.testing.assert_allclose(canvas[0, 0, :8, :28], images[0, :8] / 255, rtol=1e-6)
    np.testing.assert_allclose(canvas[0, 0, 28:, 8:], images[1, 20:] / 255, rtol=1e-6)


# ---------------------------------------------------------------- MultiMNIST from IDX files

N_TRAIN_IMAGES, N_TEST_IMAGES = 24, 12


def _idx_bytes(magic: int, array: np.ndarray) -> bytes:
    return magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape) + array.tobytes()


def _write_idx(file: Path, magic: int, array: np.ndarray, gz: bool) -> None:
    data = _idx_bytes(magic, array)
    if gz:
        file = file.with_name(file.name + ".gz")
        file.write_bytes(gzip.compress(data))
    else:
        file.write_bytes(data)


def _fake_images(n: int, rng) -> np.ndarray:
    """Image i: noise (<= 100) in rows 1..26, and 255 only at (0, i) and (27, i), so that a canvas
    tells which image is top-left (its row 0) and which bottom-right (its row 35)."""
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    images[:, 1:27] = rng.integers(0, 101, size=(n, 26, 28)) * (rng.random((n, 26, 28)) < 0.3)
    images[np.arange(n), 0, np.arange(n)] = 255
    images[np.arange(n), 27, np.arange(n)] = 255
    return images


def _write_mnist(folder: Path, gz: bool, seed: int = 0):
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    sets = {}
    for prefix, n in (("train", N_TRAIN_IMAGES), ("t10k", N_TEST_IMAGES)):
        images, labels = _fake_images(n, rng), rng.integers(0, 10, n).astype(np.uint8)
        _write_idx(folder / f"{prefix}-images-idx3-ubyte", 2051, images, gz)
        _write_idx(folder / f"{prefix}-labels-idx1-ubyte", 2049, labels, gz)
        sets[prefix] = (images, labels)
    return sets


def _identify(canvas: np.ndarray) -> tuple[int, int]:
    return int(canvas[0, :28].argmax()), int(canvas[35, 8:].argmax())


@pytest.mark.parametrize("gz", [False, True])
def test_multimnist_shapes_labels_and_geometry(tmp_path, gz):
    sets = _write_mnist(tmp_path, gz)
    data = load_dataset("multimnist", path=str(tmp_path), n_train=40, n_val=10, n_test=15, seed=1)
    assert [(t.name, t.kind, t.n_classes) for t in data.tasks] == [
        ("top_left", "multiclass", 10),
        ("bottom_right", "multiclass", 10),
    ]
    used = {}
    for name, n in (("train", 40), ("val", 10), ("test", 15)):
        split = data.splits[name]
        images = split.inputs["image"]
        assert images.shape == (n, 1, 36, 36) and images.dtype == torch.float32
        assert images.min() >= 0 and images.max() <= 1
        assert split.routing_ids is None and split.masks.all()
        source, labels = sets["t10k" if name == "test" else "train"]
        used[name] = set()
        for canvas, target in zip(images[:, 0].numpy(), split.targets.tolist(), strict=False):
            i, j = _identify(canvas)
            assert i != j
            assert target == [labels[i], labels[j]]
            np.testing.assert_allclose(canvas, _reference_overlay(source[i], source[j], 4) / 255, rtol=1e-6)
            used[name] |= {i, j}
    assert not used["train"] & used["val"]  # train and val pairs come from disjoint train images
    assert data.name == "multimnist" and data.n_routing_ids is None


def test_multimnist_is_seeded(tmp_path):
    _write_mnist(tmp_path, gz=False)
    a = multimnist.load(path=str(tmp_path), n_train=30, n_val=6, n_test=6, seed=0)
    b = multimnist.load(path=str(tmp_path), n_train=30, n_val=6, n_test=6, seed=0)
    c = multimnist.load(path=str(tmp_path), n_train=30, n_val=6, n_test=6, seed=1)
    assert torch.equal(a.train.inputs["image"], b.train.inputs["image"]) and torch.equal(a.test.targets, b.test.targets)
    assert not torch.equal(a.train.inputs["image"], c.train.inputs["image"])


def test_multimnist_env_default_and_fashion_name(tmp_path, monkeypatch):
    _write_mnist(tmp_path, gz=True)
    monkeypatch.setenv("MOETUNE_FASHION_MNIST_DIR", str(tmp_path))
    data = multimnist.load(variant="fashion", n_train=20, n_val=5, n_test=5)
    assert data.name == "multifashionmnist" and len(data.train) == 20


def test_multimnist_missing_folder_and_files(tmp_path, monkeypatch):
    with pytest.raises(DataError, match=r"nowhere.*yann.lecun.com"):
        multimnist.load(path=str(tmp_path / "nowhere"))
    with pytest.raises(DataError, match="zalandoresearch/fashion-mnist"):
        multimnist.load(path=str(tmp_path / "nowhere"), variant="fashion")
    _write_mnist(tmp_path, gz=False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte\[.gz\] does not exist"):
        multimnist.load(path=str(tmp_path), n_train=20, n_val=5, n_test=5)
    monkeypatch.delenv("MOETUNE_MNIST_DIR", raising=False)
    with pytest.raises(ConfigError, match="MOETUNE_MNIST_DIR"):
        multimnist.load()


@pytest.mark.parametrize("gz", [False, True])
def test_idx_wrong_magic_names_file_expected_and_found(tmp_path, gz):
    _write_mnist(tmp_path, gz=False)
    labels = np.zeros(N_TRAIN_IMAGES, dtype=np.uint8)
    (tmp_path / "train-labels-idx1-ubyte").unlink()
    _write_idx(tmp_path / "train-labels-idx1-ubyte", 2051, labels, gz)  # an images magic on a labels file
    with pytest.raises(DataError) as err:
        multimnist.load(path=str(tmp_path), n_train=20, n_val=5, n_test=5)
    message = str(err.value)
    assert "train-labels-idx1-ubyte" in message and "magic number 2051" in message and "expected 2049" in message


def test_idx_count_mismatch_and_truncation(tmp_path):
    sets = _write_mnist(tmp_path, gz=False)
    _write_idx(tmp_path / "t10k-labels-idx1-ubyte", 2049, sets["t10k"][1][:-1], gz=False)
    with pytest.raises(
        DataError, match=f"has {N_TEST_IMAGES} images but .*t10k-labels-idx1-ubyte has {N_TEST_IMAGES - 1}"
    ):
        multimnist.load(path=str(tmp_path), n_train=20, n_val=5, n_test=5)
    data = _idx_bytes(2051, sets["train"][0])
    (tmp_path / "train-images-idx3-ubyte").write_bytes(data[:-10])
    with pytest.raises(DataError, match="train-images-idx3-ubyte: header says dims"):
        multimnist.load(path=str(tmp_path), n_train=20, n_val=5, n_test=5)


def test_idx_wrong_image_size_and_label_range(tmp_path):
    sets = _write_mnist(tmp_path, gz=False)
    _write_idx(tmp_path / "train-images-idx3-ubyte", 2051, np.zeros((N_TRAIN_IMAGES, 32, 32), np.uint8), gz=False)
    with pytest.raises(DataError, match="expected 28x28"):
        multimnist.load(path=str(tmp_path), n_train=20, n_val=5, n_test=5)
    _write_idx(tmp_path / "train-images-idx3-ubyte", 2051, sets["train"][0], gz=False)
    bad = sets["train"][1].copy()
    bad[3] = 12
    _write_idx(tmp_path / "train-labels-idx1-ubyte", 2049, bad, gz=False)
    with pytest.raises(DataError, match="label 12 at index 3"):
        multimnist.load(path=str(tmp_path), n_train=20, n_val=5, n_test=5)


@pytest.mark.parametrize(
    "params",
    [
        {"n_train": 0},
        {"n_val": -5},
        {"n_test": 2.5},
        {"n_train": True},
        {"variant": "kmnist"},
        {"seed": None},
        {"n_train": 10**6, "n_val": 1},  # the val pool would get no image
    ],
)
def test_multimnist_bad_params(tmp_path, params):
    _write_mnist(tmp_path, gz=False)
    with pytest.raises(ConfigError):
        multimnist.load(path=str(tmp_path), **{"n_train": 20, "n_val": 5, "n_test": 5, **params})


# ---------------------------------------------------------------- MultiDigits


@pytest.fixture(scope="module")
def digits_data():
    return load_dataset("multidigits")


def _fingerprints(images: np.ndarray):
    """Each sklearn digit's pixels that stay visible on the canvas: as top-left, rows 0..3 and cols
    0..3; as bottom-right, rows 4..7 and cols 4..7 (all 1,797 are unique on both)."""
    top = np.concatenate([images[:, :4, :].reshape(len(images), -1), images[:, 4:, :4].reshape(len(images), -1)], 1)
    bottom = np.concatenate([images[:, 4:, :].reshape(len(images), -1), images[:, :4, 4:].reshape(len(images), -1)], 1)
    return ({row.tobytes(): k for k, row in enumerate(top)}, {row.tobytes(): k for k, row in enumerate(bottom)})


def test_multidigits_shapes_and_labels(digits_data):
    assert {n: len(s) for n, s in digits_data.splits.items()} == {"train": 8000, "val": 1000, "test": 1000}
    for split in digits_data.splits.values():
        images = split.inputs["image"]
        assert images.shape[1:] == (1, 12, 12) and images.dtype == torch.float32
        assert images.min() == 0 and images.max() == 1
        assert set(split.targets.unique().tolist()) == set(map(float, range(10)))
        assert split.masks.all() and split.routing_ids is None
    assert [t.out_dim for t in digits_data.tasks] == [10, 10]


def test_multidigits_geometry_labels_and_disjoint_digits(digits_data):
    digits = load_digits()
    images = (digits.images / 16).astype(np.float32)
    top_keys, bottom_keys = _fingerprints(images)
    used = {}
    for name, split in digits_data.splits.items():
        canvases = split.inputs["image"][:, 0].numpy()
        used[name] = set()
        for canvas, target in zip(canvases, split.targets.tolist(), strict=False):
            i = top_keys[np.concatenate([canvas[:4, :8].ravel(), canvas[4:8, :4].ravel()]).tobytes()]
            j = bottom_keys[np.concatenate([canvas[8:, 4:].ravel(), canvas[4:8, 8:].ravel()]).tobytes()]
            assert target == [digits.target[i], digits.target[j]]
            used[name] |= {i, j}
        # the whole canvas, checked on a sample: top-left digit at [0:8, 0:8], bottom-right at [4:12, 4:12], max
        for canvas in canvases[:50]:
            i = top_keys[np.concatenate([canvas[:4, :8].ravel(), canvas[4:8, :4].ravel()]).tobytes()]
            j = bottom_keys[np.concatenate([canvas[8:, 4:].ravel(), canvas[4:8, 8:].ravel()]).tobytes()]
            np.testing.assert_array_equal(canvas, _reference_overlay(images[i], images[j], 2))
            other_zero = np.pad(images[j], ((4, 0), (4, 0)))[:8, :8] == 0
            np.testing.assert_array_equal(canvas[:8, :8][other_zero], images[i][other_zero])
    assert not used["test"] & used["train"] and not used["test"] & used["val"] and not used["train"] & used["val"]


def test_multidigits_is_seeded():
    a = multidigits.load(n_train=100, n_val=20, n_test=20, seed=0)
    b = multidigits.load(n_train=100, n_val=20, n_test=20, seed=0)
    c = multidigits.load(n_train=100, n_val=20, n_test=20, seed=1)
    assert torch.equal(a.train.inputs["image"], b.train.inputs["image"]) and torch.equal(a.val.targets, b.val.targets)
    assert not torch.equal(a.train.inputs["image"], c.train.inputs["image"])


@pytest.mark.parametrize(
    "params", [{"n_train": 0}, {"n_val": -1}, {"n_test": 1.5}, {"seed": 0.5}, {"n_train": 10**7, "n_test": 1}]
)
def test_multidigits_bad_sizes(params):
    with pytest.raises(ConfigError):
        multidigits.load(**params)
