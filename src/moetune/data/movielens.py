"""MovieLens in the COMET benchmark's layout: user/movie id pairs, a watch task and a rating task.

The folder holds three kinds of aligned, header-less CSV files, one row per (user, movie) pair:

    shared_features/shared_features_<split>.csv                              user_id,movie_id (0-based)
    watch_classification_targets/watch_classification_targets_<split>.csv    1 watched, 0 sampled unwatched
    rating_regression_targets/rating_regression_targets_<split>.csv          1..5 where watched, 0 where not

<split> is train, val (or validation) and test, as in the authors' repository (mazumder-lab/COMET,
data/datasets/movielens). Where only one split is present (e.g. /work/shared/data/movielens-comet
holds the test split only) it is split here with a fixed seed. The rating task is masked where the
pair was not watched, so its loss only sees real ratings.

The helpers ``check_fractions``, ``subsample`` and ``build_data`` are shared with movielens_1m.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from moetune.data.base import MultiTaskData, Split, Task, split_indices
from moetune.errors import ConfigError, DataError

TASKS = [Task("watch", "binary"), Task("rating", "regression")]
ENV_VAR = "MOETUNE_MOVIELENS_DIR"
DEFAULT_DIR = "../shared/data/movielens-comet"
SOURCE = (
    "the COMET benchmark's MovieLens files (repository mazumder-lab/COMET, data/datasets/movielens) "
    "or build them from MovieLens 1M ratings.dat with dataset=movielens_1m"
)

# kind -> number of columns; the folder and file stem are the kind's name
KINDS = {"shared_features": 2, "watch_classification_targets": 1, "rating_regression_targets": 1}
SPLIT_FILE_NAMES = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}


def load(
    path: str | None = None,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    max_rows: int | None = None,
    n_users: int = 6040,
    n_movies: int = 3952,
) -> MultiTaskData:
    """Load the COMET MovieLens files under `path` (None: $MOETUNE_MOVIELENS_DIR, else
    ../shared/data/movielens-comet relative to the working directory).

    fractions: train/val/test shares, used only when the folder holds a single split.
    max_rows: keep at most this many rows in all (a seeded random subset; None keeps all), for CPU-sized runs.
    n_users, n_movies: the id vocabularies (MovieLens 1M sizes); ids at or above them are errors.
    """
    fractions = check_fractions(fractions)
    check_seed(seed)
    _check_positive_int("n_users", n_users)
    _check_positive_int("n_movies", n_movies)
    if max_rows is not None:
        _check_positive_int("max_rows", max_rows)
    folder = Path(path if path is not None else os.environ.get(ENV_VAR, DEFAULT_DIR)).expanduser()
    files = _find_split_files(folder)
    parts = {split: _read_split(split, kind_files, n_users, n_movies) for split, kind_files in files.items()}

    rng = np.random.default_rng(seed)
    if len(parts) == 3:
        total = sum(len(p[0]) for p in parts.values())
        if max_rows is not None and total > max_rows:
            parts = {s: subsample(p, max(1, round(len(p[0]) * max_rows / total)), rng) for s, p in parts.items()}
    else:
        (only,) = parts.values()
        if max_rows is not None:
            only = subsample(only, max_rows, rng)
        parts = split_arrays(only, fractions, seed)
    return build_data("movielens", parts, n_users, n_movies)


# ---------------------------------------------------------------- shared with movielens_1m

Arrays = tuple[np.ndarray, np.ndarray, np.ndarray]  # ids (N x 2), watch (N,), rating (N,)


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    """Three positive shares summing to 1, else a ConfigError (raised before any file is read)."""
    try:
        values = tuple(float(f) for f in fractions)
    except (TypeError, ValueError):
        raise ConfigError(f"fractions must be three numbers (train, val, test), got {fractions!r}") from None
    if len(values) != 3 or not all(math.isfinite(f) and f > 0 for f in values) or abs(sum(values) - 1) > 1e-6:
        raise ConfigError(
            f"fractions must be three positive numbers summing to 1 (train, val, test), got {list(fractions)}"
        )
    return values


def check_seed(seed) -> None:
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"seed must be a non-negative integer, got {seed!r}")


def subsample(arrays: Arrays, n: int, rng: np.random.Generator) -> Arrays:
    """A random subset of n rows (all rows if there are fewer), in the original order."""
    n_rows = len(arrays[0])
    if n >= n_rows:
        return arrays
    keep = np.sort(rng.choice(n_rows, size=n, replace=False))
    return tuple(a[keep] for a in arrays)


def split_arrays(arrays: Arrays, fractions: Sequence[float], seed: int) -> dict[str, Arrays]:
    """A seeded random train/val/test split; every split must get at least one row."""
    n = len(arrays[0])
    idx = split_indices(n, tuple(fractions), seed)
    if any(len(i) == 0 for i in idx):
        raise ConfigError(f"{n} rows are too few to split by fractions {list(fractions)}: a split would be empty")
    return {name: tuple(a[i.numpy()] for a in arrays) for name, i in zip(("train", "val", "test"), idx, strict=False)}


def build_data(name: str, parts: dict[str, Arrays], n_users: int, n_movies: int) -> MultiTaskData:
    """MultiTaskData from per-split (ids, watch, rating) arrays: the rating is masked where not watched,
    and the user id is the routing id (hash routing sends each user to one expert)."""
    splits = {}
    for split_name in ("train", "val", "test"):
        ids, watch, rating = parts[split_name]
        watched = torch.from_numpy(np.asarray(watch) == 1)
        splits[split_name] = Split(
            inputs={"ids": torch.as_tensor(np.asarray(ids, dtype=np.int64))},
            targets=torch.as_tensor(np.stack([watch, rating], axis=1).astype(np.float32)),
            masks=torch.stack([torch.ones_like(watched), watched], dim=1),
            routing_ids=torch.as_tensor(np.asarray(ids[:, 0], dtype=np.int64)),
        )
    return MultiTaskData(
        name=name,
        tasks=list(TASKS),
        train=splits["train"],
        val=splits["val"],
        test=splits["test"],
        id_cardinalities=[n_users, n_movies],
        n_routing_ids=n_users,
    )


def read_table(path: Path, n_cols: int, dtype: type, sep: str = ",", names: Sequence[str] | None = None) -> np.ndarray:
    """Read a header-less table fast with pandas; on any problem find and name the first bad line.

    Blank lines are kept as rows (and so are errors), hence row i is line i + 1 of the file.
    sep: the field separator; another than "," (ratings.dat's "::") is swapped for "," first so
    that pandas' fast C parser can read it, after checking that no line holds a stray ",".
    """
    data = path.read_bytes()
    if sep != ",":
        if b"," in data:
            _raise_first_bad_line(path, n_cols, dtype, sep, names)
        data = data.replace(sep.encode(), b",")
    try:
        frame = pd.read_csv(io.BytesIO(data), header=None, dtype=dtype, skip_blank_lines=False, engine="c")
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file is empty") from None
    except (ValueError, pd.errors.ParserError) as exc:
        _raise_first_bad_line(path, n_cols, dtype, sep, names)
        raise DataError(f"{path}: cannot be read as {n_cols} {dtype.__name__} column(s): {exc}") from None
    if frame.shape[1] != n_cols:
        _raise_first_bad_line(path, n_cols, dtype, sep, names)
        raise DataError(f"{path}: expected {n_cols} column(s), found {frame.shape[1]}")
    return frame.to_numpy()


def first_bad_row(bad: np.ndarray) -> int:
    """Index of the first True in a boolean row mask."""
    return int(np.flatnonzero(bad)[0])


# ---------------------------------------------------------------- internals


def _check_positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def _find_split_files(folder: Path) -> dict[str, dict[str, Path]]:
    """split -> kind -> file, for the splits whose three files are all present."""
    if not folder.is_dir():
        raise DataError(
            f"MovieLens folder {folder.resolve()} does not exist (set path=..., or ${ENV_VAR}; "
            f"default {DEFAULT_DIR} from the working directory); expected {_layout()} from {SOURCE}"
        )
    found: dict[str, dict[str, Path]] = {}
    for split, stems in SPLIT_FILE_NAMES.items():
        kind_files = {}
        for kind in KINDS:
            candidates = [folder / kind / f"{kind}_{stem}.csv" for stem in stems]
            existing = [c for c in candidates if c.is_file()]
            if len(existing) > 1:
                raise DataError(f"both {existing[0]} and {existing[1]} exist; keep one")
            if existing:
                kind_files[kind] = existing[0]
        if kind_files and len(kind_files) < len(KINDS):
            missing = [str(folder / k / f"{k}_{stems[0]}.csv") for k in KINDS if k not in kind_files]
            raise DataError(
                f"MovieLens split {split!r} is incomplete: missing {', '.join(missing)} "
                f"(its aligned files are {_layout(split)}); from {SOURCE}"
            )
        if kind_files:
            found[split] = kind_files
    if not found:
        raise DataError(f"no MovieLens files in {folder.resolve()}: expected {_layout()} from {SOURCE}")
    if len(found) == 2:
        raise DataError(
            f"{folder}: found the {' and '.join(found)} splits only; give all three "
            f"(train, val, test) or exactly one (it is then split by fractions)"
        )
    return found


def _layout(split: str = "<split>") -> str:
    return ", ".join(f"{k}/{k}_{split}.csv" for k in KINDS)


def _read_split(split: str, files: dict[str, Path], n_users: int, n_movies: int) -> Arrays:
    ids = read_table(files["shared_features"], 2, np.int64, names=["user_id", "movie_id"])
    watch = read_table(files["watch_classification_targets"], 1, np.float64, names=["watch"])[:, 0]
    rating = read_table(files["rating_regression_targets"], 1, np.float64, names=["rating"])[:, 0]
    counts = {p.name: len(a) for p, a in zip(files.values(), (ids, watch, rating), strict=False)}
    if len(set(counts.values())) > 1:
        raise DataError(
            f"MovieLens split {split!r}: the aligned files have different row counts: "
            + ", ".join(f"{name} {n}" for name, n in counts.items())
        )
    for col, (what, card, param) in enumerate((("user_id", n_users, "n_users"), ("movie_id", n_movies, "n_movies"))):
        bad = (ids[:, col] < 0) | (ids[:, col] >= card)
        if bad.any():
            i = first_bad_row(bad)
            raise DataError(
                f"{files['shared_features']}, line {i + 1}: {what} {ids[i, col]} is outside the "
                f"vocabulary [0, {card}) ({param}={card}; raise it if this is a larger MovieLens)"
            )
    bad = ~np.isin(watch, (0, 1))
    if bad.any():
        i = first_bad_row(bad)
        raise DataError(
            f"{files['watch_classification_targets']}, line {i + 1}: watch label {watch[i]:g} is not 0 or 1"
        )
    bad = np.where(watch == 1, ~np.isin(rating, (1, 2, 3, 4, 5)), rating != 0)
    if bad.any():
        i = first_bad_row(bad)
        expected = "a rating 1..5 (the pair was watched)" if watch[i] == 1 else "0 (the pair was not watched)"
        raise DataError(
            f"{files['rating_regression_targets']}, line {i + 1}: rating {rating[i]:g}, expected {expected}"
        )
    return ids, watch, rating


def _raise_first_bad_line(path: Path, n_cols: int, dtype: type, sep: str, names: Sequence[str] | None) -> None:
    """Scan the file line by line (slow, only after a fast read failed) and raise on the first bad line."""
    convert: Callable[[str], object] = int if np.issubdtype(dtype, np.integer) else float
    kind = "an integer" if convert is int else "a number"
    with open(path, encoding="utf-8", errors="replace", newline="") as handle:
        for lineno, line in enumerate(handle, start=1):
            line = line.rstrip("\r\n")
            fields = line.split(sep)
            if len(fields) != n_cols:
                what = "an empty line" if not line.strip() else f"{len(fields)} field(s)"
                raise DataError(
                    f"{path}, line {lineno}: expected {n_cols} field(s) separated by {sep!r}, "
                    f"found {what}: {line[:80]!r}"
                )
            for k, field in enumerate(fields):
                try:
                    convert(field)
                except ValueError:
                    label = names[k] if names and k < len(names) else f"field {k + 1}"
                    raise DataError(f"{path}, line {lineno}: {label} {field!r} is not {kind}") from None
