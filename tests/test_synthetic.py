"""The synthetic teacher dataset: shapes, splits, masks, determinism, known routing, relatedness, bad params."""

from __future__ import annotations

import pytest
import torch

from moetune.data import load_dataset
from moetune.errors import ConfigError
from moetune.moe.gates import build_gate


def synthetic(**params):
    params.setdefault("n_samples", 1000)
    return load_dataset("synthetic", **params)


def whole(data):
    """(ids, dense, targets, masks) of all splits concatenated, in split order."""
    splits = list(data.splits.values())
    return (
        torch.cat([s.inputs["ids"] for s in splits]),
        torch.cat([s.inputs["dense"] for s in splits]),
        torch.cat([s.targets for s in splits]),
        torch.cat([s.masks for s in splits]),
    )


def test_shapes_and_tasks():
    data = synthetic(n_samples=500, n_features=7, n_ids=40)
    assert [t.name for t in data.tasks] == ["click", "rating"]
    assert [t.kind for t in data.tasks] == ["binary", "regression"]
    assert data.input_shapes() == {"ids": (1,), "dense": (7,)}
    assert data.id_cardinalities == [40] and data.n_routing_ids == 40
    for split in data.splits.values():
        n = len(split)
        assert split.targets.shape == (n, 2) and split.masks.shape == (n, 2) and split.masks.dtype == torch.bool
        assert split.inputs["ids"].dtype == torch.long and split.inputs["dense"].dtype == torch.float32
        assert torch.equal(split.routing_ids, split.inputs["ids"][:, 0])
        assert split.routing_ids.min() >= 0 and split.routing_ids.max() < 40


@pytest.mark.parametrize("n, fractions", [(1000, (0.8, 0.1, 0.1)), (777, (0.5, 0.3, 0.2)), (30, (0.6, 0.2, 0.2))])
def test_splits_are_disjoint_and_sized_by_fractions(n, fractions):
    data = synthetic(n_samples=n, fractions=fractions, n_features=4)
    sizes = [len(s) for s in data.splits.values()]
    assert sum(sizes) == n
    for size, fraction in zip(sizes, fractions, strict=False):
        assert abs(size - fraction * n) <= 1
    # rows are identified by their (continuous, so distinct) features
    rows = [{tuple(r) for r in s.inputs["dense"].tolist()} for s in data.splits.values()]
    assert sum(len(r) for r in rows) == n
    assert not (rows[0] & rows[1]) and not (rows[0] & rows[2]) and not (rows[1] & rows[2])


def test_rating_is_masked_exactly_where_there_is_no_click():
    _, _, targets, masks = whole(synthetic())
    click = targets[:, 0]
    assert set(click.unique().tolist()) == {0.0, 1.0}
    assert masks[:, 0].all()
    assert torch.equal(masks[:, 1], click == 1)
    assert (targets[~masks[:, 1], 1] == 0).all()
    assert targets[masks[:, 1], 1].std() > 0.5  # observed ratings carry signal


def test_click_rate_is_neither_zero_nor_one():
    _, _, targets, _ = whole(synthetic())
    assert 0.2 < targets[:, 0].mean() < 0.8


def test_same_seed_same_data_different_seed_different_data():
    a, b, c = synthetic(seed=3), synthetic(seed=3), synthetic(seed=4)
    for x, y in zip(whole(a), whole(b), strict=False):
        assert torch.equal(x, y)
    assert a.truth == b.truth
    assert not torch.equal(whole(a)[1], whole(c)[1])
    assert a.truth["id_to_expert"] != c.truth["id_to_expert"]


def test_truth_routing_is_consistent_with_the_ids():
    data = synthetic(n_ids=60, n_teacher_experts=5)
    table = data.truth["id_to_expert"]
    assert len(table) == 60 and set(table) == set(range(5))
    for name, split in data.splits.items():
        experts = data.truth[f"{name}_expert"]
        assert len(experts) == len(split)
        assert experts == [table[i] for i in split.routing_ids.tolist()]


def test_teacher_routing_is_not_a_hash_gate_table():
    """With matching seeds a hash gate's table must not reproduce the teacher's routing by accident."""
    for seed in range(3):
        data = synthetic(n_samples=100, n_ids=200, seed=seed)
        for hash_seed in range(3):
            gate = build_gate("hash", 4, 4, k=1, n_routing_ids=200, hash_seed=hash_seed)
            agreement = (gate.table == torch.tensor(data.truth["id_to_expert"])).float().mean()
            assert agreement < 0.5, (seed, hash_seed)


def test_same_features_and_clicks_whatever_the_relatedness():
    a, b = synthetic(relatedness=0.0), synthetic(relatedness=1.0)
    ids_a, x_a, t_a, m_a = whole(a)
    ids_b, x_b, t_b, m_b = whole(b)
    assert torch.equal(ids_a, ids_b) and torch.equal(x_a, x_b)
    assert torch.equal(t_a[:, 0], t_b[:, 0]) and torch.equal(m_a, m_b)


def test_rating_mixes_the_shared_and_own_score_by_relatedness():
    """Without noise, rating(r) = r * rating(1) + sqrt(1 - r^2) * rating(0) on the same samples."""
    r = 0.6
    ratings = {}
    for value in (0.0, 1.0, r):
        _, _, targets, masks = whole(synthetic(relatedness=value, noise=0.0))
        ratings[value] = targets[masks[:, 1], 1]
    torch.testing.assert_close(ratings[r], r * ratings[1.0] + 0.8 * ratings[0.0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("seed", range(3))
def test_relatedness_controls_how_much_clicks_say_about_ratings(seed):
    """relatedness 1: the rating is the click score, so clicked samples rate high on average;
    relatedness 0: the rating's score is uncorrelated with the click score, clicked samples rate ~0."""
    means = {}
    for relatedness in (0.0, 1.0):
        _, _, targets, masks = whole(synthetic(n_samples=5000, relatedness=relatedness, seed=seed))
        means[relatedness] = float(targets[masks[:, 1], 1].mean())
    assert means[1.0] > 0.4
    assert abs(means[0.0]) < 0.1


@pytest.mark.parametrize(
    "params, key",
    [
        (dict(n_samples=0), "n_samples"),
        (dict(n_samples=10), "n_samples"),
        (dict(n_features=0), "n_features"),
        (dict(n_ids=0), "n_ids"),
        (dict(n_teacher_experts=0), "n_teacher_experts"),
        (dict(teacher_hidden=-1), "teacher_hidden"),
        (dict(noise=-0.1), "noise"),
        (dict(relatedness=1.5), "relatedness"),
        (dict(relatedness=-0.1), "relatedness"),
        (dict(fractions=(0.5, 0.5, 0.5)), "fractions"),
        (dict(fractions=(0.9, 0.1)), "fractions"),
        (dict(fractions=(1.0, 0.0, 0.0)), "fractions"),
        (dict(n_samples=40, fractions=(0.98, 0.01, 0.01)), "fractions"),
        (dict(not_a_param=1), "not_a_param"),
    ],
)
def test_bad_params_are_config_errors(params, key):
    with pytest.raises(ConfigError) as info:
        load_dataset("synthetic", **params)
    assert key in str(info.value)
