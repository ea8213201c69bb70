"""Budget reduction factors: how many fewer trials local search needs to reach a quality q.

``reduction_factor(on, off)`` is n_off(q) / n_on(q), where q is the quality the "on" curve reaches at a
budget ``at`` (moetune.report.budget gives the curves); a factor whose "off" curve never reaches q is
censored (only a lower bound is known). Intervals come from resampling both arms' trials.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from moetune.errors import ConfigError
from moetune.report import budget


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


def _reaches(value: np.ndarray, q: float, higher_is_better: bool, tol: float = 1e-12) -> np.ndarray:
    slack = tol * max(1.0, abs(q))
    return value >= q - slack if higher_is_better else value <= q + slack


def budget_needed(curve, q: float, higher_is_better: bool, budgets=None) -> int | None:
    """Smallest budget whose expected value reaches quality q (>= q, or <= q for lower-is-better).

    ``curve`` is a budget.Curve or an array of values (then ``budgets`` defaults to 1..len). None when the
    curve never reaches q. A tiny relative tolerance absorbs floating-point noise.
    """
    if isinstance(curve, budget.Curve):
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
    """Curves of on/off (both budget.Trials or both Curves); budget.Trials come back as budget.Trials, else None."""
    if isinstance(on, budget.Curve) or isinstance(off, budget.Curve):
        if not (isinstance(on, budget.Curve) and isinstance(off, budget.Curve)):
            raise ConfigError("pass both on and off as Curves, or both as budget.Trials")
        return on, off, None, None
    on = on if isinstance(on, budget.Trials) else budget.Trials(*on)
    off = off if isinstance(off, budget.Trials) else budget.Trials(*off)
    kw = dict(val_higher_is_better=val_higher_is_better, replacement=replacement, resamples=0)
    return (
        budget.budget_curve(on.val, on.test, failed=on.failed, **kw),
        budget.budget_curve(off.val, off.test, failed=off.failed, **kw),
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
        gid, K = budget.rank_groups(trials, val_higher_is_better)
        idx = rng.integers(0, trials.n, size=(resamples, trials.n))
        vals.append(budget.resampled_curves(trials, gid, K, np.arange(1, trials.n + 1), replacement, idx))
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

    ``on``/``off`` are budget.Trials (random search: exact curves, bootstrap interval resampling both
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
    if isinstance(on, budget.Curve):
        n_on_max = int(on.budgets.max())
    else:
        n_on_max = (on if isinstance(on, budget.Trials) else budget.Trials(*on)).n
    ats = [int(a) for a in at if 1 <= int(a) <= n_on_max]
    return _reductions(
        on, off, ats, None, test_higher_is_better, val_higher_is_better, replacement, resamples, level, seed
    )
