"""MovieLens 1M from GroupLens' raw ratings.dat, turned into the COMET watch/rating tasks.

ratings.dat lines are ``UserID::MovieID::Rating::Timestamp``. Every rated pair is a positive
(watch = 1) with its rating; `negative_ratio` times as many unrated (user, movie) pairs, drawn
uniformly with a seed among the users and movies seen, are negatives (watch = 0, rating masked).
Ids are remapped densely to 0-based (sorted ids seen), so embeddings hold no unused rows; note the
COMET files instead use the raw id - 1. Building takes a few seconds, so the arrays are cached on
disk, keyed by the file's size and mtime and the params, and written atomically (temp file +
rename) so that a crash never leaves a half-written cache and the next run starts at once.

Data: https://grouplens.org/datasets/movielens/1m/ (ml-1m.zip); research use, cite Harper &
Konstan 2015.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from moetune.data.base import MultiTaskData
from moetune.data.movielens import (
    Arrays,
    build_data,
    check_fractions,
    check_seed,
    first_bad_row,
    read_table,
    split_arrays,
)
from moetune.errors import ConfigError, DataError

log = logging.getLogger(__name__)

ENV_VAR = "MOETUNE_MOVIELENS_1M_DIR"
DEFAULT_DIR = "ml-1m"
SOURCE = "MovieLens 1M from GroupLens (https://grouplens.org/datasets/movielens/1m/, ml-1m.zip holds ml-1m/ratings.dat)"
CACHE_VERSION = 1  # bump when the construction changes, so old caches are not reused


def load(
    path: str | None = None,
    negative_ratio: float = 1.0,
    fractions: Sequence[float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    max_ratings: int | None = None,
    cache_dir: str | None = None,
) -> MultiTaskData:
    """Build (or read from the cache) the watch/rating dataset from ratings.dat.

    path: the folder holding ratings.dat, or the file itself (None: $MOETUNE_MOVIELENS_1M_DIR, else ./ml-1m).
    negative_ratio: unrated pairs sampled per rated pair.
    max_ratings: keep a seeded random subset of this many ratings (None keeps all), for CPU-sized runs.
    cache_dir: where the built arrays go (None: <folder of ratings.dat>/.moetune_cache, or
        ~/.cache/moetune when that folder is not writable).
    """
    fractions = check_fractions(fractions)
    check_seed(seed)
    if (
        isinstance(negative_ratio, bool)
        or not isinstance(negative_ratio, (int, float))
        or not math.isfinite(negative_ratio)
        or negative_ratio <= 0
    ):
        raise ConfigError(f"negative_ratio must be a positive number, got {negative_ratio!r}")
    if max_ratings is not None and (
        isinstance(max_ratings, bool) or not isinstance(max_ratings, int) or max_ratings <= 0
    ):
        raise ConfigError(f"max_ratings must be a positive integer or null, got {max_ratings!r}")
    ratings_file = _ratings_file(path)
    params = {
        "negative_ratio": float(negative_ratio),
        "fractions": list(fractions),
        "seed": int(seed),
        "max_ratings": max_ratings,
    }

    stat = ratings_file.stat()
    key_text = json.dumps(
        {
            "version": CACHE_VERSION,
            "file": str(ratings_file.resolve()),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            **params,
        },
        sort_keys=True,
    )
    key = hashlib.sha256(key_text.encode()).hexdigest()[:20]
    cached = _read_cache(cache_dir, ratings_file, key)
    if cached is not None:
        parts, n_users, n_movies = cached
    else:
        parts, n_users, n_movies = _build(ratings_file, **params)
        _write_cache(cache_dir, ratings_file, key, parts, n_users, n_movies)
    return build_data("movielens_1m", parts, n_users, n_movies)


def cache_file(cache_dir: str | Path, key: str) -> Path:
    return Path(cache_dir) / f"movielens_1m-{key}.npz"


# ---------------------------------------------------------------- building


def read_ratings(ratings_file: Path) -> np.ndarray:
    """The N x 4 int64 table of ratings.dat, validated: 4 integer fields a line, ratings 1..5, no repeated pair."""
    table = read_table(ratings_file, 4, np.int64, sep="::", names=["UserID", "MovieID", "Rating", "Timestamp"])
    bad = (table[:, 2] < 1) | (table[:, 2] > 5)
    if bad.any():
        i = first_bad_row(bad)
        raise DataError(f"{ratings_file}, line {i + 1}: rating {table[i, 2]} is outside 1..5")
    bad = (table[:, 0] < 0) | (table[:, 1] < 0)
    if bad.any():
        i = first_bad_row(bad)
        raise DataError(f"{ratings_file}, line {i + 1}: negative user or movie id")
    pair = table[:, 0] * (int(table[:, 1].max()) + 1) + table[:, 1]
    _, first, counts = np.unique(pair, return_index=True, return_counts=True)
    if (counts > 1).any():
        repeated = np.isin(pair, pair[first[counts > 1]])
        lines = np.flatnonzero(repeated)[:2] + 1
        raise DataError(f"{ratings_file}, lines {lines[0]} and {lines[1]}: the same (user, movie) pair is rated twice")
    return table


def _build(
    ratings_file: Path, negative_ratio: float, fractions: Sequence[float], seed: int, max_ratings: int | None
) -> tuple[dict[str, Arrays], int, int]:
    table = read_ratings(ratings_file)
    rng = np.random.default_rng(seed)
    if max_ratings is not None and max_ratings < len(table):
        table = table[np.sort(rng.choice(len(table), size=max_ratings, replace=False))]
    users, user_idx = np.unique(table[:, 0], return_inverse=True)
    movies, movie_idx = np.unique(table[:, 1], return_inverse=True)
    n_users, n_movies = len(users), len(movies)

    rated = user_idx * n_movies + movie_idx
    n_neg = int(round(negative_ratio * len(table)))
    n_free = n_users * n_movies - len(table)
    if n_neg > n_free:
        raise ConfigError(
            f"negative_ratio={negative_ratio} asks for {n_neg} unrated pairs but only {n_free} exist "
            f"({n_users} users x {n_movies} movies - {len(table)} ratings)"
        )
    negatives = _sample_unrated(rng, rated, n_users * n_movies, n_neg)

    ids = np.concatenate(
        [np.stack([user_idx, movie_idx], axis=1), np.stack([negatives // n_movies, negatives % n_movies], axis=1)]
    ).astype(np.int64)
    watch = np.concatenate([np.ones(len(table)), np.zeros(n_neg)]).astype(np.float32)
    rating = np.concatenate([table[:, 2], np.zeros(n_neg)]).astype(np.float32)
    log.info(
        "movielens_1m: %d ratings + %d sampled negatives, %d users, %d movies", len(table), n_neg, n_users, n_movies
    )
    return split_arrays((ids, watch, rating), fractions, seed), n_users, n_movies


def _sample_unrated(rng: np.random.Generator, rated: np.ndarray, n_pairs: int, n: int) -> np.ndarray:
    """n distinct pair codes in [0, n_pairs) not in `rated`, uniformly at random (rejection in batches)."""
    rated = np.unique(rated)
    chosen = np.empty(0, dtype=np.int64)
    while len(chosen) < n:
        need = n - len(chosen)
        draw = rng.integers(0, n_pairs, size=int(need * 1.2) + 16)
        draw = draw[~np.isin(draw, rated) & ~np.isin(draw, chosen)]
        _, first = np.unique(draw, return_index=True)
        chosen = np.concatenate([chosen, draw[np.sort(first)][:need]])
    return chosen


# ---------------------------------------------------------------- cache


def _ratings_file(path: str | None) -> Path:
    given = Path(path if path is not None else os.environ.get(ENV_VAR, DEFAULT_DIR)).expanduser()
    file = given / "ratings.dat" if given.is_dir() else given
    if not file.is_file():
        raise DataError(
            f"MovieLens 1M ratings file {file.resolve()} does not exist (path=... names the folder with "
            f"ratings.dat or the file; default ${ENV_VAR} or ./{DEFAULT_DIR}); get it from {SOURCE}"
        )
    return file


def _cache_dirs(cache_dir: str | None, ratings_file: Path) -> list[Path]:
    if cache_dir is not None:
        return [Path(cache_dir).expanduser()]
    return [ratings_file.parent / ".moetune_cache", Path.home() / ".cache" / "moetune"]


def _read_cache(cache_dir: str | None, ratings_file: Path, key: str):
    for folder in _cache_dirs(cache_dir, ratings_file):
        file = cache_file(folder, key)
        if not file.is_file():
            continue
        try:
            with np.load(file) as z:
                parts = {s: (z[f"{s}_ids"], z[f"{s}_watch"], z[f"{s}_rating"]) for s in ("train", "val", "test")}
                n_users, n_movies = int(z["n_users"]), int(z["n_movies"])
        except (OSError, KeyError, ValueError) as exc:
            log.warning("movielens_1m: ignoring unreadable cache %s (%s); rebuilding", file, exc)
            continue
        log.info("movielens_1m: cache hit, read %s", file)
        return parts, n_users, n_movies
    return None


def _write_cache(
    cache_dir: str | None, ratings_file: Path, key: str, parts: dict[str, Arrays], n_users: int, n_movies: int
) -> Path | None:
    arrays = {
        f"{s}_{name}": a for s, p in parts.items() for name, a in zip(("ids", "watch", "rating"), p, strict=False)
    }
    for folder in _cache_dirs(cache_dir, ratings_file):
        tmp = None
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".tmp-", suffix=".npz", delete=False) as handle:
                tmp = Path(handle.name)
                np.savez(handle, n_users=n_users, n_movies=n_movies, **arrays)
            tmp.chmod(0o644)  # as readable as a normally written file, not the temp file's 0600
            target = cache_file(folder, key)
            os.replace(tmp, target)
            log.info("movielens_1m: wrote cache %s", target)
            return target
        except OSError as exc:
            if tmp is not None:
                tmp.unlink(missing_ok=True)
            log.warning("movielens_1m: cannot write the cache in %s (%s)", folder, exc)
    return None
