"""sac_ecu: SacPacket -> decode both streams -> recombine -> Image (original header).

A late joiner and a decoder after a lost packet wait for the next key frame;
malformed packets are logged, counted and dropped. Every packet the sensor sent
is accounted for: decoded, dropped with a reason, or counted as lost from the
gap in sequence numbers.
"""

from __future__ import annotations

from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from sac_ros.core.errors import SacError
from sac_ros.core.sac import SacDecoder
from sac_ros.msg import SacPacket as SacPacketMsg
from sac_ros.msg import SacStats
from sac_ros.nodes.common import (
    NodeStats,
    declare,
    matched_writers,
    msg_to_packet,
    qos,
    rgb_to_image,
    run_node,
    stamp_ns,
)


class EcuNode(Node):
    def __init__(self):
        super().__init__("sac_ecu")
        d = lambda *a, **k: declare(self, *a, **k)  # noqa: E731
        packet_topic = d("packet_topic", "sac/packets", "SacPacket input topic.", read_only=True)
        output_topic = d("output_topic", "sac/image", "Reconstructed Image topic.",
                         read_only=True)
        reliability = d("qos_reliability", "reliable", "QoS reliability of all topics.",
                        choices=("reliable", "best_effort"), read_only=True)
        depth = d("qos_depth", 30, "Packet subscription queue depth (keep >= one GOP).", low=1,
                  high=1000, read_only=True)
        self.decoder = SacDecoder()
        self.stats = NodeStats()
        self._last_seq: int | None = None
        self.image_pub = self.create_publisher(Image, output_topic, qos(reliability, 5))
        self.stats_pub = self.create_publisher(SacStats, "sac/ecu_stats", 10)
        self.packet_sub = self.create_subscription(SacPacketMsg, packet_topic, self._on_packet,
                                                   qos(reliability, depth))
        self.create_timer(1.0, self._publish_stats)
        self.get_logger().info(f"{packet_topic} -> {output_topic}")

    def _on_packet(self, msg: SacPacketMsg) -> None:
        self.stats.received += 1
        if self._last_seq is not None and msg.seq > self._last_seq + 1:
            self.stats.drop("lost", int(msg.seq - self._last_seq - 1))
        self._last_seq = int(msg.seq)
        try:
            packet = msg_to_packet(msg)
        except SacError as exc:
            self.stats.drop("malformed")
            self.get_logger().warning(f"dropping malformed packet {msg.seq}: {exc}",
                                      throttle_duration_sec=2.0)
            return
        try:
            frame = self.decoder.decode(packet)
        except SacError as exc:
            frame, self.decoder.last_drop_reason = None, f"malformed: {exc}"
        if frame is None:
            reason = (self.decoder.last_drop_reason or "unknown").split(":")[0]
            self.stats.drop(reason)
            if reason != "waiting_for_key_frame":
                self.get_logger().warning(f"dropping packet {msg.seq}: "
                                          f"{self.decoder.last_drop_reason}",
                                          throttle_duration_sec=2.0)
            return
        self.image_pub.publish(rgb_to_image(frame.rgb, msg.header))
        latency = (self.get_clock().now().nanoseconds - stamp_ns(msg.header)) / 1e6
        self.stats.done(packet.num_bytes, latency)

    def _publish_stats(self) -> None:
        header = Header(stamp=self.get_clock().now().to_msg())
        self.stats_pub.publish(self.stats.to_msg(self.get_fully_qualified_name(), header,
                                                 self.image_pub.get_subscription_count(),
                                                 matched_writers(self.packet_sub)))

    def close(self) -> None:
        self.decoder.close()


def main(args=None) -> int:
    return run_node("sac_ecu", EcuNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
