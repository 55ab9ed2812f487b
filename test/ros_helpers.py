"""Harness for the ROS 2 integration tests: real node processes over real Fast DDS.

Each ``RosHarness`` gets its own ROS_DOMAIN_ID (1-100, from the pid and a counter),
its own camera namespace (so a domain id shared with a concurrent run cannot
cross-talk), localhost-only discovery, and one in-test rclpy node in its own
context, spun on a background thread. Node processes are started with
``python -m <module> --ros-args ...`` and always stopped (SIGINT, then SIGKILL).

Importing this module skips the importing test module when rclpy or the built
messages (sac_ros.msg) are missing.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

try:
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter, parameter_value_to_python
    from rclpy.parameter_client import AsyncParameterClient
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.signals import SignalHandlerOptions
    from sensor_msgs.msg import Image
    from std_msgs.msg import Header

    from sac_ros.msg import SacPacket, SacStats
except ImportError as exc:  # pragma: no cover - depends on the install
    if os.environ.get("SAC_REQUIRE_ROS") == "1":  # scripts/test.sh: ROS is set up, so fail
        raise
    pytest.skip(f"ROS 2 integration tests need rclpy and the built sac_ros messages "
                f"(sac_ros.msg): {exc}", allow_module_level=True)

# Imported outside the guard: a broken import of our own code must fail, not skip.
from sac_ros.config import load_core_config
from sac_ros.core.mask import PolygonMaskSource, block_mask, expand_blocks, unpack_blocks
from sac_ros.core.wire import stamp_ns
from sac_ros.nodes.messages import packet_to_msg, rgb_to_image
from sac_ros.pipeline import EXECUTABLES

# Small frames, not a multiple of the 16 px block (partial edge blocks are exercised).
WIDTH, HEIGHT = 250, 142
# Generous limits: other jobs share the 2 cores, and discovery can take seconds.
DISCOVERY_TIMEOUT = 30.0
MESSAGE_TIMEOUT = 20.0
STATS_TIMEOUT = 10.0
STOP_TIMEOUT = 10.0

_SEQUENCE = itertools.count()
_ENV_KEYS = ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOG_DIR")


def unique_ids() -> tuple[int, str]:
    """(ROS_DOMAIN_ID in 1-100, namespace) for one harness."""
    n = next(_SEQUENCE)
    return 1 + (os.getpid() * 7 + n) % 100, f"/sac_test_{os.getpid()}_{n}"


def frame(index: int, width: int = WIDTH, height: int = HEIGHT) -> np.ndarray:
    """A textured, moving RGB test frame (uint8, height x width x 3)."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    t = 0.35 * index
    r = 128 + 60 * np.sin(x / 7.0 + t) + 30 * np.cos(y / 5.0)
    g = 128 + 50 * np.cos(x / 11.0 - y / 9.0 + t)
    b = 100 + 80 * np.sin((x + y) / 13.0 + 0.5 * t)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


def polygon_blocks(rgb: np.ndarray) -> np.ndarray:
    """The block mask the sensor's default polygon (config/sac.yaml's) gives for a frame."""
    source = PolygonMaskSource(load_core_config().mask.roi_polygon)
    return block_mask(source.roi_pixels(0, rgb))


def roi_pixels_of(packet: SacPacket) -> np.ndarray:
    """Pixel ROI mask from a packet message's bit-packed block mask."""
    blocks = unpack_blocks(bytes(packet.roi_mask), packet.block_rows, packet.block_cols)
    return expand_blocks(blocks, packet.height, packet.width, packet.block_size)


def image_pixels(msg: Image) -> np.ndarray:
    """The pixels of an rgb8 Image message without row padding."""
    assert msg.encoding == "rgb8" and msg.step == msg.width * 3, (msg.encoding, msg.step)
    return np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width, 3)


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray) -> float:
    """RGB PSNR (peak 255) over the pixels where ``where`` is True."""
    err = np.square(a.astype(np.float64) - b.astype(np.float64)).mean(axis=2)[where]
    mse = float(err.mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def drops_of(stats: SacStats) -> dict[str, int]:
    assert len(stats.drop_reasons) == len(stats.drop_counts), stats
    return {r: int(c) for r, c in zip(stats.drop_reasons, stats.drop_counts, strict=True)}


def reliable(depth: int) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE)


def format_param(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(format_param(v) for v in value) + "]"
    return str(value)


class NodeProcess:
    """One node in its own process, its stdout / stderr in files."""

    def __init__(self, label: str, cmd: list[str], env: dict, log_dir: Path):
        self.label = label
        self.stdout_path = log_dir / f"{label}.stdout"
        self.stderr_path = log_dir / f"{label}.stderr"
        with open(self.stdout_path, "wb") as out, open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=err)

    @property
    def running(self) -> bool:
        return self.proc.poll() is None

    def interrupt(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGINT, then SIGKILL after ``timeout``; returns the exit status."""
        self.interrupt()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def describe(self) -> str:
        tail = "\n".join(self.stderr().splitlines()[-20:])
        return f"{self.label} (exit {self.proc.poll()}), stderr tail:\n{tail}"


class Collector:
    """Subscription callback that keeps every message with its receipt time (ns)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._items: list[tuple[int, object]] = []

    def __call__(self, msg) -> None:
        with self._lock:
            self._items.append((time.time_ns(), msg))

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    @property
    def messages(self) -> list:
        with self._lock:
            return [m for _, m in self._items]

    def timed(self) -> list[tuple[int, object]]:
        with self._lock:
            return list(self._items)

    def by_stamp(self) -> dict[int, object]:
        return {stamp_ns(m.header): m for m in self.messages}

    def receipt_of(self, stamp: int) -> int | None:
        """When the message with this header stamp arrived (ns), or None."""
        with self._lock:
            return next((t for t, m in self._items if stamp_ns(m.header) == stamp), None)


class RosHarness:
    """One test's ROS world: domain id, namespace, in-test node, node processes."""

    def __init__(self, log_dir: Path):
        self.domain_id, self.namespace = unique_ids()
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        settings = {"ROS_DOMAIN_ID": str(self.domain_id),
                    "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST",
                    "ROS_LOG_DIR": str(self.log_dir / "ros")}
        self._saved_env = {k: os.environ.get(k) for k in _ENV_KEYS}
        os.environ.update(settings)  # read by rcl_init of the in-test context
        self.env = {**os.environ, **settings, "PYTHONUNBUFFERED": "1",
                    "RCUTILS_COLORIZED_OUTPUT": "0", "RCUTILS_LOGGING_BUFFERED_STREAM": "0"}
        # Under LOCALHOST, rmw_fastrtps sends over loopback UDP whatever this says;
        # test_ros_runner runs without it, with the config's transports.
        self.env.pop("FASTDDS_BUILTIN_TRANSPORTS", None)
        self.children: list[NodeProcess] = []
        self.context = rclpy.Context()
        try:
            rclpy.init(context=self.context, domain_id=self.domain_id,
                       signal_handler_options=SignalHandlerOptions.NO)
        except Exception:
            self._restore_env()
            raise
        self.node = rclpy.create_node("sac_test_driver", namespace=self.namespace,
                                      context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._spinner = threading.Thread(target=self._spin, name="sac_test_spin", daemon=True)
        self._spinner.start()

    def _spin(self) -> None:
        try:
            self.executor.spin()
        except Exception:  # shutdown races at teardown
            pass

    # ---------------------------------------------------------------- processes
    def start(self, executable: str, params: dict | None = None) -> NodeProcess:
        """Start a node executable (sac_sensor, sac_ecu, ...) in this harness's namespace."""
        cmd = [sys.executable, "-m", EXECUTABLES[executable], "--ros-args",
               "-r", f"__ns:={self.namespace}"]
        for key, value in (params or {}).items():
            cmd += ["-p", f"{key}:={format_param(value)}"]
        child = NodeProcess(executable, cmd, self.env, self.log_dir)
        self.children.append(child)
        return child

    def check_children(self) -> None:
        for child in self.children:
            if not child.running:
                raise AssertionError(f"node process died: {child.describe()}")

    def close(self) -> None:
        try:
            for child in self.children:
                child.interrupt()  # all at once, then wait
            for child in self.children:
                child.stop()
        finally:
            self.executor.shutdown(timeout_sec=5.0)
            self.node.destroy_node()
            self.context.try_shutdown()
            self._spinner.join(timeout=5.0)
            self._restore_env()

    def _restore_env(self) -> None:
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    # ---------------------------------------------------------------- endpoints
    def topic(self, name: str) -> str:
        return f"{self.namespace}/{name}"

    def subscribe(self, msg_type, name: str, depth: int = 50) -> Collector:
        collector = Collector()
        self.node.create_subscription(msg_type, self.topic(name), collector, reliable(depth))
        return collector

    def publisher(self, msg_type, name: str, depth: int = 10):
        return self.node.create_publisher(msg_type, self.topic(name), reliable(depth))

    def header(self, frame_id: str = "camera") -> Header:
        return Header(stamp=self.node.get_clock().now().to_msg(), frame_id=frame_id)

    def image(self, rgb: np.ndarray, frame_id: str = "camera") -> Image:
        return rgb_to_image(rgb, self.header(frame_id))

    def packet_msg(self, packet, frame_id: str = "camera") -> SacPacket:
        return packet_to_msg(packet, self.header(frame_id))

    def send(self, publisher, msg, reply: Collector | None = None, what: str = "") -> int:
        """Publish ``msg``; with ``reply``, wait for the message carrying the same stamp
        there (lock-step: nothing queues up, so nothing can be superseded). The stamp."""
        stamp = stamp_ns(msg.header)
        publisher.publish(msg)
        if reply is not None:
            self.wait_for(lambda: reply.receipt_of(stamp) is not None,
                          what or f"the reply to the message stamped {stamp}")
        return stamp

    # ---------------------------------------------------------------- waiting
    def wait_for(self, condition: Callable[[], object], what: str,
                 timeout: float = MESSAGE_TIMEOUT, required: bool = True):
        """Poll ``condition`` until it is truthy and return its value.

        After ``timeout``: fail naming ``what``, or return None when not ``required``.
        Fails at once, with its stderr, when a node process died.
        """
        deadline = time.monotonic() + timeout
        while True:
            value = condition()
            if value:
                return value
            self.check_children()
            if time.monotonic() > deadline:
                if not required:
                    return None
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
            time.sleep(0.02)

    def wait_discovery(self, publishers=(), heard_from=()) -> None:
        """Wait until this node and the node processes can talk, both ways.

        ``publishers``: (our publisher, count) pairs, matched on the writer's side: what
        we publish from now on reaches that many subscriptions.
        ``heard_from``: collectors of the nodes' periodic stats topics. Our reader being
        matched says nothing about the remote writer, which may match it later (and
        lose what it publishes meanwhile). A message received proves that the remote
        participant has processed our reader announcements up to that reader, and they
        arrive in order: subscribe to the stats after the node's other topics.
        """
        def ready() -> bool:
            return (all(p.get_subscription_count() >= n for p, n in publishers)
                    and all(len(c) > 0 for c in heard_from))
        self.wait_for(ready, "DDS discovery", DISCOVERY_TIMEOUT)

    def wait_stats(self, stats: Collector, condition: Callable[[SacStats], bool], what: str,
                   after_ns: int = 0, timeout: float = STATS_TIMEOUT) -> SacStats:
        """The latest stats message published after ``after_ns`` that meets ``condition``."""
        def find():
            for msg in reversed(stats.messages):
                if stamp_ns(msg.header) > after_ns and condition(msg):
                    return msg
            return None
        return self.wait_for(find, what, timeout)

    def _call(self, send: Callable[[], object], what: str):
        """A service call; sent again (parameter calls are idempotent) if no reply comes,
        in case the server's reply writer had not matched our reader yet."""
        deadline = time.monotonic() + MESSAGE_TIMEOUT
        while True:
            future = send()
            if self.wait_for(future.done, what, timeout=5.0, required=False):
                return future.result()
            if time.monotonic() > deadline:
                raise AssertionError(f"no reply to {what}")

    def _parameter_client(self, node_name: str) -> AsyncParameterClient:
        client = AsyncParameterClient(self.node, f"{self.namespace}/{node_name}")
        assert client.wait_for_services(timeout_sec=DISCOVERY_TIMEOUT), "parameter services"
        return client

    def set_parameters(self, node_name: str, **values) -> list:
        """Set parameters through the node's real SetParameters service; the results."""
        client = self._parameter_client(node_name)
        params = [Parameter(k, value=v) for k, v in values.items()]
        return list(self._call(lambda: client.set_parameters(params),
                               f"set_parameters {values}").results)

    def list_parameters(self, node_name: str) -> set[str]:
        """The names of the parameters the node has declared (its ListParameters service),
        without the ones rclpy declares itself."""
        client = self._parameter_client(node_name)
        reply = self._call(lambda: client.list_parameters(), "list_parameters")
        return set(reply.result.names) - {"use_sim_time", "start_type_description_service"}

    def get_parameters(self, node_name: str, *names: str) -> list:
        """Current values through the node's real GetParameters service."""
        client = self._parameter_client(node_name)
        reply = self._call(lambda: client.get_parameters(list(names)), f"get_parameters {names}")
        return [parameter_value_to_python(v) for v in reply.values]
