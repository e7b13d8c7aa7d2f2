"""The progress bar of long commands: the library's progress steps (casstore.cas.progress)
drawn on stderr, one line redrawn in place, with the bytes done, the rate and the time left.

Only on a terminal and never with --json: a log, a pipe or a script reading JSON sees
nothing of it (`bar_for`). Each task gets its line; a finished line stays, so that the
screen keeps what was done. `CASSTORE_PROGRESS=0` turns the bars off on a terminal too."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from typing import Iterator, TextIO

from casstore.cas.progress import Report, Step
from casstore.cli import output  # output.stderr_is_terminal is looked up when called (tests fake a terminal)
from casstore.cli.output import human_bytes

WIDTH = 100
BAR = 24


def shown(as_json: bool) -> bool:
    """Whether a bar is drawn: stderr is a terminal, no --json, CASSTORE_PROGRESS is not 0."""
    return not as_json and os.environ.get("CASSTORE_PROGRESS", "1") != "0" and output.stderr_is_terminal()


class Bar:
    """A Report that draws each step: `label item [#####-----] 45% 120 MiB/1.0 GiB 85 MiB/s 7s left`."""

    def __init__(self, label: str, out: TextIO | None = None):
        self.label = label
        self.out = out or sys.stderr
        self._key: tuple[str, str] | None = None
        self._started = time.monotonic()
        self._drawn = False

    def __call__(self, step: Step) -> None:
        key = (step.task, step.item if step.unit == "B" else "")  # a count of items is one line
        if key != self._key:
            self._end_line()
            self._key, self._started = key, time.monotonic()
        self.out.write("\r" + self.line(step, time.monotonic() - self._started)[:WIDTH - 1].ljust(WIDTH - 1))
        self.out.flush()
        self._drawn = True

    def line(self, step: Step, elapsed: float) -> str:
        """The text of one step, `elapsed` seconds after its task began."""
        name = " ".join(p for p in (self.label, step.item) if p)
        amount = _amount(step.done, step.unit)
        fraction = step.fraction
        if fraction is None:
            return f"{name}  {amount}  {_rate(step.done, elapsed, step.unit)}"
        filled = int(fraction * BAR)
        rate = step.done / elapsed if elapsed > 0 else 0.0
        left = f"{_duration((step.total - step.done) / rate)} left" if rate and step.total else ""
        if step.unit == "B":
            amount = f"{amount}/{_amount(step.total, step.unit)}"
        else:
            amount = f"{step.done}/{step.total} {step.unit}"
        return (f"{name}  [{'#' * filled}{'-' * (BAR - filled)}] {fraction * 100:3.0f}%  "
                f"{amount}  {_rate(step.done, elapsed, step.unit)}  {left}").rstrip()

    def close(self) -> None:
        self._end_line()

    def _end_line(self) -> None:
        if self._drawn:
            self.out.write("\n")
            self.out.flush()
            self._drawn = False


@contextlib.contextmanager
def bar_for(as_json: bool, label: str) -> Iterator[Report | None]:
    """A Bar for the command's work if one is shown (else None), closed at the end."""
    if not shown(as_json):
        yield None
        return
    bar = Bar(label)
    try:
        yield bar
    finally:
        bar.close()


def _amount(n: int | None, unit: str) -> str:
    return human_bytes(n) if unit == "B" else f"{n} {unit}"


def _rate(done: int, elapsed: float, unit: str) -> str:
    if elapsed <= 0:
        return ""
    per_s = done / elapsed
    return f"{human_bytes(int(per_s))}/s" if unit == "B" else f"{per_s:.1f}/s"


def _duration(seconds: float) -> str:
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
