"""Tracking: where studies and trials are recorded (driver side only), and read back for the report."""

from moetune.tracking.base import (
    LedgerEntry,
    RecordedStudy,
    RecordedSweep,
    RecordedTrial,
    StudyRecord,
    SweepLock,
    Tracking,
)

__all__ = [
    "LedgerEntry",
    "RecordedStudy",
    "RecordedSweep",
    "RecordedTrial",
    "StudyRecord",
    "SweepLock",
    "Tracking",
]
