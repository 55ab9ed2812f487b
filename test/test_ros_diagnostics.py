"""/diagnostics from real node processes over real Fast DDS (issue 18 item 3).

The sensor is OK while it keeps up, WARN while frames are superseded (a burst faster
than it can encode), and OK again once the burst is out of the window; the ECU reports
a decoder resync as WARN. Statuses are named "<node>: <what>", hardware_id the camera.
"""

from __future__ import annotations

import dataclasses
import time

import pytest
import ros_helpers as rh
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from ros_helpers import drops_of, frame
from sensor_msgs.msg import Image

from sac_ros.core.codec import EncoderSettings
from sac_ros.core.sac import SacEncoder
from sac_ros.core.wire import DIAGNOSTICS_TOPIC
from sac_ros.msg import SacPacket, SacStats

OK, WARN = DiagnosticStatus.OK[0], DiagnosticStatus.WARN[0]  # bytes in rclpy
WINDOW_S = 2.0
# The machine is shared: latency is not what these tests are about.
RELAXED = {"diag_window_s": WINDOW_S, "diag_warn_latency_p99_ms": 10000.0,
           "diag_error_latency_p99_ms": 20000.0}
DIAG_TIMEOUT = 20.0


class Diagnostics:
    """Our /diagnostics subscription, read per node of this test's namespace."""

    def __init__(self, ros):
        self.ros = ros
        self.arrays = rh.Collector()
        ros.node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, self.arrays,
                                     rh.reliable(200))

    def of(self, node: str, after_ns: int = 0) -> list[dict[str, DiagnosticStatus]]:
        """Each array from ``node`` published after ``after_ns``: {what: status}, oldest
        first."""
        prefix = f"{self.ros.namespace}/{node}: "
        out = []
        for array in self.arrays.messages:
            if rh.stamp_ns(array.header) <= after_ns:
                continue
            mine = {s.name[len(prefix):]: s for s in array.status if s.name.startswith(prefix)}
            if mine:
                out.append(mine)
        return out

    def wait(self, node: str, condition, what: str, after_ns: int = 0):
        def find():
            return next((s for s in reversed(self.of(node, after_ns)) if condition(s)), None)
        return self.ros.wait_for(find, what, DIAG_TIMEOUT)


def level(status: DiagnosticStatus) -> int:
    return status.level[0] if isinstance(status.level, bytes) else int(status.level)


def values(status: DiagnosticStatus) -> dict[str, str]:
    return {kv.key: kv.value for kv in status.values}


def now_ns(ros) -> int:
    return ros.node.get_clock().now().nanoseconds


def test_sensor_ok_then_warn_while_superseding_then_ok(ros):
    width, height = 960, 540
    node = ros.start("sac_sensor", {"preset": "medium", "gop": 10,
                                    "diag_error_drop_percent": 0.0, **RELAXED})
    images = ros.publisher(Image, "image_raw", depth=50)
    packets = ros.subscribe(SacPacket, "sac/packets", depth=100)
    stats = ros.subscribe(SacStats, "sac/sensor_stats", 100)
    diag = Diagnostics(ros)
    ros.wait_discovery(publishers=[(images, 1)], heard_from=[stats, diag.arrays])
    frames = [frame(i, width, height) for i in range(4)]

    def lock_step(count: int) -> None:
        for i in range(count):
            ros.send(images, ros.image(frames[i % 4]), packets)

    lock_step(6)
    sent = now_ns(ros)
    healthy = diag.wait("sac_sensor", lambda s: "delivery" in s and int(
        values(s["delivery"]).get("delivered", 0)) >= 6, "the sensor's health after 6 frames",
        after_ns=sent)
    assert {what: level(s) for what, s in healthy.items()} == {
        "input rate": OK, "delivery": OK, "latency": OK, "bit rate": OK, "camera info": OK}, \
        {what: s.message for what, s in healthy.items()}
    assert healthy["bit rate"].message.endswith("(no budget set)")
    assert healthy["camera info"].message == "none received"
    assert {s.hardware_id for s in healthy.values()} == {ros.namespace.strip("/")}

    # A burst far faster than the medium preset encodes 960x540: the worker's slot keeps
    # only the newest frame, the rest are superseded.
    burst = now_ns(ros)
    for i in range(20):
        images.publish(ros.image(frames[i % 4]))
    warned = diag.wait("sac_sensor", lambda s: level(s["delivery"]) == WARN,
                       "a WARN for superseded frames", after_ns=burst)
    assert "superseded" in warned["delivery"].message, warned["delivery"].message
    superseded = int(values(warned["delivery"])["dropped superseded"])
    assert superseded > 0
    # The same books as SacStats.
    ros.wait_stats(stats, lambda m: drops_of(m).get("superseded", 0) >= superseded,
                   "the superseded frames in SacStats", after_ns=burst)

    # Healthy again once the burst has left the window.
    recovered_from = time.monotonic()
    while time.monotonic() - recovered_from < WINDOW_S + 1.0:
        lock_step(1)
    again = now_ns(ros)
    diag.wait("sac_sensor", lambda s: level(s["delivery"]) == OK,
              "OK again after the window", after_ns=again)
    assert node.running


@pytest.fixture(scope="module")
def encoded():
    encoder = SacEncoder(rh.WIDTH, rh.HEIGHT, 20.0, 34.0, EncoderSettings("h264", "veryfast", 5))
    try:
        return [encoder.encode(frame(i), rh.polygon_blocks(frame(i))) for i in range(10)]
    finally:
        encoder.close()


def test_ecu_warns_on_a_decoder_resync(ros, encoded):
    packets = ros.publisher(SacPacket, "sac/packets", depth=50)
    outputs = ros.subscribe(Image, "sac/image")
    stats = ros.subscribe(SacStats, "sac/ecu_stats")
    node = ros.start("sac_ecu", RELAXED)
    diag = Diagnostics(ros)
    ros.wait_discovery(publishers=[(packets, 1)], heard_from=[stats, diag.arrays])
    for packet in encoded[:5]:
        ros.send(packets, ros.packet_msg(packet), outputs)
    sent = now_ns(ros)
    calm = diag.wait("sac_ecu", lambda s: int(values(s["delivery"]).get("delivered", 0)) >= 5,
                     "the ECU's health after 5 packets", after_ns=sent)
    assert level(calm["decoder"]) == OK and level(calm["delivery"]) == OK, calm
    assert calm["decoder"].message == "0 resync(s) in all"
    # The sender's numbering jumps far beyond what its stamps allow (a restarted sensor
    # that does not count from 0): the receiver follows it, a resync.
    jumped = dataclasses.replace(encoded[5], seq=1_000_000)
    ros.send(packets, ros.packet_msg(jumped), outputs)
    after = now_ns(ros)
    warned = diag.wait("sac_ecu", lambda s: level(s["decoder"]) == WARN,
                       "a WARN for the resync", after_ns=after)
    assert values(warned["decoder"])["resyncs"] == "1"
    assert node.running


def test_video_source_reports_its_output_rate(ros):
    """A node without an executor (the camera stand-in's publishing loop) still reports."""
    images = ros.subscribe(Image, "image_raw", depth=100)
    diag = Diagnostics(ros)
    source = ros.start("sac_video_source", {
        "input": "sample", "max_frames": 90, "fps": 30.0, "width": 160,
        "wait_for_subscribers": 1, "start_delay": 0.5, "diag_window_s": WINDOW_S,
        "diag_min_rate_hz": 5.0})
    status = diag.wait("sac_video_source", lambda s: int(
        values(s["output rate"]).get("received", 0)) > 0, "the source's output rate")
    assert level(status["output rate"]) == OK, status["output rate"].message
    assert float(values(status["output rate"])["rate_hz"]) > 5.0
    assert status["output rate"].hardware_id == ros.namespace.strip("/")
    assert source.proc.wait(60) == 0
    assert len(images) > 0


def test_view_reports_on_diagnostics(ros):
    """sac_view (the Foxglove live view) is a node like the others: it reports too, OK
    while nothing it was sent has failed."""
    diag = Diagnostics(ros)
    ros.start("sac_view", {"port": 0, "diag_window_s": WINDOW_S})
    status = diag.wait("sac_view", lambda s: "delivery" in s, "the view's diagnostics")
    assert {level(s) for s in status.values()} == {OK}, {w: s.message for w, s in status.items()}
    assert status["delivery"].hardware_id == ros.namespace.strip("/")


def test_perception_reports_its_latency(ros):
    """Camera stamp -> class map published, judged like the other nodes' latency: a frame
    stamped 3 s in the past is an ERROR against a 1 s limit."""
    class_maps = ros.subscribe(Image, "sac/perception/class_map")
    diag = Diagnostics(ros)
    ros.start("sac_perception", {"segment_every": 1,
                                 "diag_window_s": WINDOW_S, "diag_warn_latency_p99_ms": 500.0,
                                 "diag_error_latency_p99_ms": 1000.0})
    images = ros.publisher(Image, "sac/image")
    ros.wait_discovery(publishers=[(images, 1)])
    ros.wait_for(lambda: diag.of("sac_perception"), "perception's diagnostics",
                 rh.DISCOVERY_TIMEOUT)
    for i in range(3):
        ros.send(images, ros.image(frame(i)), class_maps, f"the class map of frame {i}")
    status = diag.wait("sac_perception", lambda s: "frames" in values(s["latency"]),
                       "perception's latency")
    assert level(status["latency"]) == OK, status["latency"].message
    assert 0.0 < float(values(status["latency"])["p99_ms"]) < 500.0
    stale = ros.image(frame(3))
    stale.header.stamp.sec -= 3
    after = now_ns(ros)
    ros.send(images, stale, class_maps, "the class map of the stale frame")
    status = diag.wait("sac_perception", lambda s: level(s["latency"]) > OK,
                       "an ERROR for the late frame", after_ns=after)
    assert float(values(status["latency"])["p99_ms"]) >= 2900.0
