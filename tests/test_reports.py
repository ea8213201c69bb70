"""How a trial's epochs reach the driver: in batches at most every few seconds, the rest with the final
report, and those before a failure before the error; the driver logs each epoch once, whichever report
carried it."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from moetune.contract import (
    EPOCHS,
    FINAL,
    REPORT,
    EpochReport,
    FinalReport,
    Outcome,
    outcome_of,
    parse_report,
    reported_epochs,
)
from moetune.tuning.driver import Driver
from moetune.tuning.progress import StudyProgress
from moetune.tuning.trial import EpochSender


class Clock:
    """A clock the test moves: one second per epoch."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def metrics(epoch: int) -> dict[str, float]:
    return {"train_loss": 1.0 / epoch, "val_loss": 2.0 / epoch}


def train(sender: EpochSender, clock: Clock, epochs: int, seconds_per_epoch: float) -> None:
    for epoch in range(1, epochs + 1):
        clock.now += seconds_per_epoch
        sender.epoch(epoch, metrics(epoch))


def sending(seconds_per_epoch: float, epochs: int) -> list[dict]:
    """What a trial of ``epochs`` epochs sends, at most every 5 s and with its final report."""
    sent: list[dict] = []
    clock = Clock()
    sender = EpochSender("val_loss", send=sent.append, every=5.0, clock=clock)
    train(sender, clock, epochs, seconds_per_epoch)
    sender.final(FINAL_REPORT)
    return sent


FINAL_REPORT = FinalReport({"best_val_loss": 0.5, "test_loss": 0.6}, {"best_epoch": 4})


def test_epochs_go_in_batches_at_most_every_few_seconds_and_the_rest_with_the_final_report():
    sent = sending(seconds_per_epoch=1.0, epochs=12)
    assert [r[REPORT] for r in sent] == [EPOCHS, EPOCHS, FINAL]
    assert [[e.epoch for e in reported_epochs(r)] for r in sent] == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10], [11, 12]]
    assert [e for r in sent for e in reported_epochs(r)] == [EpochReport(n, metrics(n)) for n in range(1, 13)]
    assert sent[0]["val_loss"] == metrics(5)["val_loss"]  # Tune's own view: the batch's last epoch
    assert sent[-1]["val_loss"] == 0.5  # and the final report's best
    assert [parse_report(r) for r in sent[:2]] == [None, None]
    assert parse_report(sent[-1]) == FINAL_REPORT
    assert outcome_of(sent[0]) is Outcome.STOPPED and outcome_of(sent[-1]) is Outcome.FINISHED


def test_a_short_trial_sends_one_report_with_all_its_epochs():
    sent = sending(seconds_per_epoch=0.05, epochs=12)
    assert len(sent) == 1 and [e.epoch for e in reported_epochs(sent[0])] == list(range(1, 13))


def test_slow_epochs_go_one_by_one():
    sent = sending(seconds_per_epoch=6.0, epochs=3)
    assert [[e.epoch for e in reported_epochs(r)] for r in sent] == [[1], [2], [3], []]


def test_a_trial_that_raises_sends_its_epochs_before_the_error_and_keeps_its_error():
    sent: list[dict] = []
    clock = Clock()
    with pytest.raises(ValueError, match="diverged"):
        with EpochSender("val_loss", send=sent.append, every=5.0, clock=clock) as sender:
            train(sender, clock, epochs=3, seconds_per_epoch=1.0)
            raise ValueError("diverged at epoch 4")
    assert [[e.epoch for e in reported_epochs(r)] for r in sent] == [[1, 2, 3]]

    def refuse(result: dict) -> None:
        raise RuntimeError("Tune is gone")

    with pytest.raises(ValueError, match="diverged"):  # a failed send does not hide the trial's error
        with EpochSender("val_loss", send=refuse, every=5.0, clock=clock) as sender:
            sender.epoch(1, metrics(1))
            raise ValueError("diverged at epoch 2")


def test_an_interrupted_trial_sends_nothing_more():
    sent: list[dict] = []
    clock = Clock()
    with pytest.raises(KeyboardInterrupt):
        with EpochSender("val_loss", send=sent.append, every=5.0, clock=clock) as sender:
            train(sender, clock, epochs=3, seconds_per_epoch=1.0)
            raise KeyboardInterrupt
    assert sent == []  # an interrupted attempt is run again; Tune is stopping it


def test_the_driver_logs_each_epoch_once_from_batches_and_the_final_report():
    logged: list[tuple[int, EpochReport]] = []
    record = SimpleNamespace(log_epoch=lambda number, report: logged.append((number, report)))
    study = SimpleNamespace(
        plan=SimpleNamespace(key="topk"),
        config=SimpleNamespace(tuner=SimpleNamespace(metric="val_loss")),
        record=record,
        progress=StudyProgress(key="topk", total=1, metric="val_loss"),
    )
    driver = Driver([study])  # type: ignore[list-item]
    driver.attempts["t1"] = (study, 7)  # type: ignore[assignment]
    sent = sending(seconds_per_epoch=1.0, epochs=7)
    for result in [*sent, {"done": True}]:  # and a result of Tune's own
        driver.on_trial_result("t1", result)
    driver.on_trial_result("another trial", sent[0])
    assert logged == [(7, EpochReport(n, metrics(n))) for n in range(1, 8)]
    assert driver.epochs["t1"] == {n: metrics(n)["val_loss"] for n in range(1, 8)}
