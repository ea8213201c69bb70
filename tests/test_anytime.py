"""Anytime budget curves (moetune.report.anytime) on hand-built trials, against a hand computation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from moetune.report.anytime import (
    AnytimeCurve,
    ComputeReduction,
    anytime_band,
    anytime_curve,
    anytime_group,
    compute_reduction,
    exact_curve,
    length_mismatches,
    study_anytime_curve,
    sweep_anytime,
    sweep_reductions,
)
from moetune.tracking import tags
from moetune.tracking.base import RecordedStudy, RecordedTrial


def trial(
    index: int, val: float | None, test: float | None, epochs: float | None, seconds: float = 1.0, status="FINISHED"
):
    metrics = {"wall_seconds": seconds}
    if val is not None:
        metrics["best_val_loss"] = val
    if test is not None:
        metrics["test_loss"] = test
    if epochs is not None:
        metrics["epochs_run"] = epochs
    return RecordedTrial(index=index, status=status, metrics=metrics, finished=status == "FINISHED")


# repeat 1: trial 1 (a stopped one, 2 epochs) beats trial 0 on validation; 2 failed (no cost); 3 is worse on
# validation though better on test, so it is not selected
REPEAT_1 = [
    trial(0, 1.0, 0.9, 3, seconds=3.0),
    trial(1, 0.8, 0.85, 2, seconds=2.5),
    trial(2, None, None, None, seconds=float("nan"), status="FAILED"),
    trial(3, 0.9, 0.7, 9, seconds=9.0),
]
REPEAT_2 = [trial(1, 0.5, 0.65, 4, seconds=4.5), trial(0, 0.7, 0.6, 4, seconds=4.0)]  # out of order on purpose


def test_a_curve_follows_the_trial_selected_by_validation_against_cumulative_cost():
    epochs = anytime_curve(REPEAT_1, "best_val_loss", "test_loss", "min")
    assert epochs.cost.tolist() == [3, 5, 5, 14]
    assert epochs.value.tolist() == [0.9, 0.85, 0.85, 0.85]
    seconds = anytime_curve(REPEAT_1, "best_val_loss", "test_loss", "min", cost="seconds")
    assert seconds.cost.tolist() == [3.0, 5.5, 5.5, 14.5]
    up = anytime_curve(REPEAT_1, "best_val_loss", "test_loss", "max")  # a metric where higher is better
    assert up.value.tolist() == [0.9, 0.9, 0.9, 0.9]
    assert anytime_curve(REPEAT_2, "best_val_loss", "test_loss", "min").value.tolist() == [0.6, 0.65]


def test_a_study_curve_reads_its_metrics_from_its_tags():
    study = RecordedStudy(
        "topk-ls_off-synthetic-seed0",
        {tags.SELECTION_METRIC: "best_val_loss", tags.HEADLINE_METRIC: "test_loss", tags.SELECTION_MODE: "min"},
        REPEAT_1,
    )
    assert study_anytime_curve(study).value.tolist() == [0.9, 0.85, 0.85, 0.85]


def test_repeats_are_averaged_on_one_grid_with_a_bootstrap_interval():
    curves = [anytime_curve(r, "best_val_loss", "test_loss", "min") for r in (REPEAT_1, REPEAT_2)]
    band = anytime_band(curves, resamples=4000, seed=1)
    # by hand: repeat 1 at costs 3, 4, 5, 8, 14 -> .9 .9 .85 .85 .85; repeat 2 -> nan .6 .6 .65 .65
    assert band.grid.tolist() == [3, 4, 5, 8, 14]
    np.testing.assert_allclose(band.mean, [np.nan, 0.75, 0.725, 0.75, 0.75])
    # two repeats: a resample is (1,1), (1,2), (2,1) or (2,2), a quarter each at the extremes
    np.testing.assert_allclose(band.low, [np.nan, 0.6, 0.6, 0.65, 0.65])
    np.testing.assert_allclose(band.high, [np.nan, 0.9, 0.85, 0.85, 0.85])
    assert band.repeats == 2 and band.level == 0.9
    one = anytime_band(curves[:1], grid=np.array([0.0, 3.0, 20.0]))
    np.testing.assert_allclose(one.mean, [np.nan, 0.9, 0.85])
    np.testing.assert_allclose(one.low, one.mean)


def test_an_empty_curve_has_no_answer():
    empty = AnytimeCurve(np.zeros(0), np.zeros(0))
    assert np.isnan(empty.at(np.array([1.0, 2.0]))).all()
    assert anytime_band([]).grid.size == 0
    with pytest.raises(KeyError):
        anytime_curve(REPEAT_1, "best_val_loss", "test_loss", "min", cost="flops")


# ---------------------------------------------------------------- compute reductions (the export's)


def curve(costs, values):
    return AnytimeCurve(np.asarray(costs, dtype=float), np.asarray(values, dtype=float))


ON = [curve([2, 4, 6], [0.9, 0.7, 0.7]), curve([2, 4, 6], [0.8, 0.7, 0.6])]
OFF = [curve([5, 10, 15], [0.9, 0.8, 0.6]), curve([5, 10, 15], [0.9, 0.8, 0.7])]


def test_the_compute_reduction_equals_a_hand_computation():
    # grid 2 4 5 6 10 15; on's mean .85 .7 .7 .65 .65 .65; off's mean - - .9 .9 .8 .65
    q, on_cost, off_cost, factor, censored, low, high = compute_reduction(
        ON, OFF, up=False, reference=6, resamples=4000, seed=0
    )
    assert (q, on_cost, off_cost, factor, censored) == (pytest.approx(0.65), 6, 15, 2.5, False)
    # by hand, over the resampled repeats: on (1,1) [1/4] q .7 at 4, off always reaches it at 15 -> 3.75;
    # on mixed [1/2] q .65 at 6: off (2,2) [1/4] never (inf), else 15 -> 2.5; on (2,2) [1/4] q .6 at 6:
    # off (1,1) [1/4] 15 -> 2.5, else never. P(2.5) = 7/16, P(3.75) = 1/4, P(inf) = 5/16
    assert (low, high) == (2.5, math.inf)
    # reference 4: q .7, reached by on at 4 and by off only at 15 in every resample
    assert compute_reduction(ON, OFF, up=False, reference=4, resamples=200)[3:] == (3.75, False, 3.75, 3.75)
    # one repeat each: the factor, no interval
    assert compute_reduction(ON[:1], OFF[:1], up=False, reference=6)[3:] == (15 / 4, False, None, None)
    # off never reaches q: censored, the lower bound off's total cost / on's cost
    better = [curve([2, 4, 6], [0.5, 0.5, 0.5])] * 2
    assert compute_reduction(better, OFF, up=False, reference=4)[3:5] == (15 / 2, True)
    # reference None: q = the base's final mean (.65), which on reaches at 6 -> 15 / 6
    assert compute_reduction(ON, OFF, up=False, reference=None, resamples=10)[:4] == (
        pytest.approx(0.65),
        6,
        15,
        2.5,
    )


def test_reduction_text_says_no_detectable_difference_when_the_interval_contains_one():
    base = dict(gate="topk", dataset="synthetic", task_weights="equal", sampler="random", scheduler="asha")
    base.update(arm="on", base="off", cost="epochs", reference=6.0, q=0.65, arm_cost=6.0, base_cost=15.0)
    r = ComputeReduction(**base, factor=2.5, censored=False, low=2.5, high=math.inf, repeats=(2, 2), level=0.9)
    assert r.text() == "2.5x [90% interval 2.5x, ∞]"
    r = ComputeReduction(**base, factor=1.5, censored=False, low=0.8, high=3.0, repeats=(2, 2), level=0.9)
    assert r.text() == "no detectable difference (1.5x [90% interval 0.8x, 3x])"
    r = ComputeReduction(**base, factor=7.5, censored=True, low=None, high=None, repeats=(1, 1), level=0.9)
    assert r.text() == "> 7.5x (censored) (one repeat: no interval)"


def scheduled_study(arm, scheduler, seed, trials):
    t = {
        tags.GATE: "topk",
        tags.LOCAL_SEARCH: arm,
        tags.DATASET: "synthetic",
        tags.SAMPLER: "random",
        tags.SEED: str(seed),
    }
    if scheduler != "none":
        t[tags.SCHEDULER] = scheduler
    return RecordedStudy(f"topk-{arm}-{scheduler}-{seed}", t, trials)


def test_a_sweep_groups_repeats_by_everything_but_the_seed_and_counts_pairs_of_different_lengths():
    studies = [
        scheduled_study("on", "asha", 0, REPEAT_1),
        scheduled_study("on", "asha", 1, REPEAT_2),
        scheduled_study("off", "asha", 0, [trial(0, 1.0, 0.9, 3), trial(1, 0.8, 0.8, 5), trial(3, 0.9, 0.9, 9)]),
        scheduled_study("off", "none", 0, REPEAT_2),
    ]
    results = sweep_anytime(studies, "best_val_loss", "test_loss", resamples=4000, seed=1)
    groups = [(r.group.arm, r.group.scheduler, r.cost, r.band.repeats) for r in results]
    assert groups == [
        ("off", "asha", "epochs", 1),
        ("off", "asha", "seconds", 1),
        ("off", "none", "epochs", 1),
        ("off", "none", "seconds", 1),
        ("on", "asha", "epochs", 2),
        ("on", "asha", "seconds", 2),
    ]
    on = results[4].band  # the two repeats of test_repeats_are_averaged_on_one_grid_with_a_bootstrap_interval
    np.testing.assert_allclose(on.mean, [np.nan, 0.75, 0.725, 0.75, 0.75])
    # seed 0's pairs: trials 0, 1 and 3 of both (2 failed in on); 1 ran 2 epochs against 5
    assert length_mismatches(studies) == {(anytime_group(studies[0]), "off"): (3, 1)}
    reductions = sweep_reductions(results, up=False, resamples=100)
    assert [(c.scheduler, c.arm, c.base, c.cost) for c in reductions] == [
        ("asha", "on", "off", "epochs"),
        ("asha vs none", "off", "off", "epochs"),
        ("asha", "on", "off", "seconds"),
        ("asha vs none", "off", "off", "seconds"),
    ]
    # on over off (asha, epochs): reference .25 x min(14, 8, 17) = 2, but every repeat has an answer only from
    # 4 (on's second repeat) -> 4: q = on's mean there (.9 + .6) / 2 = .75; off (.9 .8 .8) never reaches it:
    # censored, off's 17 epochs / on's 4; off has one repeat, so no interval
    r = reductions[0]
    assert (r.reference, r.q, r.arm_cost, r.factor, r.censored) == (4, pytest.approx(0.75), 4, 17 / 4, True)
    assert r.text() == "> 4.25x (censored) (one repeat: no interval)"
    # off with asha against off at full length: q = full length's final mean .65 (REPEAT_2 at 8 epochs);
    # full length reaches it first at 4 epochs (.6); asha's off curve .9 .8 .8 never does within its 17
    assert (reductions[1].q, reductions[1].factor) == (pytest.approx(0.65), 4 / 17)
    assert reductions[1].text().startswith("< 0.235x (censored: the off curve never reaches q)")


def test_the_exact_random_search_curve_is_averaged_over_repeats_at_n_times_the_mean_trial_cost():
    """Per repeat (a seed may have its own data split), then the mean. Repeat 1: (val, test) (1.0, .9), (.8, .85);
    repeat 2: (.5, .65), (.7, .55). One trial drawn at random: .875 and .6; the better-validated of two drawn
    with replacement is the first-ranked one with probability 3/4: .8625 and .625. Epochs 3 + 2 + 4 + 4 = 13
    over 4 trials; a failed trial adds a trial and no cost."""
    one = [trial(0, 1.0, 0.9, 3, seconds=1.0), trial(1, 0.8, 0.85, 2, seconds=1.0)]
    two = [trial(0, 0.5, 0.65, 4, seconds=1.0), trial(1, 0.7, 0.55, 4, seconds=1.0)]
    studies = [scheduled_study("on", "none", 0, one), scheduled_study("on", "none", 1, two)]
    epochs = exact_curve(studies, "best_val_loss", "test_loss", "epochs")
    np.testing.assert_allclose(epochs.x, [13 / 4, 26 / 4])
    np.testing.assert_allclose(epochs.value, [(0.875 + 0.6) / 2, (0.8625 + 0.625) / 2])
    assert (epochs.group, epochs.repeats) == (anytime_group(studies[0]), 2)
    failed = trial(2, None, None, None, seconds=float("nan"), status="FAILED")
    studies[1] = scheduled_study("on", "none", 1, [*two, failed])
    np.testing.assert_allclose(exact_curve(studies, "best_val_loss", "test_loss", "epochs").x, [13 / 5, 26 / 5])
