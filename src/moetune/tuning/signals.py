"""SIGTERM and SIGHUP stop moetune as Ctrl-C does: a scheduler's or ``docker stop``'s SIGTERM, or a closed
terminal, gets the same clean stop (trials stopped, records closed, a resume command), not a crash."""

from __future__ import annotations

import signal
from typing import Any


class StopSignals:
    """While installed, SIGTERM and SIGHUP go to the SIGINT handler in force: Ray Tune's during a fit
    (stop the trials, then return from fit), else Python's (KeyboardInterrupt). ``received`` is the last
    stop signal, for the exit status (143 for SIGTERM, 130 otherwise)."""

    SIGNALS = (signal.SIGTERM, signal.SIGHUP)

    def __init__(self) -> None:
        self.received: int = signal.SIGINT
        self.previous = {s: signal.getsignal(s) for s in self.SIGNALS}

    @property
    def exit_code(self) -> int:
        return 143 if self.received == signal.SIGTERM else 130

    def _handle(self, signum: int, frame: Any) -> None:
        self.received = signum
        on_interrupt = signal.getsignal(signal.SIGINT)
        if callable(on_interrupt) and on_interrupt is not signal.default_int_handler:
            on_interrupt(signal.SIGINT, frame)
        else:
            raise KeyboardInterrupt

    def install(self) -> StopSignals:
        """(Again after Ray starts: ray.init sets its own SIGTERM handler, which exits mid-call.)"""
        for s in self.SIGNALS:
            signal.signal(s, self._handle)
        return self

    def restore(self) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def __enter__(self) -> StopSignals:
        return self.install()

    def __exit__(self, *exc: object) -> None:
        self.restore()
