"""The live view of a sweep: one line per study (done/total, failed, best, ETA), redrawn in place with
tqdm on a terminal; plain lines every PLAIN_SECONDS (and when a study ends) when output is not a terminal."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from tqdm import tqdm

PLAIN_SECONDS = 30.0


@dataclass(kw_only=True)
class StudyProgress:
    """One study's line: its budget, what is done (``done_at_start`` of it before this driver: the ETA's base)."""

    key: str
    total: int
    metric: str
    done: int = 0
    failed: int = 0
    stopped: int | None = None  # trials its scheduler stopped at a rung; None: the study has no scheduler
    best: float | None = None
    done_at_start: int = 0
    started: float = field(default_factory=time.time)

    def eta(self, now: float) -> str:
        new = self.done - self.done_at_start
        if self.done >= self.total:
            return "0s"
        if new <= 0:
            return "?"
        return f"{max(0.0, (now - self.started) / new * (self.total - self.done)):.0f}s"

    def counts(self) -> str:
        """What ended how, and the best so far: ``2 failed, 5 stopped, best val_loss 0.5123``."""
        stopped = f", {self.stopped} stopped" if self.stopped is not None else ""
        best = f"{self.best:.4f}" if self.best is not None else "-"
        return f"{self.failed} failed{stopped}, best {self.metric} {best}"

    def line(self, now: float) -> str:
        return f"[{self.key}] {self.done}/{self.total} trials done, {self.counts()}, ETA {self.eta(now)}"


class SweepProgress:
    def __init__(self, studies: list[StudyProgress], stream=None):
        self.studies = {s.key: s for s in studies}
        self.stream = stream or sys.stdout
        self.live = bool(getattr(self.stream, "isatty", lambda: False)())
        self.last_plain = 0.0
        width = max(len(s.key) for s in studies)
        self.bars: dict[str, tqdm] = {}
        if self.live:
            for position, study in enumerate(studies):
                self.bars[study.key] = tqdm(
                    total=study.total,
                    initial=study.done,
                    desc=study.key.ljust(width),
                    position=position,
                    file=self.stream,
                    dynamic_ncols=True,
                    bar_format="{desc} {bar:20} {n_fmt}/{total_fmt}{postfix}",  # tqdm puts ", " before the postfix
                )
                self._redraw(study)

    def _redraw(self, study: StudyProgress) -> None:
        bar = self.bars[study.key]
        bar.n = study.done
        bar.set_postfix_str(f"{study.counts()}, ETA {study.eta(time.time())}", refresh=True)

    def trial_ended(self, key: str, failed: bool, value: float | None, mode: str, stopped: bool = False) -> None:
        study = self.studies[key]
        study.done += 1
        study.failed += int(failed)
        if study.stopped is not None:
            study.stopped += int(stopped)
        if value is not None and (study.best is None or (value < study.best if mode == "min" else value > study.best)):
            study.best = value
        if self.live:
            self._redraw(study)
        elif study.done >= study.total:
            print(study.line(time.time()), file=self.stream, flush=True)
        self.tick()

    def message(self, text: str) -> None:
        """A line above the bars (a failed trial), or a plain line."""
        if self.live:
            tqdm.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def tick(self) -> None:
        """Redraw the bars at most once a second on a terminal; else print the open studies' lines."""
        now = time.time()
        if now - self.last_plain < (1.0 if self.live else PLAIN_SECONDS):
            return
        self.last_plain = now
        for study in self.studies.values():
            if self.live:
                self._redraw(study)
            elif study.done < study.total:
                print(study.line(now), file=self.stream, flush=True)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()
