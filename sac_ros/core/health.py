"""Node health from a window of counters: thresholds -> OK / WARN / ERROR and a message.

ROS-free: the nodes take a ``Sample`` of their cumulative counters once a second
(``nodes.diagnostics`` turns the ``Check`` results into a ``DiagnosticArray`` on
``/diagnostics``). Rates and shares are computed over the last ``window_s`` seconds, from
the difference between the newest sample and the oldest one still in the window, so that
an overload ten minutes ago does not colour today's status, and one slow second does not
flap it. Latency and bit rate come from the samples of the frames done in the window.

Levels are ``diagnostic_msgs/DiagnosticStatus``'s byte values.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

import numpy as np

OK, WARN, ERROR, STALE = 0, 1, 2, 3
LEVEL_NAMES = {OK: "OK", WARN: "WARN", ERROR: "ERROR", STALE: "STALE"}
# Drop reasons for packets that never arrived: they were offered but not received.
UNRECEIVED = ("lost",)
MAX_NAMED_REASONS = 4  # in a status message; the key-values list every reason


@dataclass(frozen=True)
class Thresholds:
    """When a check turns WARN or ERROR. A threshold of 0 turns its check off."""

    window_s: float = 5.0
    min_rate_hz: float = 0.0            # WARN below; ERROR when the input stopped
    warn_drop_percent: float = 1.0      # of the frames offered in the window
    error_drop_percent: float = 20.0
    warn_latency_p99_ms: float = 200.0
    error_latency_p99_ms: float = 1000.0
    bitrate_budget_bps: float = 0.0     # this node's share of the link; 0 = not checked
    warn_bitrate_percent: float = 100.0  # of the budget
    error_bitrate_percent: float = 150.0
    warn_resyncs: int = 1               # decoder resyncs in the window; 0 = not checked

    def __post_init__(self):
        if self.window_s <= 0:
            raise ValueError(f"window_s {self.window_s} must be > 0")
        for warn, error in (("warn_drop_percent", "error_drop_percent"),
                            ("warn_latency_p99_ms", "error_latency_p99_ms"),
                            ("warn_bitrate_percent", "error_bitrate_percent")):
            w, e = getattr(self, warn), getattr(self, error)
            if min(w, e) < 0:
                raise ValueError(f"{warn} / {error} must not be negative")
            if w and e and e < w:
                raise ValueError(f"{error} ({e:g}) is below {warn} ({w:g})")


@dataclass(frozen=True)
class Sample:
    """A node's cumulative counters at ``time_s`` (monotonic seconds), plus the frames it
    finished recently: ``frames`` holds (monotonic time, bytes, latency ms or None)."""

    time_s: float
    received: int
    delivered: int
    drops: dict[str, int] = field(default_factory=dict)
    resyncs: int | None = None          # None: the node has no decoder
    frames: tuple[tuple[float, int, float | None], ...] = ()


@dataclass(frozen=True)
class Check:
    """One status: ``what`` it checks, its level, a one-line message, key-values."""

    what: str
    level: int
    message: str
    values: dict[str, str] = field(default_factory=dict)


def _level(value: float, warn: float, error: float, above: bool = True) -> int:
    """ERROR / WARN when ``value`` is beyond a threshold that is set (non-zero)."""
    beyond = (lambda limit: value > limit) if above else (lambda limit: value < limit)  # noqa: E731
    if error and beyond(error):
        return ERROR
    if warn and beyond(warn):
        return WARN
    return OK


class HealthWindow:
    """The samples of the last ``window_s`` seconds and the checks they give."""

    def __init__(self, thresholds: Thresholds, rate_name: str = "input rate"):
        self.thresholds = thresholds
        self.rate_name = rate_name  # what the rate check is called ("output rate": a source)
        self._samples: deque[Sample] = deque()

    def add(self, sample: Sample) -> None:
        self._samples.append(sample)
        # Keep one sample at or before the window's start, as the base of the differences.
        start = sample.time_s - self.thresholds.window_s
        while len(self._samples) > 2 and self._samples[1].time_s <= start:
            self._samples.popleft()

    def checks(self) -> list[Check]:
        """The node's checks over the window; empty before the first sample."""
        if not self._samples:
            return []
        first, last = self._samples[0], self._samples[-1]
        span = last.time_s - first.time_s
        checks = [self._rate(first, last, span), self._delivery(first, last)]
        start = last.time_s - max(span, self.thresholds.window_s)
        recent = [f for f in last.frames if f[0] > start]
        checks.append(self._latency(recent))
        if any(f[1] for f in last.frames) or self.thresholds.bitrate_budget_bps:
            checks.append(self._bitrate(recent, span))
        if last.resyncs is not None:
            checks.append(self._resyncs(first, last))
        return checks

    def _rate(self, first: Sample, last: Sample, span: float) -> Check:
        t = self.thresholds
        frames = last.received - first.received
        values = {"received": str(last.received), "window_s": f"{span:.1f}"}
        if span <= 0:
            return Check(self.rate_name, OK, "starting", values)
        rate = frames / span
        values["rate_hz"] = f"{rate:.2f}"
        if not t.min_rate_hz:
            return Check(self.rate_name, OK, f"{rate:.1f} Hz", values)
        values["min_rate_hz"] = f"{t.min_rate_hz:g}"
        if last.received == 0:
            return Check(self.rate_name, WARN, "no frames yet", values)
        if frames == 0 and span >= t.window_s:
            return Check(self.rate_name, ERROR, f"stopped: no frames for {span:.0f} s",
                         values)
        if rate < t.min_rate_hz:
            return Check(self.rate_name, WARN, f"{rate:.2f} Hz, below {t.min_rate_hz:g} Hz",
                         values)
        return Check(self.rate_name, OK, f"{rate:.1f} Hz", values)

    def _delivery(self, first: Sample, last: Sample) -> Check:
        t = self.thresholds
        drops = {r: n - first.drops.get(r, 0) for r, n in last.drops.items()}
        drops = {r: n for r, n in drops.items() if n > 0}
        offered = (last.received - first.received
                   + sum(n for r, n in drops.items() if r in UNRECEIVED))
        delivered = last.delivered - first.delivered
        dropped = sum(drops.values())
        values = {"delivered": str(last.delivered),
                  **{f"dropped {r}": str(n) for r, n in sorted(last.drops.items()) if n}}
        if offered <= 0:
            return Check("delivery", OK, "no frames in the window", values)
        # Frames still in the node at the window's edges make delivered + dropped differ
        # from offered by one or two; the share is of what was offered.
        percent = 100.0 * dropped / offered
        values["delivered_percent"] = f"{100.0 * min(delivered, offered) / offered:.1f}"
        values["dropped_percent"] = f"{percent:.1f}"
        level = _level(percent, t.warn_drop_percent, t.error_drop_percent)
        if not dropped:
            return Check("delivery", level, f"delivered {delivered} of {offered}", values)
        named = sorted(drops.items(), key=lambda kv: -kv[1])[:MAX_NAMED_REASONS]
        reasons = ", ".join(f"{r} {n}" for r, n in named)
        return Check("delivery", level, f"dropped {percent:.1f}% ({reasons}) of {offered}",
                     values)

    def _latency(self, recent) -> Check:
        t = self.thresholds
        latencies = [f[2] for f in recent if f[2] is not None]
        if not latencies:
            return Check("latency", OK, "no frames in the window", {})
        p50, p99 = (float(v) for v in np.percentile(latencies, [50, 99]))
        values = {"p50_ms": f"{p50:.1f}", "p99_ms": f"{p99:.1f}", "frames": str(len(latencies))}
        level = _level(p99, t.warn_latency_p99_ms, t.error_latency_p99_ms)
        limit = {WARN: t.warn_latency_p99_ms, ERROR: t.error_latency_p99_ms}.get(level)
        message = f"p99 {p99:.0f} ms" + (f", over {limit:g} ms" if limit else "")
        return Check("latency", level, message, values)

    def _bitrate(self, recent, span: float) -> Check:
        t = self.thresholds
        values = {}
        if t.bitrate_budget_bps:
            values["budget_mbps"] = f"{t.bitrate_budget_bps / 1e6:g}"
        if len(recent) < 2 or recent[-1][0] <= recent[0][0]:
            return Check("bit rate", OK, "no frames in the window", values)
        # Bits between the first and the last frame over the time between them.
        bps = sum(f[1] for f in recent[1:]) * 8 / (recent[-1][0] - recent[0][0])
        values["mbps"] = f"{bps / 1e6:.3f}"
        if not t.bitrate_budget_bps:
            return Check("bit rate", OK, f"{bps / 1e6:.2f} Mbit/s (no budget set)", values)
        percent = 100.0 * bps / t.bitrate_budget_bps
        values["budget_percent"] = f"{percent:.0f}"
        level = _level(percent, t.warn_bitrate_percent, t.error_bitrate_percent)
        return Check("bit rate", level, f"{bps / 1e6:.2f} Mbit/s, {percent:.0f}% of the "
                     f"{t.bitrate_budget_bps / 1e6:g} Mbit/s budget", values)

    def _resyncs(self, first: Sample, last: Sample) -> Check:
        t = self.thresholds
        count = last.resyncs - (first.resyncs or 0)
        values = {"resyncs": str(last.resyncs), "in_window": str(count)}
        if t.warn_resyncs and count >= t.warn_resyncs:
            return Check("decoder", WARN, f"{count} resync(s) in the window (sender restarted "
                         "or its numbering jumped)", values)
        return Check("decoder", OK, f"{last.resyncs} resync(s) in all", values)


def worst(checks: list[Check]) -> int:
    """The worst level of ``checks`` (OK for none)."""
    return max((c.level for c in checks), default=OK)


class RelayWindow:
    """A relay's drops over the last ``window_s`` seconds as one check (the CameraInfo the
    sensor forwards and the ECU republishes). ``quiet`` reasons are reported, not warned:
    an info whose frame was dropped is already counted in that frame's delivery."""

    def __init__(self, what: str, window_s: float, quiet: tuple[str, ...] = ()):
        self.what, self.window_s, self.quiet = what, window_s, quiet
        self._history: deque[tuple[float, dict[str, int]]] = deque()

    def check(self, time_s: float, received: int, forwarded: int,
              drops: dict[str, int]) -> Check:
        drops = {r: int(n) for r, n in drops.items() if n}
        self._history.append((time_s, drops))
        while len(self._history) > 2 and self._history[1][0] <= time_s - self.window_s:
            self._history.popleft()
        base = self._history[0][1]
        new = {r: n - base.get(r, 0) for r, n in drops.items() if n > base.get(r, 0)}
        values = {"received": str(received), "forwarded": str(forwarded),
                  **{f"dropped {r}": str(n) for r, n in sorted(drops.items())}}
        if not received:
            return Check(self.what, OK, "none received", values)
        warned = {r: n for r, n in new.items() if r not in self.quiet}
        if warned:
            reasons = ", ".join(f"{r} {n}" for r, n in sorted(warned.items()))
            return Check(self.what, WARN, f"dropped in the window: {reasons}", values)
        return Check(self.what, OK, f"forwarded {forwarded}, received {received}", values)
