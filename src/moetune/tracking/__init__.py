"""Tracking: where studies and trials are recorded (driver side only), and read back for the report."""

from moetune.tracking.base import RecordedStudy, RecordedSweep, RecordedTrial, StudyRecord, Tracking

__all__ = ["RecordedStudy", "RecordedSweep", "RecordedTrial", "StudyRecord", "Tracking"]
