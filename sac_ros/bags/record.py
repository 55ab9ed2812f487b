"""``sac bag record``: raw subscriptions on chosen topics, written to a bag as they arrive.

Like rosbag2, a message's bag time is its receive time on this node's clock and the
payload is the serialized CDR as received (``raw=True`` subscriptions). Topics may
appear later than the recorder: the graph is polled and each requested topic is
subscribed as soon as it has a type. The QoS reliability follows the publishers
(best effort if any publisher offers only that). Message definitions come from the
shared typestore (ROS 2 Kilted + sac_ros). The bag is moved to its final name when the
recording stops (duration reached, SIGINT or SIGTERM); an error removes it. Every
``FLUSH_S`` the open MCAP chunk is written out, so a SIGKILL loses at most that much:
the staging folder ``NAME.partial-PID/`` it leaves is read by every ``sac bag`` tool and
finalised by ``sac bag recover``.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from sac_ros.bags.bagio import BagWriter
from sac_ros.bags.types import message_class
from sac_ros.core.errors import SacError
from sac_ros.core.wire import (
    CAMERA_INFO_TOPIC,
    ECU_STATS_TOPIC,
    IMAGE_TOPIC,
    INPUT_TOPIC,
    LABELS_TOPIC,
    OUTPUT_CAMERA_INFO_TOPIC,
    PACKET_TOPIC,
    PERCEPTION_STATS_TOPIC,
    SENSOR_STATS_TOPIC,
    VIDEO_TOPIC,
    topic_in,
)

FLUSH_S = 0.5     # bounds what a SIGKILLed recorder loses

def camera_topics(namespace: str, input_topic: str = INPUT_TOPIC,
                  packet_topic: str = PACKET_TOPIC) -> list[str]:
    """The topics of one camera of the pipeline, for --camera (and ``sac bag run``).

    With them the standard video (``VIDEO_TOPIC``, foxglove_msgs/CompressedVideo) when a
    node offers it: the sensor in roi_qp / uniform mode, or the ECU re-encoding dual_crf
    (``reencode_video``). Subscribing to it is what switches it on.
    """
    names = (input_topic, LABELS_TOPIC, CAMERA_INFO_TOPIC, packet_topic, IMAGE_TOPIC,
             OUTPUT_CAMERA_INFO_TOPIC, VIDEO_TOPIC, SENSOR_STATS_TOPIC, ECU_STATS_TOPIC,
             PERCEPTION_STATS_TOPIC)
    return [topic_in(namespace, name) for name in names]


@dataclass
class RecordStats:
    counts: dict[str, int] = field(default_factory=dict)
    types: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    first_ns: int | None = None
    last_ns: int | None = None

    def summary(self, path) -> str:
        span = ((self.last_ns - self.first_ns) / 1e9 if self.first_ns is not None else 0.0)
        lines = [f"recorded {sum(self.counts.values())} messages over {span:.2f} s to {path}"]
        lines += [f"  {topic} ({self.types[topic]}): {n}" for topic, n in self.counts.items()]
        lines += [f"  skipped {topic}: {why}" for topic, why in self.skipped.items()]
        return "\n".join(lines)


class Recorder:
    """Subscribes (raw) to the requested topics on ``node`` and writes them to ``bag``."""

    def __init__(self, node, bag: BagWriter, topics: list[str], qos_depth: int = 100,
                 log=print):
        self.node, self.bag, self.topics = node, bag, list(dict.fromkeys(topics))
        self.qos_depth = qos_depth
        self.log = log
        self.stats = RecordStats()
        self.subscriptions = {}
        self._lock = threading.Lock()
        self.failure: BaseException | None = None
        self.discover()
        self._timer = node.create_timer(0.25, self.discover)
        self._flush_timer = node.create_timer(FLUSH_S, self.flush)

    def discover(self) -> None:
        """Subscribe to every requested topic that has appeared (with a type) since last time."""
        for topic, types in self.node.get_topic_names_and_types():
            if topic not in self.topics or topic in self.subscriptions or not types:
                continue
            if topic in self.stats.skipped:
                continue
            msgtype = types[0]
            cls = message_class(msgtype)
            if cls is None or msgtype not in self.bag.store.fielddefs:
                self.stats.skipped[topic] = (f"{msgtype} is not installed for rclpy"
                                             if cls is None else
                                             f"no message definition for {msgtype}")
                self.log(f"sac bag record: skipping {topic}: {self.stats.skipped[topic]}")
                continue
            self.subscriptions[topic] = self.node.create_subscription(
                cls, topic, lambda data, topic=topic, msgtype=msgtype:
                    self._on_message(topic, msgtype, data),
                self._qos(topic), raw=True)
            self.stats.types[topic] = msgtype
            self.stats.counts.setdefault(topic, 0)

    def _qos(self, topic: str):
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

        offered = [info.qos_profile.reliability
                   for info in self.node.get_publishers_info_by_topic(topic)]
        best_effort = any(r == ReliabilityPolicy.BEST_EFFORT for r in offered)
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=self.qos_depth,
                          reliability=(ReliabilityPolicy.BEST_EFFORT if best_effort
                                       else ReliabilityPolicy.RELIABLE))

    def _on_message(self, topic: str, msgtype: str, data: bytes) -> None:
        now = self.node.get_clock().now().nanoseconds
        with self._lock:
            if self.failure is not None:
                return
            try:
                self.bag.write(topic, msgtype, now, data)
            except Exception as exc:  # a full disk must end the recording, not the callback
                self.failure = exc
                return
            self.stats.counts[topic] += 1
            self.stats.first_ns = now if self.stats.first_ns is None else self.stats.first_ns
            self.stats.last_ns = now

    def flush(self) -> None:
        with self._lock:
            if self.failure is not None:
                return
            try:
                self.bag.flush()
            except Exception as exc:  # as in _on_message: it ends the recording
                self.failure = exc

    def matched(self, topic: str) -> int:
        sub = self.subscriptions.get(topic)
        return sub.get_publisher_count() if sub is not None else -1

    def close(self) -> None:
        self._timer.cancel()
        self._flush_timer.cancel()
        with self._lock:
            for sub in self.subscriptions.values():
                self.node.destroy_subscription(sub)
            self.subscriptions.clear()


@dataclass
class RecordOptions:
    topics: list[str]
    storage: str = "mcap"
    overwrite: bool = False
    compress: bool = False
    duration: float = 0.0        # seconds; 0 = until SIGINT / SIGTERM
    qos_depth: int = 100


def record(output: str, options: RecordOptions, log=print) -> RecordStats:
    """Record until the duration passes or SIGINT / SIGTERM arrives; returns the counts."""
    import signal

    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    if not options.topics:
        raise SacError("name the topics to record (--topics or --camera)")
    if options.qos_depth < 1:
        raise SacError("--qos-depth must be at least 1")
    for topic in options.topics:
        if not topic.startswith("/"):
            raise SacError(f"topic '{topic}' must be absolute, like /front/sac/packets")
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set())
                for sig in (signal.SIGINT, signal.SIGTERM)}
    rclpy.init(args=None, signal_handler_options=rclpy.SignalHandlerOptions.NO)
    node = None
    try:
        with BagWriter(output, options.storage, options.overwrite, options.compress) as bag:
            node = rclpy.create_node("sac_bag_recorder")
            recorder = Recorder(node, bag, options.topics, options.qos_depth, log)
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            until = (f"stops after {options.duration:g} s or at Ctrl-C" if options.duration
                     else "Ctrl-C stops")
            log(f"sac bag record: recording {', '.join(options.topics)} to {output}; {until}")
            deadline = time.monotonic() + options.duration if options.duration else None
            while not stop.is_set() and recorder.failure is None:
                executor.spin_once(timeout_sec=0.1)
                if deadline is not None and time.monotonic() >= deadline:
                    break
            recorder.close()
            if recorder.failure is not None:
                raise SacError(f"writing the bag failed: {recorder.failure}")
            missing = [t for t in options.topics if t not in recorder.stats.types
                       and t not in recorder.stats.skipped]
            if missing:
                log(f"sac bag record: never saw {', '.join(missing)}")
            return recorder.stats
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
