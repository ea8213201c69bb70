"""Budget-vs-quality curves: how good a model does a tuning budget of n trials buy?

From the N trials of a study, each with a validation score (the selection metric) and a test
score, the curve gives for every budget n the expected test score of the trial that n trials
would select by validation. Pure numpy, so it can be tested exactly and reused anywhere.

Estimators (each Curve names the one that produced it):

- ``expected_max_with_replacement``: random search. The n trials are drawn with replacement
  from the N observed ones. Sort by validation, best last; the best of n draws is the trial at
  rank i with probability (i/N)^n - ((i-1)/N)^n (Dodge et al. 2019, "Show Your Work").
- ``expected_max_without_replacement``: the same, drawing n of the N trials without
  replacement: rank i is the best with probability C(i-1, n-1) / C(N, n); n = 1..N.
- ``running_best``: adaptive samplers (TPE), whose trials are not exchangeable. The curve is the
  test score of the best-so-far trial (by validation) in trial order, averaged over seeds.

Ties in validation: tied trials form a group that shares its probability mass equally, so a
group contributes its mean test score (what a uniformly random tie-break gives on average).

Failed trials spend budget but give no model: they count in N and rank below every finished
trial. If all n draws are failed trials the budget yields no model. The curve is the expected
test score *conditional on at least one finished trial being drawn*; the probability that
none is drawn is returned beside it (``Curve.p_no_model``) so callers can show it. Where that
probability is 1 (e.g. without replacement, n <= number of failed trials) the value is NaN.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from moetune.errors import ConfigError

WITH_REPLACEMENT = "expected_max_with_replacement"
WITHOUT_REPLACEMENT = "expected_max_without_replacement"
RUNNING_BEST = "running_best"

_CHUNK_ELEMENTS = 4_000_000  # bound on the (resamples x budgets x groups) block built at once


@dataclass(init=False)
class Trials:
    """The trials of one study, in trial order.

    ``failed`` defaults to the trials whose validation score is not finite. ``seconds`` is the
    wall time per trial (failed ones included), used for the compute axis.
    """

    val: np.ndarray
    test: np.ndarray
    failed: np.ndarray  # always an array once built (given flags or not, non-finite val marks a failure)
    seconds: np.ndarray | None

    def __init__(self, val, test, failed=None, seconds=None) -> None:
        self.val = np.asarray(val, dtype=float).ravel()
        self.test = np.asarray(test, dtype=float).ravel()
        if self.val.shape != self.test.shape:
            raise ConfigError(f"val and test differ in length: {self.val.size} vs {self.test.size}")
        if failed is None:
            self.failed = ~np.isfinite(self.val)
        else:
            self.failed = np.asarray(failed, dtype=bool).ravel() | ~np.isfinite(self.val)
            if self.failed.shape != self.val.shape:
                raise ConfigError(f"failed has {self.failed.size} entries for {self.val.size} trials")
        if not np.all(np.isfinite(self.test[~self.failed])):
            raise ConfigError("a finished trial has a non-finite test score; mark it failed or drop it")
        self.seconds = None
        if seconds is not None:
            self.seconds = np.asarray(seconds, dtype=float).ravel()
            if self.seconds.shape != self.val.shape:
                raise ConfigError(f"seconds has {self.seconds.size} entries for {self.val.size} trials")

    @property
    def n(self) -> int:
        return self.val.size

    def mean_seconds(self) -> float:
        """Mean wall time of a trial, failed ones included (they spend compute too)."""
        if self.seconds is None or self.seconds.size == 0:
            return float("nan")
        return float(np.nanmean(self.seconds))


@dataclass
class Curve:
    """A budget-vs-quality curve: ``value[j]`` is the expected test score at ``budgets[j]`` trials.

    ``low``/``high`` is the confidence band (bootstrap over trials, or percentiles over seeds for
    running_best); ``compute_seconds[j]`` = budgets[j] x mean trial seconds; ``p_no_model[j]`` the
    probability that the budget selects no model because every trial drawn failed.
    """

    budgets: np.ndarray
    value: np.ndarray
    low: np.ndarray
    high: np.ndarray
    compute_seconds: np.ndarray
    p_no_model: np.ndarray
    estimator: str
    n_trials: int
    n_failed: int = 0
    level: float = 0.9

    def at(self, n: int) -> float:
        """The curve's value at budget n (NaN if n is not on the curve)."""
        hit = np.flatnonzero(self.budgets == n)
        return float(self.value[hit[0]]) if hit.size else float("nan")


def rank_groups(trials: Trials, val_higher_is_better: bool):
    """Tie groups of the finished trials, worst first: (group id per trial (-1 = failed), K)."""
    finished = ~trials.failed
    goodness = np.where(val_higher_is_better, trials.val, -trials.val)[finished]
    uniq, inverse = np.unique(goodness, return_inverse=True)  # ascending: worst group first
    gid = np.full(trials.n, -1)
    gid[finished] = inverse
    return gid, uniq.size


def _budgets(budgets, n_max: int, replacement: bool) -> np.ndarray:
    if budgets is None:
        return np.arange(1, n_max + 1)
    b = np.asarray(budgets, dtype=int).ravel()
    if b.size and (b.min() < 1 or (not replacement and b.max() > n_max)):
        raise ConfigError(f"budgets must lie in 1..{n_max if not replacement else 'inf'}, got {b.min()}..{b.max()}")
    return b


def _curves_from_counts(counts, tsum, n_failed, n_total, budgets, replacement):
    """Core: expected test of the selected trial, for R datasets described by group counts.

    counts, tsum: (R, K) trials per tie group and their summed test score, groups worst first;
    n_failed: (R,). Returns value (R, B) conditional on a finished draw, and p_no_model (R, B).

    With b = number of trials ranked at or below a group boundary, P(best of n <= b) is (b/N)^n
    with replacement and C(b, n)/C(N, n) = prod_{j<n} (b-j)/(N-j) without; both are built by one
    multiplication per n (exact ratios, no overflow, no exp), so the cost is O(R * K * max n).
    The group probabilities are differences of these; summing by parts avoids forming them.
    """
    counts = np.asarray(counts, dtype=float)
    R, K = counts.shape
    bounds = n_failed[:, None] + np.concatenate([np.zeros((R, 1)), np.cumsum(counts, axis=1)], axis=1)  # (R, K+1)
    tbar = np.where(counts > 0, tsum / np.where(counts > 0, counts, 1), 0.0)
    # sum_k (C_k - C_{k-1}) tbar_k  ==  C @ w  with  w_j = tbar_j - tbar_{j+1}  (group j ending at bound j)
    w = np.zeros((R, K + 1))
    w[:, 1:] += tbar
    w[:, :-1] -= tbar
    cols: dict[int, list[int]] = {}
    for j, n in enumerate(budgets):
        cols.setdefault(int(n), []).append(j)
    value = np.empty((R, budgets.size))
    p_none = np.empty((R, budgets.size))
    cdf = np.ones((R, K + 1))
    frac = bounds / n_total
    tmp = np.empty_like(cdf)  # reused: allocating a fresh block per n is ~10x slower
    for n in range(1, max(cols) + 1 if cols else 1):
        if replacement:
            cdf *= frac
        else:
            np.subtract(bounds, n - 1, out=tmp)
            np.maximum(tmp, 0.0, out=tmp)
            tmp *= 1.0 / (n_total - (n - 1))
            cdf *= tmp
        if n in cols:
            p0 = cdf[:, 0]
            num = np.einsum("rk,rk->r", cdf, w)
            p_some = 1.0 - p0
            v = np.where(p_some > 0, num / np.where(p_some > 0, p_some, 1.0), np.nan)
            for j in cols[n]:
                value[:, j], p_none[:, j] = v, p0
    return value, p_none


def _counts(trials: Trials, gid: np.ndarray, K: int, idx: np.ndarray):
    """Group counts/test sums and failed counts for resamples given by trial indices idx (R, N)."""
    R = idx.shape[0]
    g = gid[idx]  # (R, N), -1 for failed
    flat = (np.arange(R)[:, None] * (K + 1) + (g + 1)).ravel()
    test = np.where(trials.failed, 0.0, trials.test)[idx].ravel()
    cnt = np.bincount(flat, minlength=R * (K + 1)).reshape(R, K + 1)
    tsum = np.bincount(flat, weights=test, minlength=R * (K + 1)).reshape(R, K + 1)
    return cnt[:, 1:], tsum[:, 1:], cnt[:, 0].astype(float)


def resampled_curves(trials, gid, K, budgets, replacement, idx):
    """Curves for each row of resample indices idx (R, N), computed in memory-bounded chunks."""
    per_row = K + 1
    step = max(1, _CHUNK_ELEMENTS // per_row)
    out = np.empty((idx.shape[0], budgets.size))
    for s in range(0, idx.shape[0], step):
        cnt, tsum, nf = _counts(trials, gid, K, idx[s : s + step])
        out[s : s + step] = _curves_from_counts(cnt, tsum, nf, trials.n, budgets, replacement)[0]
    return out


def expected_best_curve(
    val,
    test,
    *,
    failed=None,
    val_higher_is_better: bool = False,
    replacement: bool = True,
    budgets=None,
    return_p_no_model: bool = False,
):
    """Expected test score of the trial a budget of n trials selects by validation, n = ``budgets``.

    Exact order statistics over the observed trials (see the module docstring for ties and failed
    trials). ``budgets`` defaults to 1..N. With ``return_p_no_model`` also returns the probability
    that every drawn trial failed (the value is conditional on that not happening).
    """
    trials = Trials(val, test, failed)
    if trials.n == 0:
        raise ConfigError("no trials")
    gid, K = rank_groups(trials, val_higher_is_better)
    b = _budgets(budgets, trials.n, replacement)
    cnt, tsum, nf = _counts(trials, gid, K, np.arange(trials.n)[None, :])
    value, p_none = _curves_from_counts(cnt, tsum, nf, trials.n, b, replacement)
    return (value[0], p_none[0]) if return_p_no_model else value[0]


def bootstrap_band(
    val,
    test,
    *,
    failed=None,
    val_higher_is_better: bool = False,
    replacement: bool = True,
    budgets=None,
    resamples: int = 1000,
    level: float = 0.9,
    seed: int | None = 0,
):
    """Percentile bootstrap band of the curve: resample the N trials with replacement, recompute.

    Returns (low, high), each over ``budgets``; default 90% band (5th and 95th percentiles),
    seeded with numpy's Generator so the same seed gives the same band.
    """
    trials = Trials(val, test, failed)
    gid, K = rank_groups(trials, val_higher_is_better)
    b = _budgets(budgets, trials.n, replacement)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, trials.n, size=(resamples, trials.n))
    boot = resampled_curves(trials, gid, K, b, replacement, idx)
    alpha = (1.0 - level) / 2
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # budgets where every resample drew only failed trials
        low, high = np.nanquantile(boot, [alpha, 1 - alpha], axis=0)
    return low, high


def budget_curve(
    val,
    test,
    *,
    failed=None,
    seconds=None,
    val_higher_is_better: bool = False,
    replacement: bool = True,
    budgets=None,
    resamples: int = 1000,
    level: float = 0.9,
    seed: int | None = 0,
) -> Curve:
    """The full curve for a random-search study: exact expected value, bootstrap band, compute axis.

    ``resamples=0`` skips the bootstrap (band = the curve).
    """
    trials = Trials(val, test, failed, seconds)
    b = _budgets(budgets, trials.n, replacement)
    value, p_none = expected_best_curve(
        trials.val,
        trials.test,
        failed=trials.failed,
        val_higher_is_better=val_higher_is_better,
        replacement=replacement,
        budgets=b,
        return_p_no_model=True,
    )
    if resamples > 0:
        low, high = bootstrap_band(
            trials.val,
            trials.test,
            failed=trials.failed,
            val_higher_is_better=val_higher_is_better,
            replacement=replacement,
            budgets=b,
            resamples=resamples,
            level=level,
            seed=seed,
        )
    else:
        low, high = value.copy(), value.copy()
    return Curve(
        budgets=b,
        value=value,
        low=low,
        high=high,
        compute_seconds=b * trials.mean_seconds(),
        p_no_model=p_none,
        estimator=WITH_REPLACEMENT if replacement else WITHOUT_REPLACEMENT,
        n_trials=trials.n,
        n_failed=int(trials.failed.sum()),
        level=level,
    )


# ---------------------------------------------------------------- adaptive samplers


def running_best_curve(studies: Sequence[Trials], *, val_higher_is_better: bool = False, level: float = 0.9) -> Curve:
    """Running best (by validation) in trial order, averaged over repeated seeds of one study.

    Each study is a Trials in trial-index order. The selected trial changes only on a strict
    improvement, as a tuner keeps the first best it found. Budgets run to the shortest study.
    The value at n averages the seeds that have a finished trial by then (``p_no_model`` is the
    fraction that have none); the band is the seeds' percentiles, or the curve itself for < 2 seeds.
    """
    studies = [s if isinstance(s, Trials) else Trials(*s) for s in studies]
    if not studies:
        raise ConfigError("running_best_curve needs at least one study")
    n_max = min(s.n for s in studies)
    if n_max == 0:
        raise ConfigError("a study has no trials")
    rows = []
    for s in studies:
        best_g, best_t, picked = -np.inf, np.nan, np.empty(n_max)
        for i in range(n_max):
            if not s.failed[i]:
                g = s.val[i] if val_higher_is_better else -s.val[i]
                if g > best_g:
                    best_g, best_t = g, s.test[i]
            picked[i] = best_t
        rows.append(picked)
    m = np.vstack(rows)
    has = np.isfinite(m)
    with np.errstate(invalid="ignore"):
        value = np.where(has.any(axis=0), np.nansum(m, axis=0) / np.maximum(has.sum(axis=0), 1), np.nan)
    if len(studies) >= 2:
        alpha = (1.0 - level) / 2
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns before any finished trial
            low, high = np.nanquantile(m, [alpha, 1 - alpha], axis=0)
    else:
        low, high = value.copy(), value.copy()
    secs = [s.seconds for s in studies if s.seconds is not None]
    mean_s = float(np.nanmean(np.concatenate(secs))) if secs else float("nan")
    budgets = np.arange(1, n_max + 1)
    return Curve(
        budgets=budgets,
        value=value,
        low=low,
        high=high,
        compute_seconds=budgets * mean_s,
        p_no_model=1.0 - has.mean(axis=0),
        estimator=RUNNING_BEST,
        n_trials=n_max,
        n_failed=int(sum(s.failed[:n_max].sum() for s in studies)),
        level=level,
    )


# ---------------------------------------------------------------- budgets and reductions
