"""``/diagnostics`` for every node: ``diagnostic_msgs/DiagnosticArray`` at 1 Hz.

The levels come from ``core.health`` (thresholds over a window of the node's counters);
this module declares the thresholds as parameters and builds the messages. Each check is
one status named the ROS way, ``"<node>: <what>"`` (``/front/sac_sensor: delivery``),
with ``hardware_id`` the camera namespace (``front``), so that rqt_robot_monitor and
diagnostic_aggregator group a camera's nodes. SacStats stays the detailed record.

Use: ``thresholds = declare_diagnostics(node, ...)`` with the node's other parameters
(before ``check_parameter_names``), then ``Diagnostics(node, thresholds, sample)``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from std_msgs.msg import Header

from sac_ros.core.health import Check, HealthWindow, RelayWindow, Sample, Thresholds
from sac_ros.core.wire import DIAGNOSTICS_TOPIC
from sac_ros.nodes.common import declare

PERIOD_S = 1.0
MAX_VALUE_CHARS = 200  # a key-value carries a figure or a short name, never a payload


def declare_diagnostics(node: Node, *, bitrate: bool = False, resyncs: bool = False,
                        target_bitrate: float = 0.0) -> Thresholds:
    """Declare the ``diag_*`` threshold parameters; ``bitrate`` / ``resyncs``: the node
    has a bit-rate budget (sensor: ``diag_bitrate_budget``, else its ``target_bitrate``) /
    a decoder that can resync (ECU)."""
    d = lambda *a, **k: declare(node, *a, read_only=True, **k)  # noqa: E731
    values = dict(
        window_s=d("diag_window_s", 5.0, "Diagnostics: seconds of counters each /diagnostics "
                   "status is computed over.", low=1.0, high=600.0),
        min_rate_hz=d("diag_min_rate_hz", 0.0, "Diagnostics: input rate (Hz) below which the "
                      "status is WARN, and ERROR when the input stops for a whole window; "
                      "0 = rate not checked.", low=0.0, high=1000.0),
        warn_drop_percent=d("diag_warn_drop_percent", 1.0, "Diagnostics: frames dropped in "
                            "the window, % of those offered, above which the status is WARN; "
                            "0 = off.", low=0.0, high=100.0),
        error_drop_percent=d("diag_error_drop_percent", 20.0, "Diagnostics: dropped %, as "
                             "diag_warn_drop_percent, above which the status is ERROR; "
                             "0 = off.", low=0.0, high=100.0),
        warn_latency_p99_ms=d("diag_warn_latency_p99_ms", 200.0, "Diagnostics: 99th "
                              "percentile of camera stamp -> output latency (ms) in the "
                              "window above which the status is WARN; 0 = off.",
                              low=0.0, high=60000.0),
        error_latency_p99_ms=d("diag_error_latency_p99_ms", 1000.0, "Diagnostics: latency "
                               "p99 (ms) above which the status is ERROR; 0 = off.",
                               low=0.0, high=60000.0))
    if bitrate:
        values.update(
            bitrate_budget_bps=d("diag_bitrate_budget", 0.0, "Diagnostics: this camera's "
                                 "bit-rate budget in bit/s (its share of the link); 0 = "
                                 "target_bitrate when that is set, else not checked.",
                                 low=0.0, high=1e10),
            warn_bitrate_percent=d("diag_warn_bitrate_percent", 100.0, "Diagnostics: bit "
                                   "rate over the window, % of the budget, above which the "
                                   "status is WARN; 0 = off.", low=0.0, high=1000.0),
            error_bitrate_percent=d("diag_error_bitrate_percent", 150.0, "Diagnostics: bit "
                                    "rate, % of the budget, above which the status is ERROR; "
                                    "0 = off.", low=0.0, high=1000.0))
    if resyncs:
        values["warn_resyncs"] = d("diag_warn_resyncs", 1, "Diagnostics: decoder resyncs "
                                   "(the sender restarted or its numbering jumped) in the "
                                   "window from which the status is WARN; 0 = off.",
                                   low=0, high=1000)
    if bitrate and not values["bitrate_budget_bps"]:
        values["bitrate_budget_bps"] = float(target_bitrate)
    try:
        return Thresholds(**values)
    except ValueError as exc:
        from sac_ros.core.errors import SacError

        raise SacError(f"diagnostics thresholds: {exc}") from None


def status_of(node_name: str, hardware_id: str, check: Check) -> DiagnosticStatus:
    """One check as a DiagnosticStatus named ``"<node>: <what>"``."""
    return DiagnosticStatus(
        level=bytes([check.level]), name=f"{node_name}: {check.what}",
        message=check.message[:MAX_VALUE_CHARS], hardware_id=hardware_id,
        values=[KeyValue(key=k, value=str(v)[:MAX_VALUE_CHARS])
                for k, v in check.values.items()])


def camera_id(node: Node) -> str:
    """The camera a node serves: its namespace without the slashes ("" at the root)."""
    return node.get_namespace().strip("/")


class Diagnostics:
    """Publishes the node's checks on /diagnostics every second.

    ``sample``: the node's counters now (``NodeStats.sample``). Nodes that spin get a
    timer; a node that does not (the video source's publishing loop) calls ``tick``.
    """

    def __init__(self, node: Node, thresholds: Thresholds, sample: Callable[[], Sample], *,
                 rate_name: str = "input rate", timer: bool = True):
        self._node = node
        self._window = HealthWindow(thresholds, rate_name=rate_name)
        self._sample = sample
        self._name = node.get_fully_qualified_name()
        self.hardware_id = camera_id(node)
        self._publisher = node.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, 10)
        self._next = time.monotonic()
        self._relays: list[tuple[RelayWindow, object]] = []
        if timer:
            node.create_timer(PERIOD_S, self.publish)

    def add_relay(self, what: str, relay, quiet: tuple[str, ...] = ()) -> None:
        """Also report a relay (``received``, ``forwarded``, ``drops``) as check ``what``."""
        self._relays.append((RelayWindow(what, self._window.thresholds.window_s, quiet), relay))

    def publish(self) -> DiagnosticArray:
        """Take a sample, publish the checks; the message."""
        sample = self._sample()
        self._window.add(sample)
        checks = self._window.checks() + [
            window.check(sample.time_s, relay.received, relay.forwarded, dict(relay.drops))
            for window, relay in self._relays]
        msg = DiagnosticArray(header=Header(stamp=self._node.get_clock().now().to_msg()),
                              status=[status_of(self._name, self.hardware_id, c)
                                      for c in checks])
        self._publisher.publish(msg)
        return msg

    def tick(self) -> None:
        """Publish if a period has passed since the last time (for loops without a timer)."""
        now = time.monotonic()
        if now >= self._next:
            self._next = now + PERIOD_S
            self.publish()
