"""Shared pieces of the nodes: parameters, QoS, statistics, the worker slot, run_node.

Message conversions are in ``nodes.messages``, the start-up readiness probe in
``nodes.readiness``.
"""

from __future__ import annotations

import time
from collections import Counter, deque

import numpy as np
from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor
from rclpy.node import Node
from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

from sac_ros.core.errors import SacError
from sac_ros.core.health import Sample
from sac_ros.core.wire import saturate_u64
from sac_ros.msg import SacStats


def declare(node: Node, name: str, default, description: str, *, low=None, high=None,
            read_only: bool = False, choices: tuple[str, ...] | None = None):
    """Declare a parameter with a description and, for numbers, an enforced range."""
    if choices:
        description = f"{description} One of: {', '.join(choices)}."
    descriptor = ParameterDescriptor(description=description, read_only=read_only)
    _coerce_override(node, name, default)
    if low is not None and isinstance(default, float):
        descriptor.floating_point_range = [FloatingPointRange(from_value=float(low),
                                                              to_value=float(high), step=0.0)]
    elif low is not None and isinstance(default, int) and not isinstance(default, bool):
        descriptor.integer_range = [IntegerRange(from_value=int(low), to_value=int(high), step=1)]
    value = node.declare_parameter(name, default, descriptor).value
    if choices and value not in choices:
        raise SacError(f"parameter {name}='{value}' must be one of: {', '.join(choices)}")
    return value


def _coerce_override(node: Node, name: str, default) -> None:
    """A whole number given for a double parameter (``-p roi_crf:=20``, ``roi_crf: 20`` in a
    YAML file, a list of them for a double array) is taken as the double it means."""
    from rclpy.parameter import Parameter

    overrides = getattr(node, "_parameter_overrides", None) or {}
    given = overrides.get(name)
    if given is None:
        return

    def whole(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    value = given.value
    if isinstance(default, float) and whole(value):
        overrides[name] = Parameter(name, Parameter.Type.DOUBLE, float(value))
    elif (isinstance(default, list) and default and all(isinstance(v, float) for v in default)
          and value is not None and len(value) and all(whole(v) for v in value)):
        overrides[name] = Parameter(name, Parameter.Type.DOUBLE_ARRAY, [float(v) for v in value])


def check_parameter_names(node: Node) -> None:
    """Refuse parameters the node does not have (a misspelt ``-p`` or YAML key would
    otherwise be ignored without a word)."""
    overrides = getattr(node, "_parameter_overrides", None) or {}
    unknown = sorted(n for n in overrides
                     if not node.has_parameter(n) and not n.startswith("qos_overrides."))
    if unknown:
        known = sorted(n for n in node._parameters if n not in ("use_sim_time",
                                                                 "start_type_description_service"))
        raise SacError(f"unknown parameter(s) {', '.join(unknown)} for "
                       f"{node.get_name()}; its parameters are: {', '.join(known)}")


# The qos_reliability parameter's values. sensor_data is ROS's profile for sensor streams
# (rclpy.qos.qos_profile_sensor_data): best effort, keep last, depth 5 at most.
QOS_CHOICES = ("reliable", "best_effort", "sensor_data")
SENSOR_DATA_DEPTH = 5


def qos(reliability: str, depth: int) -> QoSProfile:
    if reliability == "sensor_data":
        depth = min(depth, SENSOR_DATA_DEPTH)
    policy = {"reliable": ReliabilityPolicy.RELIABLE,
              "best_effort": ReliabilityPolicy.BEST_EFFORT,
              "sensor_data": ReliabilityPolicy.BEST_EFFORT}[reliability]
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth, reliability=policy)


class NodeStats:
    """Counters for a node plus a sliding window of sizes and latencies."""

    def __init__(self, window: int = 300):
        self.received = 0
        self.processed = 0
        self.drops: Counter[str] = Counter()
        self._bytes: deque[tuple[float, int]] = deque(maxlen=window)
        self._latency_ms: deque[float] = deque(maxlen=window)
        # (monotonic time, bytes, latency ms or None) per frame, for /diagnostics' window
        self._frames: deque[tuple[float, int, float | None]] = deque(maxlen=window)

    def drop(self, reason: str, count: int = 1) -> None:
        self.drops[reason] += count

    def done(self, num_bytes: int, latency_ms: float | None) -> None:
        self.processed += 1
        now = time.monotonic()
        self._bytes.append((now, num_bytes))
        self._frames.append((now, num_bytes, latency_ms))
        if latency_ms is not None:
            self._latency_ms.append(latency_ms)

    def sample(self, received: int | None = None, resyncs: int | None = None) -> Sample:
        """The counters now, for /diagnostics (core/health.py); ``received`` / ``resyncs``
        where the node keeps them elsewhere (the ECU's receiver)."""
        return Sample(time.monotonic(), self.received if received is None else received,
                      self.processed, dict(self.drops), resyncs, tuple(self._frames))

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


def publish_camera_info(publisher, info, header, drops: Counter) -> None:
    """Publish a relayed CameraInfo under ``header``; a failure is counted in the relay's
    ``drops`` as ``publish_error``, never raised: the frame it goes with is already out."""
    try:
        info.header = header
        publisher.publish(info)
    except Exception:  # noqa: BLE001 - an info must never stop the node
        drops["publish_error"] += 1


def lower_cpu_priority(nice: int) -> None:
    """Raise the niceness of every thread of this process to ``nice`` (never lower it);
    threads started later inherit it.

    Linux keeps a niceness per thread, so ``os.nice`` would change the calling thread
    only; DDS and executor threads exist before a node is built.
    """
    import os

    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # not Linux: the process-wide call is all there is
        tids = [0]
    for tid in tids:
        try:
            if os.getpriority(os.PRIO_PROCESS, tid) < nice:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError:
            continue  # a thread that has ended meanwhile


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
    import signal
    import sys

    import rclpy
    from rclpy.exceptions import ParameterException
    from rclpy.executors import ExternalShutdownException

    # The executor is built before a stop signal can shut rclpy down: built on a shut-down
    # context it is left half-made, and its __del__ prints a traceback at exit.
    stops = {signal.SIGINT, signal.SIGTERM}
    signal.pthread_sigmask(signal.SIG_BLOCK, stops)
    try:
        rclpy.init(args=args)
        executor = make_executor()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops)
    node = None
    try:
        node = node_factory()  # each node checks its parameter names before any work
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
