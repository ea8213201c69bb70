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


@dataclass
class Reduction:
    """Budget reduction factor n_off(q) / n_on(q) of local search at target quality q.

    When the off-curve never reaches q within its N_off trials the factor is censored: only
    ``factor > n_off_max / n_on`` is known, ``factor`` is None and ``censored`` is True.
    ``low``/``high`` is the bootstrap interval (may be inf when resamples are censored; NaN when
    no bootstrap was possible).
    """

    q: float
    at: int
    n_on: int | None
    n_off: int | None
    n_off_max: int
    factor: float | None
    low: float
    high: float
    censored: bool
    level: float = 0.9

    @property
    def lower_bound(self) -> float | None:
        """Lower bound of a censored factor: n_off_max / n_on."""
        return None if self.n_on is None else self.n_off_max / self.n_on

    def __str__(self) -> str:
        """'3.2x [90% interval 1.1, 8]'; '> 6.4x (censored) [90% interval 2, ∞]' when the off-curve never
        reaches q (a claim too, with its interval); an interval with no upper end (some resamples never reach
        q) says 'censored above'."""
        if self.n_on is None:
            return "n/a (target not reached)"
        if self.censored:
            text = f"> {self.lower_bound:.3g}x (censored)"
            if not (np.isnan(self.low) or np.isnan(self.high)):
                text += f" [{self.level:.0%} interval {_fmt_bound(self.low)}, {_fmt_bound(self.high)}]"
            return text
        text = f"{self.factor:.3g}x"
        if np.isfinite(self.low) or np.isfinite(self.high):
            text += f" [{self.level:.0%} interval {_fmt_bound(self.low)}, {_fmt_bound(self.high)}"
            text += "; censored above]" if np.isposinf(self.high) else "]"
        return text


def _fmt_bound(x: float) -> str:
    return "∞" if np.isposinf(x) else ("—" if np.isnan(x) else f"{x:.3g}")


# ---------------------------------------------------------------- exact estimators


def _groups(trials: Trials, val_higher_is_better: bool):
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


def _resampled_curves(trials, gid, K, budgets, replacement, idx):
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
    gid, K = _groups(trials, val_higher_is_better)
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
    gid, K = _groups(trials, val_higher_is_better)
    b = _budgets(budgets, trials.n, replacement)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, trials.n, size=(resamples, trials.n))
    boot = _resampled_curves(trials, gid, K, b, replacement, idx)
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


def _reaches(value: np.ndarray, q: float, higher_is_better: bool, tol: float = 1e-12) -> np.ndarray:
    slack = tol * max(1.0, abs(q))
    return value >= q - slack if higher_is_better else value <= q + slack


def budget_needed(curve, q: float, higher_is_better: bool, budgets=None) -> int | None:
    """Smallest budget whose expected value reaches quality q (>= q, or <= q for lower-is-better).

    ``curve`` is a Curve or an array of values (then ``budgets`` defaults to 1..len). None when the
    curve never reaches q. A tiny relative tolerance absorbs floating-point noise.
    """
    if isinstance(curve, Curve):
        value, budgets = curve.value, curve.budgets
    else:
        value = np.asarray(curve, dtype=float)
        budgets = np.arange(1, value.size + 1) if budgets is None else np.asarray(budgets)
    hit = np.flatnonzero(_reaches(value, q, higher_is_better))
    return int(budgets[hit[0]]) if hit.size else None


def _first_hit(values: np.ndarray, q: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """Row-wise 1-based first budget reaching q[row] (values over budgets 1..B); inf when never."""
    slack = 1e-12 * np.maximum(1.0, np.abs(q))[:, None]
    ok = values >= q[:, None] - slack if higher_is_better else values <= q[:, None] + slack
    first = np.argmax(ok, axis=1).astype(float) + 1
    first[~ok.any(axis=1)] = np.inf
    return first


REDUCTION_AT = (1, 2, 5, 10)  # default targets: the on-curve's quality at these budgets


def _pair_curves(on, off, val_higher_is_better, replacement):
    """Curves of on/off (both Trials or both Curves); Trials come back as Trials, else None."""
    if isinstance(on, Curve) or isinstance(off, Curve):
        if not (isinstance(on, Curve) and isinstance(off, Curve)):
            raise ConfigError("pass both on and off as Curves, or both as Trials")
        return on, off, None, None
    on = on if isinstance(on, Trials) else Trials(*on)
    off = off if isinstance(off, Trials) else Trials(*off)
    kw = dict(val_higher_is_better=val_higher_is_better, replacement=replacement, resamples=0)
    return (
        budget_curve(on.val, on.test, failed=on.failed, **kw),
        budget_curve(off.val, off.test, failed=off.failed, **kw),
        on,
        off,
    )


def _reductions(
    on, off, ats, q, test_higher_is_better, val_higher_is_better, replacement, resamples, level, seed
) -> list[Reduction]:
    """Reductions at the on-curve's value at each n in ``ats`` (or at the fixed q).

    The bootstrap resamples both studies once and reads every target off the same resampled
    curves, so extra targets cost only a first-hit search, and the draws (hence the interval) at a
    target do not depend on which other targets are asked for.
    """
    c_on, c_off, t_on, t_off = _pair_curves(on, off, val_higher_is_better, replacement)
    n_off_max = int(c_off.budgets.max())
    out = []
    for at in ats:
        q0 = float(q) if q is not None else c_on.at(at)
        n_on = budget_needed(c_on, q0, test_higher_is_better) if np.isfinite(q0) else None
        n_off = budget_needed(c_off, q0, test_higher_is_better) if np.isfinite(q0) else None
        factor = n_off / n_on if (n_on is not None and n_off is not None) else None
        out.append(
            Reduction(
                q=q0,
                at=at,
                n_on=n_on,
                n_off=n_off,
                n_off_max=n_off_max,
                factor=factor,
                low=float("nan"),
                high=float("nan"),
                censored=n_on is not None and n_off is None,
                level=level,
            )
        )
    if t_on is None or resamples <= 0 or all(r.n_on is None for r in out):
        return out
    rng = np.random.default_rng(seed)
    vals = []
    for trials in (t_on, t_off):
        gid, K = _groups(trials, val_higher_is_better)
        idx = rng.integers(0, trials.n, size=(resamples, trials.n))
        vals.append(_resampled_curves(trials, gid, K, np.arange(1, trials.n + 1), replacement, idx))
    v_on, v_off = vals
    alpha = (1.0 - level) / 2
    for r in out:
        if r.n_on is None:
            continue
        qb = np.full(resamples, r.q) if q is not None else v_on[:, r.at - 1]
        keep = np.isfinite(qb)
        f = _first_hit(v_off[keep], qb[keep], test_higher_is_better) / _first_hit(
            v_on[keep], qb[keep], test_higher_is_better
        )
        f = f[~np.isnan(f)]  # inf/inf: neither resampled curve reaches q
        if f.size:
            r.low, r.high = (float(x) for x in np.quantile(f, [alpha, 1 - alpha], method="inverted_cdf"))
    return out


def reduction_factor(
    on,
    off,
    *,
    at: int = 1,
    q: float | None = None,
    test_higher_is_better: bool = False,
    val_higher_is_better: bool = False,
    replacement: bool = True,
    resamples: int = 1000,
    level: float = 0.9,
    seed: int | None = 0,
) -> Reduction:
    """Budget reduction factor n_off(q) / n_on(q) of a gate with local search ("on") over without.

    ``on``/``off`` are Trials (random search: exact curves, bootstrap interval resampling both
    studies' trials) or Curves (e.g. running_best; no interval). q defaults to the on-curve's
    value at n = ``at``; budgets are searched over 1..N of each study.
    """
    return _reductions(
        on, off, [at], q, test_higher_is_better, val_higher_is_better, replacement, resamples, level, seed
    )[0]


def reduction_factors(
    on,
    off,
    *,
    at=REDUCTION_AT,
    test_higher_is_better: bool = False,
    val_higher_is_better: bool = False,
    replacement: bool = True,
    resamples: int = 1000,
    level: float = 0.9,
    seed: int | None = 0,
) -> list[Reduction]:
    """``reduction_factor`` at several targets: q = the on-curve's value at each n in ``at`` <= N_on.

    One reduction says little when local search changes the curve's shape, so report a few
    targets. Same seed, same results as ``reduction_factor(at=n)`` for each n (shared resamples).
    """
    c_on = on if isinstance(on, Curve) else None
    n_on_max = int(c_on.budgets.max()) if c_on is not None else (on if isinstance(on, Trials) else Trials(*on)).n
    ats = [int(a) for a in at if 1 <= int(a) <= n_on_max]
    return _reductions(
        on, off, ats, None, test_higher_is_better, val_higher_is_better, replacement, resamples, level, seed
    )
