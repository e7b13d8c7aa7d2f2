"""How long work says how far it is: the one progress callback of the library.

Inside the content store a `Progress` is told the bytes done since its last call (the TAR
writer and the verifying reader call it as bytes pass). A caller who wants to show progress
passes a `Meter`, which adds those up and hands its `report` callback one `Step` at a time:
what the task is, which item (a field, a blob), the bytes done and the bytes expected
(None while unknown). The library never draws anything; the CLI turns steps into a bar
(casstore/cli/progress.py), a library user into whatever they like.

A meter reports at most every `every_ns` (and always the first and last step), so that a
million small files cost a million additions, not a million callbacks."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

Progress = Callable[[int], None]


@dataclass(frozen=True)
class Step:
    """Where a task is: `done` of `total` units (bytes, unless the task counts items)."""

    task: str
    item: str
    done: int
    total: int | None
    unit: str = "B"

    @property
    def fraction(self) -> float | None:
        """done / total, between 0 and 1; None while the total is unknown."""
        if not self.total:
            return None
        return min(1.0, self.done / self.total)


Report = Callable[[Step], None]

EVERY_NS = 50_000_000  # 20 reports a second at most


class Meter:
    """Counts the units of one task and reports them to `report` (a `Progress`: call it with
    the units done since the last call)."""

    def __init__(self, report: Report, task: str, item: str = "", total: int | None = None,
                 unit: str = "B", every_ns: int = EVERY_NS):
        self._report = report
        self.task, self.item, self.total, self.unit = task, item, total, unit
        self.done = 0
        self._every_ns = every_ns
        self._last_ns = 0

    def expect(self, total: int) -> None:
        """The total is known now (after a scan, say)."""
        self.total = total
        self._emit(force=True)

    def __call__(self, n: int) -> None:
        self.done += n
        self._emit()

    def finish(self) -> None:
        """The task is done: one last step, whatever the throttle says."""
        self._emit(force=True)

    def _emit(self, force: bool = False) -> None:
        now = time.monotonic_ns()
        if force or now - self._last_ns >= self._every_ns:
            self._last_ns = now
            self._report(Step(self.task, self.item, self.done, self.total, self.unit))


def meter(report: Report | None, task: str, item: str = "", total: int | None = None,
          unit: str = "B") -> Meter | None:
    """A Meter for `report`, or None when nobody asked for progress."""
    return None if report is None else Meter(report, task, item, total, unit)
