"""sac_ecu: SacPacket -> check -> order -> decode both streams -> recombine -> Image.

A thin adapter over the ROS-free ``PacketReceiver`` (sac_ros/core/receiver.py), which
checks every packet's bounds and end-to-end CRC, drops duplicates, restores order within
a small window, and decodes. A late joiner and a decoder after a lost packet wait for the
next key frame. Every packet is accounted for: published, dropped with a reason, or
counted as lost from the gap in sequence numbers; nothing in a packet can stop the node.
"""

from __future__ import annotations

import time

from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from sac_ros.core.camera_info import CameraInfoPairing, topic_beside
from sac_ros.core.motion import fill_msg as fill_motion_msg
from sac_ros.core.receiver import PacketReceiver
from sac_ros.core.wire import (
    ECU_STATS_TOPIC,
    IMAGE_TOPIC,
    LINK_CAMERA_INFO_TOPIC,
    MOTION_TOPIC,
    PACKET_TOPIC,
    stamp_ns,
)
from sac_ros.msg import SacMotion, SacStats
from sac_ros.msg import SacPacket as SacPacketMsg
from sac_ros.nodes.common import (
    QOS_CHOICES,
    NodeStats,
    check_parameter_names,
    declare,
    matched_writers,
    publish_camera_info,
    qos,
    run_node,
)
from sac_ros.nodes.diagnostics import Diagnostics, declare_diagnostics
from sac_ros.nodes.messages import rgb_to_image
from sac_ros.nodes.video import ReencodedVideo, declare_ecu_video

QUIET_REASONS = ("waiting_for_key_frame",)  # expected after a join or a loss: not warned
LOG_EVERY_S = 5.0


class EcuNode(Node):
    def __init__(self):
        super().__init__("sac_ecu")
        d = lambda *a, **k: declare(self, *a, **k)  # noqa: E731
        packet_topic = d("packet_topic", PACKET_TOPIC, "SacPacket input topic.", read_only=True)
        output_topic = d("output_topic", IMAGE_TOPIC, "Reconstructed Image topic.",
                         read_only=True)
        reliability = d("qos_reliability", "reliable", "QoS of all topics (sensor_data: ROS's "
                        "profile, best effort, depth 5 at most).", choices=QOS_CHOICES,
                        read_only=True)
        depth = d("qos_depth", 30, "Packet subscription queue depth (keep >= one GOP).", low=1,
                  high=1000, read_only=True)
        window = d("reorder_window", 3, "Packets that may arrive ahead of a missing one "
                   "before it counts as lost (0 = no reordering).", low=0, high=64,
                   read_only=True)
        hold_ms = d("reorder_max_hold_ms", 100.0, "Longest a packet waits for a missing "
                    "predecessor, ms.", low=0.0, high=2000.0, read_only=True)
        require_e2e = d("require_e2e", True, "Drop packets without an end-to-end checksum "
                        "(from sensors older than the checksum) as 'unprotected'.",
                        read_only=True)
        self.publish_motion = d("publish_motion", True, "Publish the decoders' per-block motion "
                                f"({MOTION_TOPIC}) while someone subscribes to it; vectors are "
                                "exported only then, from the next key frame.", read_only=True)
        video = declare_ecu_video(self)
        thresholds = declare_diagnostics(self, resyncs=True)
        check_parameter_names(self)
        self.stats = NodeStats()
        self.receiver = PacketReceiver(reorder_window=window, max_hold_ms=hold_ms,
                                       require_e2e=require_e2e, on_drop=self._log_drop)
        self.stats.drops = self.receiver.drops  # one set of books
        self._last_log: dict[str, float] = {}
        self.image_pub = self.create_publisher(Image, output_topic, qos(reliability, 5))
        self.motion_pub = self.create_publisher(SacMotion, MOTION_TOPIC, qos(reliability, 5))
        self.stats_pub = self.create_publisher(SacStats, ECU_STATS_TOPIC, 10)
        # dual_crf as one standard H.264 stream, encoded only while someone subscribes.
        self.video = ReencodedVideo(self, video, reliability, depth) if video.enabled else None
        self.packet_sub = self.create_subscription(SacPacketMsg, packet_topic, self._on_packet,
                                                   qos(reliability, depth))
        self.create_timer(1.0, self._publish_stats)
        self._set_up_camera_info(output_topic, reliability, depth)
        self.diagnostics = Diagnostics(self, thresholds, lambda: self.stats.sample(
            self.receiver.received, self.receiver.resyncs))
        self.diagnostics.add_relay("camera info", self.camera_info, quiet=("unmatched",))
        if window:
            self.create_timer(max(hold_ms / 2e3, 0.01), self._on_hold_timer)
        self.get_logger().info(f"{packet_topic} -> {output_topic} (reorder window {window}, "
                               f"E2E {'required' if require_e2e else 'optional'})")

    def _set_up_camera_info(self, output_topic: str, reliability: str, depth: int) -> None:
        """The sensor's CameraInfo per frame, republished beside each reconstructed image
        (image_transport's convention) with exactly the image's header."""
        self.camera_info = CameraInfoPairing()
        self.info_pub = self.create_publisher(CameraInfo, topic_beside(output_topic),
                                              qos(reliability, 5))
        self.create_subscription(CameraInfo, LINK_CAMERA_INFO_TOPIC, lambda m: self._send_info(
            self.camera_info.on_info(stamp_ns(m.header), m)), qos(reliability, depth))

    def _send_info(self, pair) -> None:
        if pair is not None:
            publish_camera_info(self.info_pub, *pair, self.camera_info.drops)

    def _log_drop(self, reason: str, detail: str) -> None:
        """One warning per reason at most every few seconds, not one per packet."""
        if reason in QUIET_REASONS:
            return
        now = time.monotonic()
        if now - self._last_log.get(reason, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._last_log[reason] = now
            self.get_logger().warning(f"dropping packets ({reason}): {detail[:200]}")

    def _on_packet(self, msg: SacPacketMsg) -> None:
        # Motion costs nothing unsubscribed: the decoders export it only while wanted
        # (the switch takes effect at the next key frame, where they are reopened).
        self.receiver.decoder.export_motion = (self.publish_motion and
                                               self.motion_pub.get_subscription_count() > 0)
        self._publish(self.receiver.push(msg))

    def _on_hold_timer(self) -> None:
        if self.receiver.pending:
            self._publish(self.receiver.poll())

    def _publish(self, delivered) -> None:
        for item in delivered:
            if item.frame.motion is not None:
                # Before the image, so that a consumer usually has it when the image comes.
                self.motion_pub.publish(fill_motion_msg(SacMotion(header=item.header),
                                                        item.frame.motion))
            try:
                self.image_pub.publish(rgb_to_image(item.frame.rgb, item.header))
            except Exception as exc:  # noqa: BLE001 - a publish failure must not stop the node
                self.receiver.delivered -= 1
                self.receiver.drops["publish_error"] += 1
                self._log_drop("publish_error", repr(exc))
                continue
            latency = (self.get_clock().now().nanoseconds - item.received.stamp_ns) / 1e6
            self.stats.done(item.received.packet.num_bytes, latency)
            rgb = item.frame.rgb
            self._send_info(self.camera_info.on_image(item.received.stamp_ns, item.header,
                                                      rgb.shape[1], rgb.shape[0]))
            if self.video is not None:  # after the image: the video is an extra
                self.video.offer(item.frame.rgb, item.header, item.received.packet)

    def _publish_stats(self) -> None:
        self.stats.received = self.receiver.received
        header = Header(stamp=self.get_clock().now().to_msg())
        self.stats_pub.publish(self.stats.to_msg(self.get_fully_qualified_name(), header,
                                                 self.image_pub.get_subscription_count(),
                                                 matched_writers(self.packet_sub)))

    def close(self) -> None:
        self.receiver.close()


def main(args=None) -> int:
    return run_node("sac_ecu", EcuNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
