"""Progress of a long command: tqdm's bar on a terminal, plain lines when stderr is not one
(piped into a log or CI), so that a run of minutes is never silent."""

from __future__ import annotations

import math
import sys
import time

PLAIN_STEP = 0.10      # a plain line at every 10% of the work...
PLAIN_QUIET_S = 30.0   # ...and after 30 s without one (a slow step, or no known total)


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 60} min {seconds % 60:02d} s" if seconds >= 60 else f"{seconds} s"


class Progress:
    """``update(n)`` as work gets done; ``stage(text)`` says what is being done. A total
    that turns out too small grows with the work (it is an estimate where sizes are
    matched: how many encodes a match takes is not known beforehand)."""

    def __init__(self, desc: str, unit: str, total: int | None = None, disable: bool = False,
                 stream=None):
        self.desc, self.unit, self.total = desc, unit, total
        self.stream = stream or sys.stderr
        self.n, self.what = 0, ""
        self.start = self._last = time.monotonic()
        self._next = 1           # the next step (of PLAIN_STEP) that gets a line
        self.bar = None
        self.plain = not disable and not self.stream.isatty()
        if not disable and not self.plain:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit=unit, desc=desc, file=self.stream)

    def set_total(self, total: int) -> None:
        self.total = total
        if self.bar is not None:
            self.bar.total = total
            self.bar.refresh()

    def stage(self, text: str) -> None:
        self.what = text
        if self.bar is not None:
            self.bar.set_postfix_str(text)

    def update(self, count: int = 1) -> None:
        if self.total is not None and self.n + count > self.total:
            # Past the estimate: guess 10% more rather than claim 100% done.
            self.set_total(int(1.1 * (self.n + count)) + 1)
        self.n += count
        if self.bar is not None:
            self.bar.update(count)
        elif self.plain:
            self._maybe_line()

    def _maybe_line(self) -> None:
        now = time.monotonic()
        share = self.n / self.total if self.total else None
        step = math.floor(share / PLAIN_STEP + 1e-9) if share is not None else 0
        if share is not None and step >= self._next:
            self._next = step + 1
        elif now - self._last < PLAIN_QUIET_S:
            return
        self._last = now
        self.write(self._line(now, share))

    def _line(self, now: float, share: float | None) -> str:
        elapsed = now - self.start
        done = f"{self.n}/{self.total} {self.unit}s" if self.total else f"{self.n} {self.unit}s"
        line = f"{self.desc}: {f'{share:.0%} ' if share is not None else ''}({done}) after " \
               f"{_duration(elapsed)}"
        if share:
            line += f", about {_duration(elapsed * (1 - share) / share)} left"
        return line + (f"; {self.what}" if self.what else "")

    def write(self, text: str) -> None:
        """A line of its own, above the bar on a terminal."""
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.plain and self.n:
            self.write(f"{self.desc}: done, {self.n} {self.unit}s in "
                       f"{_duration(time.monotonic() - self.start)}")
