"""Typed errors, so callers (the CLI, the tuner) can tell bad input from a diverged run."""


class MoetuneError(Exception):
    """Base class of every error moetune raises on purpose."""


class ConfigError(MoetuneError, ValueError):
    """Bad input found before any work starts; the message names the problem and the fix."""


class DataError(MoetuneError, ValueError):
    """A dataset file or folder is missing or malformed; the message names the file (and line)."""


class TrainingDivergedError(MoetuneError, RuntimeError):
    """The loss became non-finite; carries the epoch and the cause so a tuner can record the failure."""

    def __init__(self, epoch: int, cause: str):
        self.epoch = epoch
        self.cause = cause
        super().__init__(f"training diverged at epoch {epoch}: {cause}")

    def __reduce__(self):  # picklable, so Ray can carry it from the trial worker to the driver
        return type(self), (self.epoch, self.cause)


class SweepLockedError(MoetuneError):
    """Another live driver holds the sweep; the message names its process."""
