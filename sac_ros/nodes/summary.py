"""A listener that measures a running pipeline end to end, for `sac pipeline --source`.

Per camera it pairs original and reconstructed frames by stamp, and reports frames
in/out, kB/frame, Mbit/s, ROI / non-ROI PSNR (from the packets' block masks, on
every frame or every ``quality_every``-th), camera-stamp -> reconstructed latency,
and the perception node's running iIoU. It shares the CPU with the pipeline it
measures, so it keeps its own work small: views of the message buffers and
integer per-block error sums.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image

from sac_ros.core import metrics
from sac_ros.core.errors import PacketError, SacError
from sac_ros.core.mask import unpack_blocks
from sac_ros.core.stamps import BoundedStampMap
from sac_ros.core.wire import (
    ECU_STATS_TOPIC,
    IMAGE_TOPIC,
    INPUT_TOPIC,
    PACKET_TOPIC,
    PERCEPTION_STATS_TOPIC,
    SENSOR_STATS_TOPIC,
    packet_from_msg,
    stamp_ns,
    topic_in,
)
from sac_ros.msg import PerceptionStats, SacPacket, SacStats
from sac_ros.nodes.common import qos
from sac_ros.nodes.messages import image_to_rgb

KEEP_FRAMES = 120  # originals kept for pairing; the pipeline lags far less than this
QUALITY_BACKLOG = 30  # frames waiting for PSNR; beyond, the oldest is counted as skipped


@dataclass
class CameraSummary:
    namespace: str
    frames_in: int = 0
    packets: int = 0
    frames_out: int = 0
    packet_bytes: list[int] = field(default_factory=list)
    latency_ms: list[float] = field(default_factory=list)
    roi_psnr: list[float] = field(default_factory=list)
    non_roi_psnr: list[float] = field(default_factory=list)
    quality_skipped: int = 0
    first_stamp_ns: int | None = None
    last_stamp_ns: int | None = None
    sensor_stats: SacStats | None = None
    ecu_stats: SacStats | None = None
    perception: PerceptionStats | None = None

    def row(self) -> dict:
        duration = ((self.last_stamp_ns - self.first_stamp_ns) / 1e9
                    if self.first_stamp_ns is not None and self.frames_in > 1 else 0.0)
        fps = (self.frames_in - 1) / duration if duration > 0 else 0.0
        kb = float(np.mean(self.packet_bytes)) / 1000 if self.packet_bytes else float("nan")
        # The busiest second (key frames bunch up), in packet order at the camera's rate.
        windows = metrics.window_bitrates(self.packet_bytes, fps) if fps else np.empty(0)
        peak = float(windows.max()) / 1e6 if windows.size else float("nan")
        pct = (lambda q: float(np.percentile(self.latency_ms, q))  # noqa: E731
               if self.latency_ms else float("nan"))
        drops = {}
        for stats in (self.sensor_stats, self.ecu_stats):
            if stats is not None:
                for reason, count in zip(stats.drop_reasons, stats.drop_counts, strict=True):
                    drops[reason] = drops.get(reason, 0) + int(count)
        sensor_in = int(self.sensor_stats.received) if self.sensor_stats else self.frames_in
        # Frames the camera published: as heard here, or by the sensor if it heard more.
        sent = max(self.frames_in, sensor_in)
        return {
            "camera": self.namespace, "frames_sent": sent, "frames_in": sensor_in,
            "packets": self.packets, "frames_out": self.frames_out, "drops": drops,
            "unaccounted": sent - self.frames_out - sum(drops.values()), "input_fps": fps,
            "kb_per_frame": kb, "mbit_per_s": kb * 8 * fps / 1000 if fps else float("nan"),
            "peak_mbit_per_s": peak,
            "roi_psnr": float(np.mean(self.roi_psnr)) if self.roi_psnr else float("nan"),
            "non_roi_psnr": (float(np.mean(self.non_roi_psnr)) if self.non_roi_psnr
                             else float("nan")),
            "quality_frames": len(self.roi_psnr), "quality_skipped": self.quality_skipped,
            "latency_p50_ms": pct(50), "latency_p99_ms": pct(99),
            # Camera stamp -> packet published (sensor) and -> image published (ECU), as the
            # nodes measured them over their last stats window.
            "sensor_latency_ms": _node_latency(self.sensor_stats),
            "ecu_latency_ms": _node_latency(self.ecu_stats),
            "iiou": float(self.perception.iiou) if self.perception else float("nan"),
            "miou": float(self.perception.miou) if self.perception else float("nan"),
            "perception_frames": int(self.perception.frames_compared) if self.perception else 0,
            "perception_segmented": (int(self.perception.frames_segmented) if self.perception
                                     else 0),
            "perception_fps": float(self.perception.fps) if self.perception else float("nan"),
        }


def _node_latency(stats: SacStats | None) -> list[float]:
    if stats is None or not stats.processed:
        return [float("nan"), float("nan")]
    return [float(stats.latency_p50_ms), float(stats.latency_p99_ms)]


class SummaryCollector(Node):
    def __init__(self, namespaces: list[str], input_topic: str = INPUT_TOPIC,
                 quality_every: int = 1, packet_topic: str = PACKET_TOPIC):
        super().__init__("sac_pipeline_summary")
        self.quality_every = max(1, int(quality_every))
        self._quality_queue: deque = deque(maxlen=QUALITY_BACKLOG)
        self._quality_cond = threading.Condition()
        self._quality_running = True
        self._quality_thread = threading.Thread(target=self._quality_loop, daemon=True,
                                                name="sac_summary_quality")
        self._quality_thread.start()
        self.cameras = {ns: CameraSummary(ns) for ns in namespaces}
        self._lock = threading.Lock()
        self._originals = {ns: BoundedStampMap(KEEP_FRAMES) for ns in namespaces}
        self._masks = {ns: BoundedStampMap(KEEP_FRAMES) for ns in namespaces}
        # Reconstructed frames whose packet or original has not been handled yet: the one
        # executor thread may take the ECU's image before the sensor's packet.
        self._waiting = {ns: BoundedStampMap(QUALITY_BACKLOG) for ns in namespaces}
        self.input_topic = input_topic
        self._last_state: tuple | None = None
        self._last_change = time.monotonic()
        self.output_subscriptions: list = []
        for ns in namespaces:
            # Packets and images: their writers exist before the run (see ReadinessProbe).
            self.output_subscriptions += [
                self.create_subscription(SacPacket, topic_in(ns, packet_topic),
                                         lambda m, ns=ns: self._on_packet(ns, m),
                                         qos("reliable", 30)),
                self.create_subscription(Image, topic_in(ns, IMAGE_TOPIC),
                                         lambda m, ns=ns: self._on_output(ns, m),
                                         qos("reliable", 30))]
            self.create_subscription(Image, topic_in(ns, input_topic),
                                     lambda m, ns=ns: self._on_raw(ns, m), qos("reliable", 30))
            for topic, kind, attr in ((SENSOR_STATS_TOPIC, SacStats, "sensor_stats"),
                                      (ECU_STATS_TOPIC, SacStats, "ecu_stats"),
                                      (PERCEPTION_STATS_TOPIC, PerceptionStats, "perception")):
                self.create_subscription(
                    kind, topic_in(ns, topic),
                    lambda m, ns=ns, attr=attr: setattr(self.cameras[ns], attr, m), 10)

    def _on_raw(self, ns: str, msg: Image) -> None:
        cam = self.cameras[ns]
        stamp = stamp_ns(msg.header)
        with self._lock:
            cam.frames_in += 1
            cam.first_stamp_ns = cam.first_stamp_ns if cam.first_stamp_ns is not None else stamp
            cam.last_stamp_ns = stamp
            if cam.frames_in % self.quality_every == 0:
                # A view of the message's buffer: each message owns its own.
                self._originals[ns].put(stamp, image_to_rgb(msg))
        self._measure_when_complete(ns, stamp)

    def _on_packet(self, ns: str, msg: SacPacket) -> None:
        cam = self.cameras[ns]
        try:
            packet = packet_from_msg(msg).packet  # the ECU's checks: never trust a mask
        except PacketError:
            packet = None
        with self._lock:
            cam.packets += 1
            cam.packet_bytes.append(len(msg.roi.data) + sum(len(s.data) for s in msg.non_roi))
            if packet is None:
                return  # the ECU counts and drops it; there is no frame to measure
            self._masks[ns].put(stamp_ns(msg.header), (packet.roi_mask, packet.block_rows,
                                                       packet.block_cols, packet.block_size))
        self._measure_when_complete(ns, stamp_ns(msg.header))

    def _on_output(self, ns: str, msg: Image) -> None:
        now = self.get_clock().now().nanoseconds
        cam = self.cameras[ns]
        stamp = stamp_ns(msg.header)
        with self._lock:
            cam.frames_out += 1
            cam.latency_ms.append((now - stamp) / 1e6)
            # Measured if its original was kept, or may still arrive (not yet seen).
            if stamp in self._originals[ns] or stamp > (cam.last_stamp_ns or -1):
                for _, old in self._waiting[ns].put(stamp, msg):  # never completed: count it
                    if stamp_ns(old.header) in self._originals[ns]:
                        cam.quality_skipped += 1
        self._measure_when_complete(ns, stamp)

    def _measure_when_complete(self, ns: str, stamp: int) -> None:
        """Queue a frame for PSNR once its original, packet and output have all arrived."""
        cam = self.cameras[ns]
        with self._lock:
            original = self._originals[ns].get(stamp)
            mask = self._masks[ns].get(stamp)
            if original is None or mask is None or stamp not in self._waiting[ns]:
                return
            msg = self._waiting[ns].pop(stamp)
        with self._quality_cond:
            if len(self._quality_queue) == QUALITY_BACKLOG:
                cam.quality_skipped += 1  # the oldest waiting frame goes unmeasured
            self._quality_queue.append((cam, original, msg, mask))
            self._quality_cond.notify()

    def _quality_loop(self) -> None:
        """PSNR off the executor thread, so that measuring never delays the latency stamps."""
        while True:
            with self._quality_cond:
                while not self._quality_queue and self._quality_running:
                    self._quality_cond.wait(0.5)
                if not self._quality_queue:
                    return
                cam, original, msg, (data, rows, cols, size) = self._quality_queue.popleft()
            try:
                roi_mse, non_roi_mse = metrics.block_region_mse(
                    original, image_to_rgb(msg), unpack_blocks(data, rows, cols), size)
            except (SacError, ValueError):  # an output that does not match its packet
                with self._lock:
                    cam.quality_skipped += 1
                continue
            with self._lock:
                cam.roi_psnr.append(metrics.psnr_from_mse(roi_mse))
                cam.non_roi_psnr.append(metrics.psnr_from_mse(non_roi_mse))

    def finish_quality(self, timeout: float = 30.0) -> None:
        """Measure the frames still waiting, then stop the quality thread."""
        with self._quality_cond:
            self._quality_running = False
            self._quality_cond.notify_all()
        self._quality_thread.join(timeout)

    def settled(self, idle_s: float = 2.0) -> bool:
        """True once every camera's output stopped changing for ``idle_s`` seconds."""
        state = tuple((c.frames_in, c.frames_out) for c in self.cameras.values())
        now = time.monotonic()
        if state != self._last_state:
            self._last_state, self._last_change = state, now
        return now - self._last_change >= idle_s
