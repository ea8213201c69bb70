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


def first_line(exc: BaseException, with_type: bool = False) -> str:
    """An exception's message as one line for an ``error:`` line or a record: its first non-empty line
    (``with_type``: after its type's name), or its type's name when it has no message."""
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    return f"{type(exc).__name__}: {lines[0].strip()}" if with_type else lines[0].strip()
