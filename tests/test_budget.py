"""Budget-vs-quality curves: exact estimators against brute force, and constructed cases."""

import time

import numpy as np
import pytest

from moetune.errors import ConfigError
from moetune.report import budget as B
from moetune.report import reduction as R


def monte_carlo(val, test, n, *, failed=None, replacement=True, higher=False, sims=200_000, seed=1):
    """Brute force: draw n trials, pick the best by validation (ties uniformly at random).

    Returns (mean test of the pick given a finished trial was drawn, its standard error,
    fraction of draws where every trial drawn had failed).
    """
    rng = np.random.default_rng(seed)
    val, test = np.asarray(val, float), np.asarray(test, float)
    N = val.size
    failed = np.zeros(N, bool) if failed is None else np.asarray(failed, bool)
    good = np.where(failed, -np.inf, val if higher else -val)
    if replacement:
        idx = rng.integers(0, N, size=(sims, n))
    else:
        idx = np.argsort(rng.random((sims, N)), axis=1)[:, :n]
    key = good[idx] + rng.random(idx.shape) * 1e-6  # random tie-break; values differ by >= 1e-3
    pick = idx[np.arange(sims), np.argmax(key, axis=1)]
    ok = ~failed[pick]
    t = test[pick][ok]
    return t.mean(), t.std() / np.sqrt(t.size), 1 - ok.mean()


@pytest.fixture
def tied_data():
    rng = np.random.default_rng(0)
    val = np.round(rng.uniform(0, 1, 15), 1)  # one decimal: several tie groups
    assert np.unique(val).size < val.size
    test = rng.normal(size=15) + val
    return val, test


@pytest.mark.parametrize("n", [1, 2, 4, 9, 30])
def test_with_replacement_matches_monte_carlo(tied_data, n):
    val, test = tied_data
    exact = B.expected_best_curve(val, test, budgets=[n])[0]
    mc, se, _ = monte_carlo(val, test, n)
    assert abs(exact - mc) < 4.5 * se
    assert abs(exact - mc) < 0.02


@pytest.mark.parametrize("n", [1, 2, 5, 10, 15])
def test_without_replacement_matches_monte_carlo(tied_data, n):
    val, test = tied_data
    exact = B.expected_best_curve(val, test, replacement=False, budgets=[n])[0]
    mc, se, _ = monte_carlo(val, test, n, replacement=False, sims=100_000)
    tol = max(4.5 * se, 1e-9)
    assert abs(exact - mc) < tol


@pytest.mark.parametrize("replacement", [True, False])
@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_failed_trials_match_monte_carlo(tied_data, replacement, n):
    val, test = tied_data
    failed = np.zeros(val.size, bool)
    failed[[0, 3, 7]] = True
    test = test.copy()
    test[failed] = -1e6  # must never be picked
    value, p_none = B.expected_best_curve(
        val, test, failed=failed, replacement=replacement, budgets=[n], return_p_no_model=True
    )
    mc, se, none = monte_carlo(val, test, n, failed=failed, replacement=replacement, sims=100_000)
    assert abs(value[0] - mc) < max(4.5 * se, 1e-9)
    if replacement:
        assert p_none[0] == pytest.approx((3 / 15) ** n)
    else:
        assert p_none[0] == pytest.approx(0.0 if n > 3 else np.prod([(3 - j) / (15 - j) for j in range(n)]))
    assert abs(p_none[0] - none) < 0.01


def test_n1_is_mean_test_and_large_n_is_best(tied_data):
    rng = np.random.default_rng(3)
    val, test = rng.normal(size=40), rng.normal(size=40)
    best = test[np.argmin(val)]
    with_r = B.expected_best_curve(val, test, budgets=[1, 5000])
    without = B.expected_best_curve(val, test, replacement=False)
    assert with_r[0] == pytest.approx(test.mean())
    assert without[0] == pytest.approx(test.mean())
    assert with_r[1] == pytest.approx(best, abs=1e-6)
    assert without[-1] == pytest.approx(best)  # n = N draws every trial
    assert without.size == 40


def test_ties_constructed():
    # the two trials tied at the best validation share its mass: their mean test, 5
    val, test = [1.0, 1.0, 2.0], [0.0, 10.0, 20.0]
    with_r = B.expected_best_curve(val, test, budgets=[1, 2])
    assert with_r == pytest.approx([10.0, 8 / 9 * 5 + 1 / 9 * 20])
    without = B.expected_best_curve(val, test, replacement=False)
    assert without == pytest.approx([10.0, 5.0, 5.0])  # any pair holds a tied best trial


def test_failed_trials_constructed():
    # failed trial counts in N = 3 but is never the pick; its test score is ignored
    val, test, failed = [np.nan, 1.0, 2.0], [-100.0, 3.0, 7.0], [True, False, False]
    v, p = B.expected_best_curve(val, test, failed=failed, budgets=[1, 2], return_p_no_model=True)
    assert v == pytest.approx([5.0, 4.5])  # n=2: (3/9 * 7 + 5/9 * 3) / (8/9)
    assert p == pytest.approx([1 / 3, 1 / 9])
    v, p = B.expected_best_curve(val, test, failed=failed, replacement=False, return_p_no_model=True)
    assert v == pytest.approx([5.0, 13 / 3, 3.0])  # pairs {F,a}, {F,b}, {a,b} -> 3, 7, 3
    assert p == pytest.approx([1 / 3, 0.0, 0.0])
    # a non-finite validation score marks a trial failed without the mask
    assert B.expected_best_curve(val, [0.0, 3.0, 7.0], budgets=[1]) == pytest.approx([5.0])
    # without replacement, a budget no larger than the failures can yield no model at all
    v, p = B.expected_best_curve([np.nan, np.nan, 1.0], [0, 0, 4.0], replacement=False, return_p_no_model=True)
    assert p[0] == pytest.approx(2 / 3) and v[0] == pytest.approx(4.0)
    assert p[1] == pytest.approx(1 / 3)


def test_all_failed_gives_nan():
    v, p = B.expected_best_curve([np.nan, np.nan], [0.0, 0.0], return_p_no_model=True)
    assert np.all(np.isnan(v)) and p == pytest.approx([1.0, 1.0])


def test_higher_is_better_validation():
    auc = np.array([0.9, 0.6, 0.7, 0.8])
    test = np.array([1.0, 2.0, 3.0, 4.0])
    up = B.expected_best_curve(auc, test, val_higher_is_better=True, budgets=[1, 2, 10_000])
    assert up[-1] == pytest.approx(1.0, abs=1e-6)  # the AUC 0.9 trial
    assert up == pytest.approx(B.expected_best_curve(-auc, test, budgets=[1, 2, 10_000]))
    down = B.expected_best_curve(auc, test, budgets=[10_000])
    assert down[0] == pytest.approx(2.0, abs=1e-6)  # read as a loss, 0.6 would win
    mc, se, _ = monte_carlo(auc, test, 2, higher=True)
    assert abs(up[1] - mc) < 4.5 * se


def test_bootstrap_band_contains_curve_and_is_seeded():
    rng = np.random.default_rng(5)
    val = rng.normal(size=60)
    test = val + rng.normal(size=60)
    c1 = B.budget_curve(val, test, resamples=300, seed=7)
    c2 = B.budget_curve(val, test, resamples=300, seed=7)
    c3 = B.budget_curve(val, test, resamples=300, seed=8)
    assert np.all(c1.low <= c1.value + 1e-12) and np.all(c1.value <= c1.high + 1e-12)
    assert np.all(c1.high - c1.low > 0)
    np.testing.assert_array_equal(c1.low, c2.low)
    np.testing.assert_array_equal(c1.high, c2.high)
    assert not np.array_equal(c1.low, c3.low)
    low, high = B.bootstrap_band(val, test, resamples=300, seed=7)
    np.testing.assert_array_equal(low, c1.low)
    assert c1.estimator == "expected_max_with_replacement"
    assert B.budget_curve(val, test, replacement=False, resamples=0).estimator == "expected_max_without_replacement"


def test_compute_seconds_counts_failed_trials():
    c = B.budget_curve([1.0, 2.0, 3.0, np.nan], [1.0, 2.0, 3.0, 0.0], seconds=[1, 2, 3, 6], resamples=0)
    assert c.compute_seconds == pytest.approx(3.0 * np.arange(1, 5))
    assert c.n_trials == 4 and c.n_failed == 1
    assert c.p_no_model == pytest.approx(0.25 ** np.arange(1, 5))


def test_budget_needed_directions():
    loss = np.array([0.5, 0.4, 0.3])
    assert R.budget_needed(loss, 0.4, higher_is_better=False) == 2
    assert R.budget_needed(loss, 0.2, higher_is_better=False) is None
    auc = np.array([0.6, 0.7, 0.8])
    assert R.budget_needed(auc, 0.75, higher_is_better=True) == 3
    assert R.budget_needed(auc, 0.9, higher_is_better=True) is None


def _curve(values):
    values = np.asarray(values, float)
    b = np.arange(1, values.size + 1)
    return B.Curve(
        budgets=b,
        value=values,
        low=values,
        high=values,
        compute_seconds=b * 1.0,
        p_no_model=np.zeros_like(values),
        estimator="running_best",
        n_trials=values.size,
    )


def test_reduction_factor_constructed_curves():
    on, off = _curve([0.5, 0.4, 0.3]), _curve([0.9, 0.7, 0.5, 0.45, 0.4])
    r = R.reduction_factor(on, off)
    assert (r.q, r.n_on, r.n_off, r.factor, r.censored) == (0.5, 1, 3, 3.0, False)
    r2 = R.reduction_factor(on, off, at=2)
    assert (r2.n_on, r2.n_off, r2.factor) == (2, 5, 2.5)
    # higher-is-better test metric: q = on at n=1, off needs 2
    r3 = R.reduction_factor(_curve([0.8, 0.85]), _curve([0.7, 0.81, 0.9]), test_higher_is_better=True)
    assert (r3.n_on, r3.n_off, r3.factor) == (1, 2, 2.0)


def test_reduction_factor_censored():
    r = R.reduction_factor(_curve([0.5, 0.4]), _curve([0.9, 0.8, 0.7]))
    assert r.censored and r.factor is None and r.n_off is None
    assert r.n_off_max == 3 and r.lower_bound == 3
    assert str(r) == "> 3x (censored)"


def test_reduction_factor_from_trials_with_interval():
    # on: every trial scores 2.0, so q = 2.0; off curve: n=1 -> 2.5, n=2 -> 30/16 = 1.875
    on = B.Trials(val=[1.0, 2.0, 3.0, 4.0], test=[2.0, 2.0, 2.0, 2.0])
    off = B.Trials(val=[1.0, 2.0, 3.0, 4.0], test=[1.0, 2.0, 3.0, 4.0])
    r = R.reduction_factor(on, off, resamples=500, seed=3)
    assert (r.q, r.n_on, r.n_off, r.factor, r.censored) == (2.0, 1, 2, 2.0, False)
    assert r.low <= r.factor <= r.high
    assert np.isposinf(r.high)  # some resamples keep only the worse off-trials: censored
    assert r == R.reduction_factor(on, off, resamples=500, seed=3)
    # off never better than 3.0: censored at N_off = 4
    worse = B.Trials(val=[1.0, 2.0, 3.0, 4.0], test=[3.0, 3.0, 4.0, 5.0])
    rc = R.reduction_factor(on, worse, resamples=50)
    # a censored factor is a claim too: it carries its bootstrap interval (here every resample is censored)
    assert rc.censored and str(rc) == "> 4x (censored) [90% interval ∞, ∞]"


def test_running_best_constructed():
    s1 = B.Trials(val=[3.0, 2.0, 2.0, 1.0], test=[30.0, 20.0, 25.0, 10.0], seconds=[1, 1, 1, 1])
    s2 = B.Trials(val=[np.nan, 5.0, 1.0, 4.0], test=[0.0, 50.0, 10.0, 40.0], seconds=[3, 3, 3, 3])
    c = B.running_best_curve([s1, s2])
    # s1 picks 30, 20, 20 (a tie is no improvement), 10; s2 has no model, then 50, 10, 10
    assert c.value == pytest.approx([30.0, 35.0, 15.0, 10.0])
    assert c.p_no_model == pytest.approx([0.5, 0.0, 0.0, 0.0])
    assert c.estimator == "running_best"
    assert np.all(c.low <= c.value) and np.all(c.value <= c.high)
    assert c.low[1] == pytest.approx(20 + 0.05 * 30) and c.high[1] == pytest.approx(20 + 0.95 * 30)
    assert c.compute_seconds == pytest.approx(2.0 * np.arange(1, 5))
    single = B.running_best_curve([s1])
    np.testing.assert_array_equal(single.low, single.value)
    np.testing.assert_array_equal(single.high, single.value)
    auc = B.running_best_curve([B.Trials(val=[0.6, 0.9, 0.7], test=[1.0, 2.0, 3.0])], val_higher_is_better=True)
    assert auc.value == pytest.approx([1.0, 2.0, 2.0])


def test_bad_input():
    with pytest.raises(ConfigError):
        B.expected_best_curve([1.0, 2.0], [1.0])
    with pytest.raises(ConfigError):
        B.expected_best_curve([1.0, 2.0], [1.0, 2.0], replacement=False, budgets=[3])
    with pytest.raises(ConfigError):
        B.expected_best_curve([1.0, 2.0], [1.0, np.nan])  # finished trial without a test score


def test_bootstrap_speed_n500():
    rng = np.random.default_rng(0)
    val, test = rng.normal(size=500), rng.normal(size=500)
    start = time.perf_counter()
    c = B.budget_curve(val, test, resamples=1000)
    elapsed = time.perf_counter() - start
    assert c.low.size == 500
    assert elapsed < 10.0, f"bootstrap of N=500 x 1000 resamples took {elapsed:.1f}s"


def _fields(r):
    return (r.q, r.at, r.n_on, r.n_off, r.n_off_max, r.factor, r.low, r.high, r.censored)


def test_reduction_factors_equal_single_target_calls():
    rng = np.random.default_rng(11)
    on = B.Trials(val=rng.normal(size=30), test=rng.normal(size=30) - 0.3)
    off = B.Trials(val=rng.normal(size=12), test=rng.normal(size=12))
    reds = R.reduction_factors(on, off, resamples=200, seed=4)
    assert [r.at for r in reds] == [1, 2, 5, 10]  # default targets, all <= N_on = 30
    for r in reds:
        single = R.reduction_factor(on, off, at=r.at, resamples=200, seed=4)
        np.testing.assert_equal(_fields(r), _fields(single))  # same draws, same interval
        assert r.q == pytest.approx(B.expected_best_curve(on.val, on.test, budgets=[r.at])[0])
    # targets beyond N_on are dropped; the rest are unchanged by the choice of the other targets
    few = R.reduction_factors(on, off, at=(2, 31, 50), resamples=200, seed=4)
    assert [r.at for r in few] == [2]
    np.testing.assert_equal(_fields(few[0]), _fields(reds[1]))
    # with the same targets on both sides, a study is no better than itself: factor 1 everywhere
    assert all(r.factor == 1.0 for r in R.reduction_factors(on, on, resamples=0))


def test_reduction_factors_censored_and_curves():
    on, off = _curve([0.5, 0.4, 0.3, 0.25, 0.2, 0.19]), _curve([0.9, 0.7, 0.5, 0.45, 0.4])
    reds = R.reduction_factors(on, off)
    assert [r.at for r in reds] == [1, 2, 5]  # 10 > N_on = 6
    assert [(r.n_on, r.n_off, r.factor, r.censored) for r in reds] == [
        (1, 3, 3.0, False),
        (2, 5, 2.5, False),
        (5, None, None, True),
    ]
    assert reds[2].lower_bound == 1.0 and str(reds[2]) == "> 1x (censored)"
    assert all(np.isnan(r.low) and np.isnan(r.high) for r in reds)  # Curves: no interval
    # from trials: on scores 2.0 at every n; off reaches 2.0 at n = 2 only with its best trials
    t_on = B.Trials(val=[1.0, 2.0, 3.0, 4.0, 5.0], test=[2.0, 2.0, 2.0, 2.0, 1.5])
    t_off = B.Trials(val=[1.0, 2.0, 3.0, 4.0], test=[3.0, 3.0, 4.0, 5.0])
    reds = R.reduction_factors(t_on, t_off, resamples=50)
    assert [r.at for r in reds] == [1, 2, 5] and all(r.censored and r.n_off is None for r in reds)
    assert [str(r) for r in reds] == [f"> {4 / r.n_on:.3g}x (censored) [90% interval ∞, ∞]" for r in reds]


def test_reduction_factors_resample_once_for_all_targets(monkeypatch):
    rng = np.random.default_rng(2)
    on = B.Trials(val=rng.normal(size=200), test=rng.normal(size=200))
    off = B.Trials(val=rng.normal(size=200), test=rng.normal(size=200) + 0.2)
    calls = []
    original = B.resampled_curves
    monkeypatch.setattr(B, "resampled_curves", lambda *a, **k: calls.append(1) or original(*a, **k))
    reds = R.reduction_factors(on, off, resamples=100)
    assert len(reds) == 4 and len(calls) == 2  # one resampled-curve set per study, shared by all targets
