"""MovieLens datasets: the COMET-layout files (real shared data and small hand-made folders) and raw ratings.dat."""

from __future__ import annotations

import inspect
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from moetune.data import load_dataset, movielens, movielens_1m
from moetune.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared/data/movielens-comet"


def _yaml_matches_signature(config: str, module) -> dict:
    conf = yaml.safe_load((REPO / "conf/dataset" / config).read_text())
    params = {k: v for k, v in conf.items() if k != "name"}
    defaults = {name: p.default for name, p in inspect.signature(module.load).parameters.items()}
    assert set(params) == set(defaults)
    for name, value in params.items():
        default = list(defaults[name]) if isinstance(defaults[name], tuple) else defaults[name]
        assert value == default, name
    return conf


def test_yaml_files_list_load_params_with_defaults():
    assert _yaml_matches_signature("movielens.yaml", movielens)["name"] == "movielens"
    assert _yaml_matches_signature("movielens_1m.yaml", movielens_1m)["name"] == "movielens_1m"


# ---------------------------------------------------------------- the shared COMET test split


@pytest.fixture(scope="module")
def shared():
    if not (SHARED / "shared_features").is_dir():
        pytest.skip("../shared/data/movielens-comet is absent: the real MovieLens checks need it")
    return load_dataset("movielens", path=str(SHARED))


def test_shared_sizes_and_splits(shared):
    sizes = {name: len(split) for name, split in shared.splits.items()}
    assert sum(sizes.values()) == 199_950
    assert sizes == {"train": 159_960, "val": 19_995, "test": 19_995}
    assert [t.name for t in shared.tasks] == ["watch", "rating"]
    assert [t.kind for t in shared.tasks] == ["binary", "regression"]
    assert shared.id_cardinalities == [6040, 3952] and shared.n_routing_ids == 6040


def test_shared_labels_masks_and_ids(shared):
    for split in shared.splits.values():
        watch, rating = split.targets[:, 0], split.targets[:, 1]
        assert abs(watch.mean().item() - 0.5) < 0.02
        assert set(watch.unique().tolist()) == {0.0, 1.0}
        assert split.masks[:, 0].all()
        assert torch.equal(split.masks[:, 1], watch == 1)
        assert set(rating[watch == 1].unique().tolist()) == {1.0, 2.0, 3.0, 4.0, 5.0}
        assert (rating[watch == 0] == 0).all()
        ids = split.inputs["ids"]
        assert ids.dtype == torch.long and ids.shape[1] == 2
        assert ids.min() >= 0 and ids[:, 0].max() < 6040 and ids[:, 1].max() < 3952
        assert torch.equal(split.routing_ids, ids[:, 0])


def test_shared_split_is_deterministic_under_the_seed(shared):
    again = movielens.load(path=str(SHARED))
    for name in ("train", "val", "test"):
        assert torch.equal(again.splits[name].inputs["ids"], shared.splits[name].inputs["ids"])
        assert torch.equal(again.splits[name].targets, shared.splits[name].targets)
    other = movielens.load(path=str(SHARED), seed=1)
    assert not torch.equal(other.train.inputs["ids"][:100], shared.train.inputs["ids"][:100])


def test_shared_max_rows_subsample_and_env_default(shared, monkeypatch):
    monkeypatch.setenv("MOETUNE_MOVIELENS_DIR", str(SHARED))
    small = movielens.load(max_rows=1000)
    assert {n: len(s) for n, s in small.splits.items()} == {"train": 800, "val": 100, "test": 100}
    again = movielens.load(max_rows=1000)
    assert torch.equal(small.test.inputs["ids"], again.test.inputs["ids"])


# ---------------------------------------------------------------- hand-made COMET folders


def _write_split(folder: Path, split: str, ids, watch, rating, overrides: dict | None = None) -> None:
    """Write the three aligned files of one split; overrides: kind -> raw file text."""
    texts = {
        "shared_features": "".join(f"{u},{m}\n" for u, m in ids),
        "watch_classification_targets": "".join(f"{w}\n" for w in watch),
        "rating_regression_targets": "".join(f"{r}\n" for r in rating),
    }
    texts.update(overrides or {})
    for kind, text in texts.items():
        (folder / kind).mkdir(parents=True, exist_ok=True)
        (folder / kind / f"{kind}_{split}.csv").write_text(text)


def _rows(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = np.stack([rng.integers(0, 6040, n), rng.integers(0, 3952, n)], axis=1)
    watch = np.arange(n) % 2
    rating = np.where(watch == 1, rng.integers(1, 6, n), 0)
    return ids.tolist(), watch.tolist(), rating.tolist()


@pytest.mark.parametrize("middle", ["val", "validation"])
def test_three_given_splits_are_used_as_they_are(tmp_path, middle):
    for split, n, seed in (("train", 20, 0), (middle, 6, 1), ("test", 4, 2)):
        _write_split(tmp_path, split, *_rows(n, seed))
    data = load_dataset("movielens", path=str(tmp_path))
    assert {n: len(s) for n, s in data.splits.items()} == {"train": 20, "val": 6, "test": 4}
    ids, watch, rating = _rows(6, 1)
    assert data.val.inputs["ids"].tolist() == ids
    assert data.val.targets.tolist() == [[float(w), float(r)] for w, r in zip(watch, rating, strict=False)]
    assert data.val.masks[:, 1].tolist() == [w == 1 for w in watch]


def test_max_rows_keeps_the_share_of_given_splits(tmp_path):
    for split, n, seed in (("train", 60, 0), ("val", 20, 1), ("test", 20, 2)):
        _write_split(tmp_path, split, *_rows(n, seed))
    data = movielens.load(path=str(tmp_path), max_rows=50)
    assert {n: len(s) for n, s in data.splits.items()} == {"train": 30, "val": 10, "test": 10}
    test_rows = set(map(tuple, _rows(20, 2)[0]))
    assert set(map(tuple, data.test.inputs["ids"].tolist())) <= test_rows


def test_single_split_is_split_by_fractions(tmp_path):
    _write_split(tmp_path, "test", *_rows(50))
    data = movielens.load(path=str(tmp_path), fractions=[0.6, 0.2, 0.2], seed=3)
    assert {n: len(s) for n, s in data.splits.items()} == {"train": 30, "val": 10, "test": 10}
    all_ids = torch.cat([s.inputs["ids"] for s in data.splits.values()])
    assert sorted(map(tuple, all_ids.tolist())) == sorted(map(tuple, _rows(50)[0]))


def test_missing_folder_names_the_path_and_the_source(tmp_path):
    with pytest.raises(DataError) as err:
        movielens.load(path=str(tmp_path / "nowhere"))
    message = str(err.value)
    assert "nowhere" in message and "mazumder-lab/COMET" in message and "movielens_1m" in message
    with pytest.raises(DataError, match="shared_features/shared_features_<split>.csv"):
        movielens.load(path=str(tmp_path))  # exists, but empty


def test_incomplete_split_names_the_missing_file(tmp_path):
    _write_split(tmp_path, "test", *_rows(10))
    (tmp_path / "watch_classification_targets" / "watch_classification_targets_test.csv").unlink()
    with pytest.raises(DataError, match="watch_classification_targets_test.csv"):
        movielens.load(path=str(tmp_path))


@pytest.mark.parametrize(
    "text, line",
    [
        ("1,2\n3,4\n5,x\n7,8\n", 3),  # non-integer field
        ("1,2\n3,4,9\n5,6\n7,8\n", 2),  # too many fields
        ("1,2\n3,4\n5,6\n7\n", 4),  # too few fields
        ("1,2\n\n5,6\n7,8\n", 2),  # blank line
        ("1.5,2\n3,4\n5,6\n7,8\n", 1),  # a float id
    ],
)
def test_malformed_line_names_file_and_line(tmp_path, text, line):
    ids, watch, rating = _rows(4)
    _write_split(tmp_path, "test", ids, watch, rating, {"shared_features": text})
    with pytest.raises(DataError) as err:
        movielens.load(path=str(tmp_path))
    assert "shared_features_test.csv" in str(err.value) and f"line {line}:" in str(err.value)


def test_malformed_target_line(tmp_path):
    ids, watch, rating = _rows(4)
    _write_split(tmp_path, "test", ids, watch, rating, {"rating_regression_targets": "0\n4\n0\nfive\n"})
    with pytest.raises(DataError, match=r"rating_regression_targets_test.csv, line 4: .*'five'"):
        movielens.load(path=str(tmp_path))


def test_row_count_mismatch(tmp_path):
    ids, watch, rating = _rows(10)
    _write_split(tmp_path, "test", ids, watch[:9], rating)
    with pytest.raises(DataError, match="different row counts.*watch_classification_targets_test.csv 9"):
        movielens.load(path=str(tmp_path))


@pytest.mark.parametrize("column, value, what", [(0, 6040, "user_id"), (1, 3952, "movie_id"), (0, -1, "user_id")])
def test_id_outside_the_vocabulary(tmp_path, column, value, what):
    ids, watch, rating = _rows(6)
    ids[4][column] = value
    _write_split(tmp_path, "test", ids, watch, rating)
    with pytest.raises(DataError, match=rf"line 5: {what} {value} is outside the vocabulary"):
        movielens.load(path=str(tmp_path))


def test_smaller_vocabulary_is_enforced(tmp_path):
    ids = [[0, 0], [1, 2], [9, 1], [3, 3]]
    _write_split(tmp_path, "test", ids, [1, 0, 1, 0], [5, 0, 3, 0])
    with pytest.raises(DataError, match="line 3: user_id 9.*n_users=5"):
        movielens.load(path=str(tmp_path), n_users=5, n_movies=10, fractions=[0.5, 0.25, 0.25])
    data = movielens.load(path=str(tmp_path), n_users=10, n_movies=10, fractions=[0.5, 0.25, 0.25])
    assert data.id_cardinalities == [10, 10] and data.n_routing_ids == 10


@pytest.mark.parametrize(
    "watch, rating, line, pattern",
    [
        ([0, 1, 2, 0], [0, 3, 0, 0], 3, "watch label 2 is not 0 or 1"),
        ([0, 1, 1, 0], [0, 3, 6, 0], 3, "rating 6, expected a rating 1..5"),
        ([0, 1, 1, 0], [0, 0, 4, 0], 2, "rating 0, expected a rating 1..5"),
        ([0, 1, 1, 0], [0, 3, 4, 2], 4, r"rating 2, expected 0 \(the pair was not watched\)"),
    ],
)
def test_labels_outside_their_range(tmp_path, watch, rating, line, pattern):
    ids, _, _ = _rows(4)
    _write_split(tmp_path, "test", ids, watch, rating)
    with pytest.raises(DataError, match=rf"line {line}: {pattern}"):
        movielens.load(path=str(tmp_path))


def test_two_of_three_splits_is_an_error(tmp_path):
    _write_split(tmp_path, "train", *_rows(10))
    _write_split(tmp_path, "test", *_rows(10))
    with pytest.raises(DataError, match="train and test splits only"):
        movielens.load(path=str(tmp_path))


@pytest.mark.parametrize(
    "params",
    [
        {"fractions": [0.8, 0.1]},
        {"fractions": [0.8, 0.3, -0.1]},
        {"fractions": [0.5, 0.2, 0.2]},
        {"fractions": "abc"},
        {"max_rows": 0},
        {"max_rows": 5},
        {"n_users": 0},
        {"n_movies": -3},
        {"seed": "x"},
    ],
)
def test_bad_params_are_config_errors(tmp_path, params):
    _write_split(tmp_path, "test", *_rows(10))
    with pytest.raises(ConfigError):
        movielens.load(path=str(tmp_path), **params)


def test_unknown_param_is_a_config_error():
    with pytest.raises(ConfigError, match="conf/dataset/movielens.yaml"):
        load_dataset("movielens", max_row=3)


# ---------------------------------------------------------------- raw MovieLens 1M ratings.dat

USERS = [3, 8, 15, 42, 7, 600, 23]
MOVIES = [10, 20, 35, 99, 120, 2000, 1, 5, 77, 3000]


def _ratings(n: int = 12, seed: int = 0):
    """n distinct (user, movie, rating, timestamp) rows over USERS x MOVIES."""
    rng = np.random.default_rng(seed)
    pairs = rng.choice(len(USERS) * len(MOVIES), size=n, replace=False)
    return [
        (USERS[p // len(MOVIES)], MOVIES[p % len(MOVIES)], int(rng.integers(1, 6)), 978300000 + i)
        for i, p in enumerate(pairs)
    ]


def _write_ratings(folder: Path, rows=None, text: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    file = folder / "ratings.dat"
    file.write_text(text if text is not None else "".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in rows))
    return file


def _all_rows(data):
    ids = torch.cat([s.inputs["ids"] for s in data.splits.values()])
    targets = torch.cat([s.targets for s in data.splits.values()])
    masks = torch.cat([s.masks for s in data.splits.values()])
    return ids, targets, masks


def test_ratings_positives_negatives_and_dense_ids(tmp_path):
    rows = _ratings(12)
    _write_ratings(tmp_path / "ml", rows)
    data = load_dataset("movielens_1m", path=str(tmp_path / "ml"), cache_dir=str(tmp_path / "cache"))
    users = sorted({u for u, _, _, _ in rows})
    movies = sorted({m for _, m, _, _ in rows})
    assert data.id_cardinalities == [len(users), len(movies)] and data.n_routing_ids == len(users)
    ids, targets, masks = _all_rows(data)
    assert len(ids) == 24 and ids.min() == 0
    assert ids[:, 0].max() == len(users) - 1 and ids[:, 1].max() == len(movies) - 1
    watched = targets[:, 0] == 1
    assert watched.sum() == 12
    # positives: exactly the rated pairs with their ratings, through the sorted dense remap
    positives = {
        (users[u], movies[m], r) for (u, m), r in zip(ids[watched].tolist(), targets[watched, 1].tolist(), strict=False)
    }
    assert positives == {(u, m, float(r)) for u, m, r, _ in rows}
    # negatives: distinct unrated pairs, rating 0 and masked
    rated = {(u, m) for u, m, _, _ in rows}
    negatives = [(users[u], movies[m]) for u, m in ids[~watched].tolist()]
    assert len(set(negatives)) == 12 and not set(negatives) & rated
    assert (targets[~watched, 1] == 0).all()
    assert torch.equal(masks[:, 1], watched) and masks[:, 0].all()
    assert torch.equal(data.train.routing_ids, data.train.inputs["ids"][:, 0])


@pytest.mark.parametrize("ratio, expected", [(0.5, 10), (2.0, 40)])
def test_negative_ratio_is_respected(tmp_path, ratio, expected):
    _write_ratings(tmp_path, _ratings(20))
    data = movielens_1m.load(path=str(tmp_path / "ratings.dat"), negative_ratio=ratio, cache_dir=str(tmp_path / "c"))
    _, targets, _ = _all_rows(data)
    assert int((targets[:, 0] == 0).sum()) == expected and int((targets[:, 0] == 1).sum()) == 20


def test_max_ratings_subsamples_the_ratings(tmp_path):
    _write_ratings(tmp_path, _ratings(25))
    data = movielens_1m.load(path=str(tmp_path), max_ratings=10, cache_dir=str(tmp_path / "c"))
    _, targets, _ = _all_rows(data)
    assert int((targets[:, 0] == 1).sum()) == 10 and len(targets) == 20


def test_cache_is_written_then_read(tmp_path, monkeypatch, caplog):
    _write_ratings(tmp_path / "ml", _ratings(15))
    caplog.set_level(logging.INFO, logger="moetune.data.movielens_1m")
    first = movielens_1m.load(path=str(tmp_path / "ml"))
    cached = list((tmp_path / "ml" / ".moetune_cache").glob("movielens_1m-*.npz"))
    assert len(cached) == 1 and "wrote cache" in caplog.text
    assert not list((tmp_path / "ml" / ".moetune_cache").glob(".tmp-*"))  # the temp file was renamed
    mtime = cached[0].stat().st_mtime_ns
    caplog.clear()

    def no_parsing(*args, **kwargs):
        raise AssertionError("ratings.dat was parsed although the cache holds the arrays")

    monkeypatch.setattr(movielens_1m, "read_ratings", no_parsing)
    second = movielens_1m.load(path=str(tmp_path / "ml"))
    assert "cache hit" in caplog.text and str(cached[0]) in caplog.text
    assert cached[0].stat().st_mtime_ns == mtime
    for name in ("train", "val", "test"):
        a, b = first.splits[name], second.splits[name]
        assert torch.equal(a.inputs["ids"], b.inputs["ids"]) and torch.equal(a.targets, b.targets)
        assert torch.equal(a.masks, b.masks)
    assert first.id_cardinalities == second.id_cardinalities


def test_cache_key_follows_params_and_file(tmp_path, caplog):
    file = _write_ratings(tmp_path, _ratings(15))
    cache = tmp_path / "c"
    caplog.set_level(logging.INFO, logger="moetune.data.movielens_1m")
    movielens_1m.load(path=str(file), cache_dir=str(cache))
    movielens_1m.load(path=str(file), cache_dir=str(cache), seed=1)
    assert len(list(cache.glob("*.npz"))) == 2
    caplog.clear()
    _write_ratings(tmp_path, _ratings(16))  # the file changed: its size differs
    os.utime(file, ns=(1, 1))
    data = movielens_1m.load(path=str(file), cache_dir=str(cache))
    assert "cache hit" not in caplog.text and len(list(cache.glob("*.npz"))) == 3
    assert int((_all_rows(data)[1][:, 0] == 1).sum()) == 16


def test_unwritable_cache_folder_falls_back_to_home(tmp_path, monkeypatch):
    _write_ratings(tmp_path / "ml", _ratings(12))
    (tmp_path / "ml" / ".moetune_cache").write_text("not a folder")  # mkdir there fails
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    movielens_1m.load(path=str(tmp_path / "ml"))
    assert len(list((tmp_path / "home" / ".cache" / "moetune").glob("movielens_1m-*.npz"))) == 1


def test_ratings_missing_file_names_grouplens(tmp_path):
    with pytest.raises(DataError, match="ratings.dat.*grouplens.org"):
        movielens_1m.load(path=str(tmp_path / "ml-1m"))
    with pytest.raises(DataError, match="ratings.dat does not exist"):
        movielens_1m.load(path=str(tmp_path))  # a folder without ratings.dat


@pytest.mark.parametrize(
    "text, line, pattern",
    [
        ("1::10::5::1\n2::10::x::2\n", 2, "Rating 'x' is not an integer"),
        ("1::10::5::1\n2::10::4::2\n2::11::4\n", 3, "expected 4 field"),
        ("1::10::5::1\n2,10,4,2\n", 2, "expected 4 field"),
        ("1::10::5::1\n\n2::11::4::3\n", 2, "an empty line"),
    ],
)
def test_ratings_malformed_line(tmp_path, text, line, pattern):
    _write_ratings(tmp_path, text=text)
    with pytest.raises(DataError, match=rf"ratings.dat, line {line}: .*{pattern}"):
        movielens_1m.load(path=str(tmp_path), cache_dir=str(tmp_path / "c"))


@pytest.mark.parametrize("rating", [0, 6])
def test_ratings_outside_1_to_5(tmp_path, rating):
    _write_ratings(tmp_path, text=f"1::10::5::1\n1::11::3::1\n2::10::{rating}::2\n")
    with pytest.raises(DataError, match=rf"ratings.dat, line 3: rating {rating} is outside 1..5"):
        movielens_1m.load(path=str(tmp_path), cache_dir=str(tmp_path / "c"))


def test_ratings_repeated_pair(tmp_path):
    _write_ratings(tmp_path, text="1::10::5::1\n2::11::3::1\n1::10::4::2\n")
    with pytest.raises(DataError, match="lines 1 and 3: the same"):
        movielens_1m.load(path=str(tmp_path), cache_dir=str(tmp_path / "c"))


@pytest.mark.parametrize(
    "params",
    [
        {"negative_ratio": 0},
        {"negative_ratio": -1.0},
        {"negative_ratio": 100.0},
        {"max_ratings": 0},
        {"fractions": [1.0, 0.0, 0.0]},
        {"seed": -1},
    ],
)
def test_ratings_bad_params(tmp_path, params):
    _write_ratings(tmp_path, _ratings(12))
    with pytest.raises(ConfigError):
        movielens_1m.load(path=str(tmp_path), cache_dir=str(tmp_path / "c"), **params)
