"""Anytime budget curves (moetune.report.anytime) on hand-built trials, against a hand computation."""

from __future__ import annotations

import numpy as np
import pytest

from moetune.report.anytime import AnytimeCurve, anytime_band, anytime_curve, study_anytime_curve
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
