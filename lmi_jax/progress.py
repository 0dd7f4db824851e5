"""Progress lines with an ETA, for any work counted in units (steps, batches, subjects).

`Progress(total, every=0, every_s=inf, clock=time.perf_counter)` counts the units done out of
`total` against a clock. `update(done, force=False)` moves to `done` units and returns a
`Report` when a line is due, else None. A line is due when forced, at the last unit, once
`every` (> 0) units have been done since the previous line, or once `every_s` seconds have
passed since it. `restart_clock(done)` starts the clock afresh at `done` units: after a
first unit that also compiled, rates and ETAs are then those of the compiled work.

A `Report` says where the work stands; its `share`, `rate` and `eta_s` are what the lines
print, and `hms(seconds)` writes an ETA as 1h02m03s. The caller writes the line itself, in
its own words. Not thread-safe: a caller fed from several threads holds a lock around it.
"""

import dataclasses
import math
import time
from collections.abc import Callable

Clock = Callable[[], float]


@dataclasses.dataclass(frozen=True)
class Report:
  """Where the work stands when a line is due.

  done, total: units. elapsed_s: seconds since the clock (re)started, over `counted` units.
  window, window_s: units and seconds since the previous line (or the clock's restart).
  """
  done: int
  total: int
  elapsed_s: float
  counted: int
  window: int
  window_s: float

  @property
  def share(self) -> float:
    """The share of the work done, in [0, 1] (1 for no work)."""
    return self.done / self.total if self.total > 0 else 1.0

  @property
  def rate(self) -> float:
    """Units per second since the previous line; nan when no unit was done in between."""
    return self.window / self.window_s if self.window > 0 and self.window_s > 0 else math.nan

  @property
  def eta_s(self) -> float:
    """Seconds left at the mean rate since the clock (re)started; nan before any unit."""
    if self.counted <= 0:
      return math.nan
    return self.elapsed_s / self.counted * max(self.total - self.done, 0)


def hms(seconds: float) -> str:
  """Seconds as "1h02m03s" (whole seconds, rounded down); "?" when not finite."""
  if not math.isfinite(seconds):
    return "?"
  whole = int(seconds)
  return f"{whole // 3600}h{whole // 60 % 60:02d}m{whole % 60:02d}s"


class Progress:
  """Counts units done out of `total` and says when a progress line is due (module docstring)."""

  def __init__(self, total: int, done: int = 0, every: int = 0, every_s: float = math.inf,
               clock: Clock = time.perf_counter):
    self.total, self._every, self._every_s, self._clock = total, every, every_s, clock
    self.restart_clock(done)

  def restart_clock(self, done: int) -> None:
    """Starts the clock afresh, and the count of the next line's window, at `done` units."""
    self.done = done
    self._start, self._start_done = self._clock(), done
    self._last, self._last_done = self._start, done

  def update(self, done: int, force: bool = False) -> Report | None:
    """Moves to `done` units; the `Report` of a line when one is due, else None."""
    self.done, now = done, self._clock()
    due = (force or done >= self.total or
           (self._every > 0 and done - self._last_done >= self._every) or
           now - self._last >= self._every_s)
    if not due:
      return None
    report = Report(done=done, total=self.total, elapsed_s=now - self._start,
                    counted=done - self._start_done, window=done - self._last_done,
                    window_s=now - self._last)
    self._last, self._last_done = now, done
    return report
