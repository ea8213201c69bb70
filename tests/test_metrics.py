"""The numpy metrics agree with scikit-learn's reference implementations."""

import numpy as np
import pytest
from sklearn.metrics import normalized_mutual_info_score, roc_auc_score

from moetune.training.metrics import average_ranks, normalized_mutual_info, roc_auc


@pytest.mark.parametrize("seed", range(5))
def test_roc_auc_matches_sklearn_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 500)
    scores = np.round(rng.normal(size=500) + y * 0.7, 1)  # rounding makes many ties
    assert roc_auc(y, scores) == pytest.approx(roc_auc_score(y, scores), abs=1e-12)


def test_roc_auc_extremes_and_one_class():
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.2, 0.8, 0.9])) == 1.0
    assert roc_auc(y, np.array([0.9, 0.8, 0.2, 0.1])) == 0.0
    assert roc_auc(y, np.zeros(4)) == 0.5
    assert np.isnan(roc_auc(np.ones(4), np.arange(4)))


@pytest.mark.parametrize("seed", range(5))
def test_nmi_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 4, 300)
    b = np.where(rng.random(300) < 0.6, a + 10, rng.integers(0, 6, 300))
    assert normalized_mutual_info(a, b) == pytest.approx(normalized_mutual_info_score(a, b), abs=1e-10)


def test_nmi_of_a_relabelling_is_one_and_of_constants():
    a = np.array([0, 0, 1, 1, 2, 2])
    assert normalized_mutual_info(a, (a + 1) % 3) == pytest.approx(1.0)
    assert normalized_mutual_info(np.zeros(5), np.zeros(5)) == 1.0
    assert normalized_mutual_info(a, np.zeros(6)) == 0.0


@pytest.mark.parametrize("seed", range(4))
def test_average_ranks_equal_scipy_rankdata_with_ties(seed):
    from scipy.stats import rankdata

    rng = np.random.default_rng(seed)
    values = rng.integers(0, 20, size=500).astype(np.float64)  # many ties
    values[:50] = rng.normal(size=50)  # and distinct values
    assert np.array_equal(average_ranks(values), rankdata(values))
    assert np.array_equal(average_ranks(np.array([3.0])), [1.0])
