"""sac_perception: segment reconstructed frames; optionally compare with the originals.

It publishes the class map as mono8 (plus an optional colour overlay). When
``raw_topic`` is set it also segments the original camera frame with the same
stamp and publishes the running mIoU / iIoU of reconstructed against original:
the papers' perception evaluation, live.
"""

from __future__ import annotations

import threading
import time
from collections import deque

import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from sac_ros.core import metrics
from sac_ros.core.errors import SacError
from sac_ros.core.motion import PROPAGATED, ClassMapPropagator, field_from_msg
from sac_ros.core.stamps import BoundedStampMap
from sac_ros.core.wire import (
    CLASS_MAP_TOPIC,
    IMAGE_TOPIC,
    MOTION_TOPIC,
    OVERLAY_TOPIC,
    PERCEPTION_STATS_TOPIC,
    saturate_u64,
    stamp_ns,
)
from sac_ros.msg import PerceptionStats, SacMotion
from sac_ros.nodes.common import (
    QOS_CHOICES,
    LatestWorker,
    NodeStats,
    check_parameter_names,
    declare,
    declare_int_list,
    lower_cpu_priority,
    matched_writers,
    open_segmenter,
    qos,
    run_node,
)
from sac_ros.nodes.diagnostics import Diagnostics, declare_diagnostics
from sac_ros.nodes.messages import image_to_rgb, rgb_to_image

KEEP_ORIGINALS = 60
# Overlay colours per class id (ROI green, construction orange, nature olive, sky blue).
PALETTE = np.array([[0, 200, 0], [230, 120, 20], [120, 140, 30], [40, 110, 230]] +
                   [[int(c) for c in np.random.default_rng(i).integers(0, 255, 3)]
                    for i in range(4, 256)], np.uint8)


class PerceptionNode(Node):
    def __init__(self):
        super().__init__("sac_perception")
        d = lambda *a, **k: declare(self, *a, **k)  # noqa: E731
        input_topic = d("input_topic", IMAGE_TOPIC, "Reconstructed Image topic.", read_only=True)
        raw_topic = d("raw_topic", "", "Original camera topic to compare with; empty = off.",
                      read_only=True)
        model = d("model", "default", "Segmentation model: 'default' or a path.", read_only=True)
        reliability = d("qos_reliability", "reliable", "QoS of all topics; match the ECU's "
                        "(a reliable reader does not hear a best-effort writer).",
                        choices=QOS_CHOICES, read_only=True)
        backend = d("backend", "auto", "Segmentation backend.", read_only=True,
                    choices=("auto", "onnxruntime", "tensorrt", "torch"))
        self.publish_overlay = d("publish_overlay", False, "Publish a colour overlay image.")
        segment_every = d("segment_every", 1, "Run the segmenter on key frames and every N-th "
                          f"frame; in between, warp the last class map with {MOTION_TOPIC} "
                          "(1 = segment every frame).", low=1, high=300, read_only=True)
        max_residual = d("max_residual", 24.0, "A block whose motion-compensated luma error "
                         "is above this (0-255) is not explained by its vector.", low=0.0,
                         high=255.0, read_only=True)
        resegment_share = d("resegment_share", 0.4, "Segment in full when more than this share "
                            "of a frame's blocks are unreliable or above max_residual.",
                            low=0.0, high=1.0, read_only=True)
        self.motion_wait_s = d("motion_wait_ms", 20.0, "Longest a frame waits for its motion "
                               "message (then it is segmented in full).", low=0.0, high=1000.0,
                               read_only=True) / 1e3
        self.compare_every = d("compare_every", 1, "With raw_topic: compare every k-th paired "
                               "frame (each comparison segments the original in full; keep k "
                               "coprime to segment_every to sample propagated frames too).",
                               low=1, high=1000, read_only=True)
        non_roi = declare_int_list(self, "non_roi_classes", "Non-ROI class ids of the model's "
                                   "class map; unset = the papers' defaults for that map.")
        cpu_nice = d("cpu_nice", 0, "Scheduling niceness of this node's threads (0-19): "
                     "above 0, the sensor and ECU pre-empt perception on a shared CPU.",
                     low=0, high=19, read_only=True)
        thresholds = declare_diagnostics(self)
        check_parameter_names(self)  # before the model loads
        if cpu_nice:  # before the model's and the worker's threads start: they inherit it
            lower_cpu_priority(cpu_nice)
        self.segmenter = open_segmenter(model, backend, non_roi)
        self.num_classes = max(2, self.segmenter.class_adapter.num_classes)
        self.stats = NodeStats()
        self.propagator = ClassMapPropagator(segment_every, max_residual, resegment_share)
        self._motions: BoundedStampMap = BoundedStampMap(KEEP_ORIGINALS)
        # The same fields by seq: a superseded frame's motion still carries the class map.
        self._motions_by_seq: BoundedStampMap = BoundedStampMap(KEEP_ORIGINALS)
        self._paired = 0
        self.motion_rejected = 0  # SacMotion messages that did not fit their own grid
        self._last_counts_log = 0.0
        self.compared = 0
        self._confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
        self._roi_confusion = np.zeros((2, 2), np.int64)
        self._seg_ms: deque[float] = deque(maxlen=300)
        self._originals: BoundedStampMap[Image] = BoundedStampMap(KEEP_ORIGINALS)
        self._lock = threading.Lock()
        self._motion_arrived = threading.Condition(self._lock)
        self.class_pub = self.create_publisher(Image, CLASS_MAP_TOPIC, qos(reliability, 5))
        self.overlay_pub = self.create_publisher(Image, OVERLAY_TOPIC, qos(reliability, 2))
        self.stats_pub = self.create_publisher(PerceptionStats, PERCEPTION_STATS_TOPIC, 10)
        self._worker = LatestWorker("sac_perception", self._process,
                                    lambda: self.stats.drop("superseded"), self._on_error)
        self.create_subscription(Image, input_topic, self._on_image, qos(reliability, 2))
        if raw_topic:
            self.create_subscription(Image, raw_topic, self._on_raw, qos(reliability, 10))
        self.motion_sub = None
        if segment_every > 1:  # subscribed only when used: the ECU exports vectors only then
            self.motion_sub = self.create_subscription(SacMotion, MOTION_TOPIC, self._on_motion,
                                                       qos(reliability, 10))
        self.create_timer(1.0, self._publish_stats)
        self.diagnostics = Diagnostics(self, thresholds, self.stats.sample)
        self.get_logger().info(f"segmenting {input_topic} with {self.segmenter.name}"
                               + (f", comparing with {raw_topic}" if raw_topic else ""))

    def _on_raw(self, msg: Image) -> None:
        with self._lock:
            self._originals.put(stamp_ns(msg.header), msg)

    def _on_motion(self, msg: SacMotion) -> None:
        try:
            field = field_from_msg(msg)
        except ValueError as exc:
            # Counted apart: the image drops are the frames' books, not the motion's.
            self.motion_rejected += 1
            self.get_logger().warning(f"dropping motion message ({self.motion_rejected} so "
                                      f"far): {exc}", throttle_duration_sec=5.0)
            return
        with self._motion_arrived:
            self._motions.put(stamp_ns(msg.header), field)
            self._motions_by_seq.put(field.seq, field)
            self._motion_arrived.notify_all()

    def _motion_for(self, stamp: int):
        """The motion of the frame stamped ``stamp``, waiting briefly while it is on the way."""
        if self.motion_sub is None:
            return None
        deadline = time.monotonic() + self.motion_wait_s
        with self._motion_arrived:
            while stamp not in self._motions and matched_writers(self.motion_sub) != 0:
                left = deadline - time.monotonic()
                if left <= 0 or not self._motion_arrived.wait(left):
                    break
            field = self._motions.pop(stamp, None)
            self._motions.prune_before(stamp)
        return field

    def _skipped_motion(self, field) -> list:
        """The motion of the frames between the last class map's and ``field``'s (frames
        this node skipped while busy); empty when there are none or one is missing."""
        last = self.propagator.last_seq
        if field is None or last is None or not last + 1 < field.seq <= last + KEEP_ORIGINALS:
            return []
        with self._lock:
            steps = [self._motions_by_seq.get(seq) for seq in range(last + 1, field.seq)]
        return [] if any(step is None for step in steps) else steps

    def _on_image(self, msg: Image) -> None:
        self.stats.received += 1
        self._worker.put(msg)

    def _on_error(self, msg: Image, exc: Exception) -> None:
        self.stats.drop("bad_image" if isinstance(exc, SacError) else "error")
        self.get_logger().error(f"segmentation failed: {exc}", throttle_duration_sec=5.0)

    def _process(self, msg: Image) -> None:
        rgb = image_to_rgb(msg)
        field = self._motion_for(stamp_ns(msg.header))
        between = self._skipped_motion(field)
        reason = self.propagator.plan(field, rgb.shape[:2], between)
        if reason == PROPAGATED:
            prediction, class_map = None, self.propagator.propagate(field, between)
        else:
            start = time.perf_counter()
            prediction = self.segmenter.predict(rgb)
            class_map = prediction.class_map
            self._seg_ms.append((time.perf_counter() - start) * 1e3)
            self.propagator.segmented(class_map, field, reason)
        self.class_pub.publish(rgb_to_image(class_map, msg.header))
        if self.publish_overlay:
            overlay = (0.6 * rgb + 0.4 * PALETTE[class_map]).astype(np.uint8)
            self.overlay_pub.publish(rgb_to_image(overlay, msg.header))
        with self._lock:
            original = self._originals.pop(stamp_ns(msg.header), None)
        if original is not None:
            self._paired += 1
        if original is not None and self._paired % self.compare_every == 0:
            # The reference is always the original segmented in full.
            reference = self.segmenter.predict(image_to_rgb(original))
            roi = (prediction.roi if prediction is not None
                   else self.segmenter.class_adapter.roi(class_map))
            self._confusion += metrics.confusion(reference.class_map, class_map,
                                                 self.num_classes)
            self._roi_confusion += metrics.confusion(reference.roi.astype(np.uint8),
                                                     roi.astype(np.uint8), 2)
            self.compared += 1
        # Camera stamp -> class map out (the stamp is the camera's, carried through).
        self.stats.done(0, (self.get_clock().now().nanoseconds - stamp_ns(msg.header)) / 1e6)

    def _publish_stats(self) -> None:
        msg = PerceptionStats(header=Header(stamp=self.get_clock().now().to_msg()),
                              node=self.get_fully_qualified_name(),
                              frames_segmented=saturate_u64(self.stats.processed),
                              frames_propagated=saturate_u64(
                                  self.propagator.counts[PROPAGATED]),
                              frames_compared=saturate_u64(self.compared))
        if self.compared:
            msg.miou = metrics.miou(self._confusion)
            msg.iiou = metrics.iiou(self._roi_confusion, roi_class=1)
        if self._seg_ms:
            msg.segmentation_ms_p50 = float(np.percentile(self._seg_ms, 50))
        msg.fps = self.stats.to_msg("", msg.header).fps
        self.stats_pub.publish(msg)
        counts = self.propagator.counts
        if counts[PROPAGATED] and time.monotonic() - self._last_counts_log >= 10.0:
            # The reasons for full passes, which PerceptionStats does not carry.
            self._last_counts_log = time.monotonic()
            full = ", ".join(f"{r} {n}" for r, n in counts.items() if n and r != PROPAGATED)
            self.get_logger().info(f"class maps: {counts[PROPAGATED]} propagated, "
                                   f"{self.propagator.full} segmented ({full})")

    def close(self) -> None:
        self._worker.stop()
        self.segmenter.close()


def main(args=None) -> int:
    return run_node("sac_perception", PerceptionNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
