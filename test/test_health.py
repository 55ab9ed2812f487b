"""core/health.py: thresholds over a window of counters -> OK / WARN / ERROR (no ROS)."""

from __future__ import annotations

import pytest

from sac_ros.core.health import (
    ERROR,
    OK,
    WARN,
    HealthWindow,
    RelayWindow,
    Sample,
    Thresholds,
    worst,
)


def frames(start: float, count: int, rate: float, size: int = 10_000, latency=20.0):
    return tuple((start + i / rate, size, latency) for i in range(count))


def window(thresholds: Thresholds, *samples: Sample) -> dict:
    health = HealthWindow(thresholds)
    for sample in samples:
        health.add(sample)
    return {c.what: c for c in health.checks()}


def test_healthy_30_hz_is_ok_everywhere():
    t = Thresholds(min_rate_hz=25.0, bitrate_budget_bps=4e6)
    checks = window(t, Sample(0.0, 0, 0), Sample(5.0, 150, 150, frames=frames(0.0, 150, 30)))
    assert {w: c.level for w, c in checks.items()} == {
        "input rate": OK, "delivery": OK, "latency": OK, "bit rate": OK}
    assert checks["input rate"].message == "30.0 Hz"
    assert checks["delivery"].message == "delivered 150 of 150"
    # 10 kB at 30 Hz = 2.4 Mbit/s, 60% of 4 Mbit/s.
    assert checks["bit rate"].values["budget_percent"] == "60"


def test_superseded_frames_warn_then_error_by_share():
    t = Thresholds(warn_drop_percent=1.0, error_drop_percent=20.0)
    few = window(t, Sample(0.0, 0, 0), Sample(5.0, 100, 95, {"superseded": 5}))
    assert few["delivery"].level == WARN
    assert few["delivery"].message == "dropped 5.0% (superseded 5) of 100"
    assert few["delivery"].values["dropped superseded"] == "5"
    many = window(t, Sample(0.0, 0, 0), Sample(5.0, 100, 70, {"superseded": 30}))
    assert many["delivery"].level == ERROR
    none = window(t, Sample(0.0, 0, 0), Sample(5.0, 100, 100, {}))
    assert none["delivery"].level == OK


def test_only_the_window_counts():
    """An overload that is over leaves the status: the base is the oldest sample still in
    the window, not the start."""
    t = Thresholds(window_s=5.0)
    health = HealthWindow(t)
    health.add(Sample(0.0, 0, 0))
    health.add(Sample(1.0, 30, 10, {"superseded": 20}))
    assert {c.what: c.level for c in health.checks()}["delivery"] == ERROR
    for second in range(2, 9):
        health.add(Sample(float(second), 30 * second, 30 * second - 20, {"superseded": 20}))
    assert {c.what: c.level for c in health.checks()}["delivery"] == OK


def test_lost_packets_count_as_offered():
    """The ECU never receives a lost packet: it is offered (sent) and not delivered."""
    t = Thresholds()
    checks = window(t, Sample(0.0, 0, 0), Sample(5.0, 90, 90, {"lost": 10}))
    assert checks["delivery"].level == WARN
    assert checks["delivery"].message == "dropped 10.0% (lost 10) of 100"


def test_rate_warns_below_minimum_and_errors_when_input_stops():
    t = Thresholds(min_rate_hz=25.0)
    slow = window(t, Sample(0.0, 0, 0), Sample(5.0, 50, 50))
    assert slow["input rate"].level == WARN
    assert slow["input rate"].message == "10.00 Hz, below 25 Hz"
    stopped = window(t, Sample(0.0, 100, 100), Sample(5.0, 100, 100))
    assert stopped["input rate"].level == ERROR
    never = window(t, Sample(0.0, 0, 0), Sample(5.0, 0, 0))
    assert never["input rate"].level == WARN and never["input rate"].message == "no frames yet"
    unchecked = window(Thresholds(), Sample(0.0, 0, 0), Sample(5.0, 50, 50))
    assert unchecked["input rate"].level == OK


def test_latency_p99_levels():
    t = Thresholds(warn_latency_p99_ms=100.0, error_latency_p99_ms=500.0)
    late = frames(0.0, 99, 30, latency=20.0) + ((3.4, 1000, 300.0), (3.5, 1000, 300.0))
    checks = window(t, Sample(0.0, 0, 0), Sample(5.0, 101, 101, frames=late))
    assert checks["latency"].level == WARN
    assert checks["latency"].message.endswith("over 100 ms")
    very = frames(0.0, 10, 30, latency=800.0)
    assert window(t, Sample(0.0, 0, 0), Sample(5.0, 10, 10, frames=very))[
        "latency"].level == ERROR
    # Frames done before the window do not count.
    old = frames(-20.0, 10, 30, latency=800.0)
    assert window(t, Sample(0.0, 0, 0), Sample(5.0, 10, 10, frames=old))["latency"].level == OK


def test_bit_rate_against_budget():
    t = Thresholds(bitrate_budget_bps=2e6)
    over = window(t, Sample(0.0, 0, 0), Sample(5.0, 150, 150, frames=frames(0.0, 150, 30)))
    assert over["bit rate"].level == WARN   # 2.4 of 2 Mbit/s = 120%
    assert "120% of the 2 Mbit/s budget" in over["bit rate"].message
    t = Thresholds(bitrate_budget_bps=1.5e6)
    assert window(t, Sample(0.0, 0, 0), Sample(5.0, 150, 150, frames=frames(0.0, 150, 30)))[
        "bit rate"].level == ERROR   # 160%
    unbudgeted = window(Thresholds(), Sample(0.0, 0, 0),
                        Sample(5.0, 150, 150, frames=frames(0.0, 150, 30)))
    assert unbudgeted["bit rate"].level == OK
    assert unbudgeted["bit rate"].message == "2.40 Mbit/s (no budget set)"
    # A node without byte counts (perception) and no budget has no bit-rate check.
    assert "bit rate" not in window(Thresholds(), Sample(0.0, 0, 0),
                                    Sample(5.0, 3, 3, frames=frames(0.0, 3, 30, size=0)))


def test_decoder_resyncs_warn_in_their_window_only():
    t = Thresholds(window_s=5.0)
    checks = window(t, Sample(0.0, 0, 0, resyncs=0), Sample(5.0, 10, 10, resyncs=1))
    assert checks["decoder"].level == WARN
    later = window(t, Sample(0.0, 0, 0, resyncs=1), Sample(5.0, 10, 10, resyncs=1))
    assert later["decoder"].level == OK
    assert "decoder" not in window(t, Sample(0.0, 0, 0), Sample(5.0, 10, 10))


def test_thresholds_are_checked():
    with pytest.raises(ValueError, match="below"):
        Thresholds(warn_drop_percent=30.0, error_drop_percent=10.0)
    with pytest.raises(ValueError, match="window_s"):
        Thresholds(window_s=0.0)
    Thresholds(warn_drop_percent=30.0, error_drop_percent=0.0)  # error off: any warn is fine


def test_relay_window_warns_on_new_bad_drops_only():
    relay = RelayWindow("camera info", 5.0, quiet=("unmatched",))
    assert relay.check(0.0, 0, 0, {}).message == "none received"
    assert relay.check(1.0, 10, 10, {}).level == OK
    bad = relay.check(2.0, 12, 10, {"size_mismatch": 2})
    assert bad.level == WARN and bad.message == "dropped in the window: size_mismatch 2"
    assert relay.check(3.0, 13, 10, {"size_mismatch": 2, "unmatched": 1}).level == WARN
    for second in range(4, 9):
        last = relay.check(float(second), 13, 10, {"size_mismatch": 2, "unmatched": 1})
    assert last.level == OK and last.values["dropped size_mismatch"] == "2"


def test_worst():
    assert worst([]) == OK
    health = HealthWindow(Thresholds())
    health.add(Sample(0.0, 0, 0))
    health.add(Sample(5.0, 100, 50, {"superseded": 50}))
    assert worst(health.checks()) == ERROR
