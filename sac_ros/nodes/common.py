"""Shared pieces of the nodes: parameters, QoS, Image/packet conversion, statistics."""

from __future__ import annotations

import time
from collections import Counter, deque

import numpy as np
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from sac_ros.core import wire
from sac_ros.core.errors import SacError
from sac_ros.core.imageconv import buffer_to_rgb
from sac_ros.core.sac import SacPacket
from sac_ros.core.wire import ECU_STATS_TOPIC, SENSOR_STATS_TOPIC, saturate_u64, topic_in
from sac_ros.msg import EncodedStream as EncodedStreamMsg
from sac_ros.msg import SacPacket as SacPacketMsg
from sac_ros.msg import SacStats

try:  # cv_bridge when the ROS install has it; the package's own conversion otherwise
    from cv_bridge import CvBridge
    _BRIDGE = CvBridge()
except ImportError:  # pragma: no cover - depends on the install
    _BRIDGE = None


def declare(node: Node, name: str, default, description: str, *, low=None, high=None,
            read_only: bool = False, choices: tuple[str, ...] | None = None):
    """Declare a parameter with a description and, for numbers, an enforced range."""
    if choices:
        description = f"{description} One of: {', '.join(choices)}."
    descriptor = ParameterDescriptor(description=description, read_only=read_only)
    if low is not None and isinstance(default, float):
        descriptor.floating_point_range = [FloatingPointRange(from_value=float(low),
                                                              to_value=float(high), step=0.0)]
    elif low is not None and isinstance(default, int) and not isinstance(default, bool):
        descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=1)]
    value = node.declare_parameter(name, default, descriptor).value
    if choices and value not in choices:
        raise SacError(f"parameter {name}='{value}' must be one of: {', '.join(choices)}")
    return value


def qos(reliability: str, depth: int) -> QoSProfile:
    policy = {"reliable": ReliabilityPolicy.RELIABLE,
              "best_effort": ReliabilityPolicy.BEST_EFFORT}[reliability]
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=policy)


def image_to_rgb(msg: Image) -> np.ndarray:
    """RGB array of an Image message (rgb8, bgr8, mono8, yuv422 variants, ...)."""
    if _BRIDGE is not None and msg.encoding in ("rgb8", "bgr8", "mono8", "rgba8", "bgra8"):
        return _BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8")
    return buffer_to_rgb(msg.data, msg.width, msg.height, msg.step, msg.encoding,
                         bool(msg.is_bigendian))


def rgb_to_image(pixels: np.ndarray, header) -> Image:
    """An rgb8 Image from H x W x 3, or mono8 from H x W, uint8."""
    msg = Image()
    msg.header = header
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = "rgb8" if pixels.ndim == 3 else "mono8"
    msg.is_bigendian = 0
    msg.step = msg.width * (3 if pixels.ndim == 3 else 1)
    msg.data = np.ascontiguousarray(pixels).tobytes()
    return msg


def packet_to_msg(packet: SacPacket, header) -> SacPacketMsg:
    """The E2E-protected rclpy message of a core packet (the wire module builds it)."""
    return wire.packet_to_msg(packet, header, SacPacketMsg, EncodedStreamMsg)


class NodeStats:
    """Counters for a node plus a sliding window of sizes and latencies."""

    def __init__(self, window: int = 300):
        self.received = 0
        self.processed = 0
        self.drops: Counter[str] = Counter()
        self._bytes: deque[tuple[float, int]] = deque(maxlen=window)
        self._latency_ms: deque[float] = deque(maxlen=window)

    def drop(self, reason: str, count: int = 1) -> None:
        self.drops[reason] += count

    def done(self, num_bytes: int, latency_ms: float | None) -> None:
        self.processed += 1
        self._bytes.append((time.monotonic(), num_bytes))
        if latency_ms is not None:
            self._latency_ms.append(latency_ms)

    def to_msg(self, node_name: str, header, output_readers: int = 0,
               input_writers: int = -1) -> SacStats:
        # Worker threads update the counters while the stats timer reads them: read copies
        # (dict() and list() copy these in C, under the GIL, without a Python-level loop).
        drops = dict(self.drops)
        samples = list(self._bytes)
        latencies = list(self._latency_ms)
        # Counters are saturated into their uint64 fields: a hostile sequence number
        # (seq 2**64-1 -> a huge "lost") must not make the publish raise.
        msg = SacStats(header=header, node=node_name, received=saturate_u64(self.received),
                       processed=saturate_u64(self.processed),
                       dropped=saturate_u64(sum(drops.values())),
                       output_readers=max(0, min(int(output_readers), 0xFFFFFFFF)),
                       input_writers=max(-1, min(int(input_writers), 0x7FFFFFFF)))
        msg.drop_reasons = list(drops)
        msg.drop_counts = [saturate_u64(v) for v in drops.values()]
        if samples:
            sizes = [b for _, b in samples]
            msg.kbytes_per_frame = float(np.mean(sizes) / 1000.0)
            span = samples[-1][0] - samples[0][0]
            if span > 0 and len(samples) > 1:
                msg.fps = float((len(samples) - 1) / span)
                msg.mbits_per_second = float(sum(sizes[1:]) * 8 / span / 1e6)
        if latencies:
            msg.latency_p50_ms = float(np.percentile(latencies, 50))
            msg.latency_p99_ms = float(np.percentile(latencies, 99))
        return msg


def matched_writers(subscription) -> int:
    """Writers matched to a subscription (reader side), or -1 where rclpy cannot tell."""
    count = getattr(subscription, "get_publisher_count", None)  # not in Humble's rclpy
    return int(count()) if count else -1


def make_executor():
    """The executor the nodes spin in: one thread, the cheapest per message in rclpy.

    Frame work runs in the nodes' own threads (LatestWorker, the codec threads);
    callbacks only hand messages over. rclpy's MultiThreadedExecutor spent about a
    fifth of the sensor's CPU in Python bookkeeping at 30 frames/s (py-spy).
    """
    from rclpy.executors import SingleThreadedExecutor

    return SingleThreadedExecutor()


def run_node(name: str, node_factory, args=None) -> int:
    """Start rclpy, spin one node, exit 2 with a one-line error on bad configuration."""
    import sys

    import rclpy
    from rclpy.exceptions import ParameterException
    from rclpy.executors import ExternalShutdownException

    rclpy.init(args=args)
    node = None
    try:
        node = node_factory()
        executor = make_executor()
        executor.add_node(node)
        executor.spin()
    except (SacError, ParameterException) as exc:
        print(f"{name}: error: {exc}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except Exception:
        if rclpy.ok():
            raise
        # Stopped while starting: the signal shut rclpy down, and the rclpy calls after
        # it fail. That is the stop, not an error (no traceback around a sibling's error).
    finally:
        if node is not None:
            close = getattr(node, "close", None)
            if close:
                close()
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


class LatestWorker:
    """Hands messages from a callback to one worker thread through a single slot.

    When the worker is busy, a newer message replaces the waiting one and
    ``on_superseded`` counts it: the node keeps up with the newest frame and no
    queue can grow.
    """

    def __init__(self, name: str, process, on_superseded, on_error):
        import threading

        self._process, self._on_superseded, self._on_error = process, on_superseded, on_error
        self._slot = None
        self._cond = threading.Condition()
        self._running = True
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    def put(self, msg) -> None:
        with self._cond:
            if self._slot is not None:
                self._on_superseded()
            self._slot = msg
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._slot is None and self._running:
                    self._cond.wait(0.5)
                if not self._running:
                    return
                msg, self._slot = self._slot, None
            try:
                self._process(msg)
            except Exception as exc:  # the node must survive any one frame
                self._on_error(msg, exc)

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify()
        self._thread.join(timeout=5.0)


def declare_int_list(node: Node, name: str, description: str) -> list[int] | None:
    """An integer-array parameter that may be left unset (None)."""
    from rclpy.exceptions import ParameterUninitializedException
    from rclpy.parameter import Parameter

    node.declare_parameter(name, Parameter.Type.INTEGER_ARRAY,
                           ParameterDescriptor(description=description, read_only=True))
    try:
        value = node.get_parameter(name).value
    except ParameterUninitializedException:
        return None
    return list(value) if value is not None and len(value) else None


def open_segmenter(model: str, backend: str, non_roi_ids: list[int] | None = None):
    """Load the segmentation model, with a start-up error that names the path and default."""
    from sac_ros.segmentation import DEFAULT_MODEL, load_segmenter

    try:
        return load_segmenter(model=model, backend=backend, non_roi_ids=non_roi_ids)
    except SacError as exc:
        raise SacError(f"{exc} (parameter model='{model}'; 'default' is the shipped "
                       f"{DEFAULT_MODEL})") from None


class ReadinessProbe:
    """Watches each camera's sensor and ECU statistics until their outputs are matched.

    The ROS graph lists endpoints before every writer has matched every reader, and
    frames sent before that are lost to the late reader (volatile durability). The
    nodes report how many readers their output writer has matched, and the ECU how
    many writers its packet reader has; a run starts its frames once both sides of
    every hop have matched (``extra`` adds the caller's own subscriptions).
    """

    def __init__(self, node: Node, namespaces: list[str], readers: dict[str, int],
                 extra: list | None = None):
        """``readers``: ``PipelineLayout.readers()``, the readers each output must have."""
        self.wanted = {"sensor_stats": readers["packets"], "ecu_stats": readers["image"]}
        self.latest: dict[tuple[str, str], SacStats] = {}
        self.extra = list(extra or [])
        self._subs = [
            node.create_subscription(
                SacStats, topic_in(ns, {"sensor_stats": SENSOR_STATS_TOPIC,
                                        "ecu_stats": ECU_STATS_TOPIC}[kind]),
                lambda m, key=(ns, kind): self.latest.__setitem__(key, m), 10)
            for ns in namespaces for kind in self.wanted]
        self._namespaces, self._node = namespaces, node

    def _short(self) -> list[str]:
        short = []
        for ns in self._namespaces:
            for kind, wanted in self.wanted.items():
                stats = self.latest.get((ns, kind))
                if stats is None:
                    short.append(f"{ns} {kind}: none yet")
                elif stats.output_readers < wanted:
                    short.append(f"{ns} {kind}: {stats.output_readers}/{wanted} readers")
                elif kind == "ecu_stats" and stats.input_writers == 0:
                    short.append(f"{ns} ECU: no packet writer")
        short += [f"{sub.topic_name}: no writer" for sub in self.extra
                  if matched_writers(sub) == 0]
        return short

    def ready(self) -> bool:
        return not self._short()

    def missing(self) -> str:
        return "; ".join(self._short())

    def destroy(self) -> None:
        for sub in self._subs:
            self._node.destroy_subscription(sub)
