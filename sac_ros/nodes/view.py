"""sac_view: the running pipeline, live in Foxglove over WebSocket (foxglove-sdk).

ROS subscriptions in, Foxglove channels out; what each channel carries is
``nodes.view_channels``'. Per camera namespace: the original frames, the
reconstruction, the original with its packet's non-ROI blocks dimmed, the perception
overlay (JPEG CompressedImage, at most ``max_fps`` each), the compressed stream as
CompressedVideo (forwarded as is, every frame) and the nodes' statistics as JSON for
the Plot panel. Image topics are subscribed to only while a Foxglove client watches
their channel, and JPEG coding runs in its own thread on the newest frame only, so a
view costs the pipeline nothing without a client and never queues frames with one.
config/foxglove_layout.json is the matching layout.
"""

from __future__ import annotations

import time
from collections import Counter

from rclpy.node import Node
from sensor_msgs.msg import Image

from sac_ros.core.errors import PacketError, SacError
from sac_ros.core.health import Sample
from sac_ros.core.mask import unpack_blocks
from sac_ros.core.stamps import BoundedStampMap
from sac_ros.core.wire import packet_from_msg, stamp_ns
from sac_ros.msg import PerceptionStats, SacStats
from sac_ros.msg import SacPacket as SacPacketMsg
from sac_ros.nodes.common import check_parameter_names, declare, qos, run_node
from sac_ros.nodes.diagnostics import Diagnostics, declare_diagnostics
from sac_ros.nodes.messages import image_to_rgb
from sac_ros.nodes.view_channels import (
    IMAGE,
    JSON,
    MAX_VIDEO_FRAME_BYTES,
    PACKETS,
    VIDEO,
    VIDEO_FORMATS,
    VIEW_STATS_CHANNEL,
    VIEW_STATS_SCHEMA,
    ChannelSpec,
    EncodeWorker,
    RateGate,
    channel_plan,
    encode_jpeg,
    roi_overlay,
    stats_json,
    stats_schema,
    view_stats,
)

LOG_EVERY_S = 5.0
SYNC_PERIOD_S = 0.25   # how soon a client's subscription reaches the ROS graph
STATS_TYPES = {"sensor_stats": SacStats, "ecu_stats": SacStats,
               "perception_stats": PerceptionStats}


def _video_type():
    """foxglove_msgs/CompressedVideo: upstream under colcon, the vendored copy from wheels."""
    from foxglove_msgs.msg import CompressedVideo

    return CompressedVideo


INTENDED_SKIPS = ("rate_limited", "overlay_without_frame")


class ViewNode(Node):
    def __init__(self):
        super().__init__("sac_view")
        d = lambda *a, **k: declare(self, *a, **k)  # noqa: E731
        cameras = d("cameras", [""], "Camera namespaces to show (front, rear, ...); \"\" = "
                    "this node's namespace.", read_only=True)
        host = d("host", "127.0.0.1", "Address the WebSocket server binds (0.0.0.0 = every "
                 "interface).", read_only=True)
        port = d("port", 8765, "WebSocket port (0 = any free port, logged).", low=0, high=65535,
                 read_only=True)
        max_fps = d("max_fps", 10.0, "Most frames per second per image channel.", low=0.1,
                    high=120.0, read_only=True)
        self.quality = d("jpeg_quality", 80, "JPEG quality of the image channels.", low=10,
                         high=100, read_only=True)
        reliability = d("qos_reliability", "reliable", "QoS of the image, packet and video "
                        "subscriptions, depth 1 (best_effort loses most large frames).",
                        choices=("reliable", "best_effort"), read_only=True)
        thresholds = declare_diagnostics(self)
        check_parameter_names(self)
        own = self.get_namespace().strip("/")
        self.cameras = [c.strip("/") if c.strip("/") else own for c in cameras]
        for camera in self.cameras:
            if camera and not all(part.isidentifier() for part in camera.split("/")):
                raise SacError(f"parameter cameras: '{camera}' is not a valid ROS namespace")
        self.plan = channel_plan(self.cameras)
        self._image_qos = qos(reliability, 1)
        self.gate = RateGate(max_fps)
        self.drops: Counter[str] = Counter()
        self.forwarded: Counter[str] = Counter()
        self._last_log: dict[str, float] = {}
        self._raw_for_overlay: dict[str, BoundedStampMap] = {}
        self.worker = EncodeWorker(self._on_job_error)
        self._start_server(host, port)
        self._subs: dict[str, object] = {}
        for spec in self.plan:
            if spec.kind == JSON and spec.sources:
                self.create_subscription(STATS_TYPES[spec.role], spec.sources[0],
                                         lambda m, s=spec: self._on_stats(s, m), 10)
        self.create_timer(SYNC_PERIOD_S, self._sync_subscriptions)
        self.create_timer(1.0, self._publish_view_stats)
        self.diagnostics = Diagnostics(self, thresholds, self._health_sample,
                                       rate_name="messages in")

    def _start_server(self, host: str, port: int) -> None:
        import foxglove
        from foxglove.channels import CompressedImageChannel, CompressedVideoChannel

        self.fox_context = context = foxglove.Context()  # Node.context is rclpy's
        self.channels = {}
        for spec in self.plan:
            if spec.kind == IMAGE:
                self.channels[spec.topic] = CompressedImageChannel(spec.topic, context=context)
            elif spec.kind == VIDEO:
                self.channels[spec.topic] = CompressedVideoChannel(spec.topic, context=context)
            else:
                schema = (VIEW_STATS_SCHEMA if spec.topic == VIEW_STATS_CHANNEL
                          else stats_schema(STATS_TYPES[spec.role]))
                self.channels[spec.topic] = foxglove.Channel(spec.topic, schema=schema,
                                                             context=context)
        try:
            self.server = foxglove.start_server(name="sac_view", host=host, port=port,
                                                context=context)
        except Exception as exc:  # the SDK raises its own error type for a taken port
            raise SacError(f"cannot serve Foxglove on {host}:{port}: {exc}") from None
        self.port = self.server.port
        self.get_logger().info(
            f"Foxglove live view on ws://{host}:{self.port} for cameras "
            f"{', '.join('/' + c for c in self.cameras)} ({len(self.plan)} channels); open it "
            "in Foxglove (Open connection -> Foxglove WebSocket) with config/foxglove_layout.json")

    # ------------------------------------------------------------ subscriptions
    def _wanted_topics(self) -> dict[str, str]:
        """ROS topic -> kind, for every image / video channel a client subscribes to."""
        wanted = {}
        for spec in self.plan:
            if spec.kind != JSON and self.channels[spec.topic].has_sinks():
                wanted.update({topic: spec.kind for topic in spec.sources})
                if spec.role == "roi_overlay":  # its mask comes from the packets
                    wanted[spec.sources[1]] = PACKETS
        return wanted

    def _sync_subscriptions(self) -> None:
        wanted = self._wanted_topics()
        for topic in [t for t in self._subs if t not in wanted]:
            self.destroy_subscription(self._subs.pop(topic))
        for topic, kind in wanted.items():
            if topic in self._subs:
                continue
            if kind == VIDEO:
                msg_type, handler = _video_type(), self._on_video
            elif kind == PACKETS:
                msg_type, handler = SacPacketMsg, self._on_packet
            else:
                msg_type, handler = Image, self._on_image
            self._subs[topic] = self.create_subscription(
                msg_type, topic, lambda m, t=topic, h=handler: self._guarded(h, t, m),
                self._image_qos)

    # ------------------------------------------------------------ callbacks
    def _guarded(self, handler, topic: str, msg) -> None:
        """A callback that raises would stop the executor, and the view with it."""
        try:
            handler(topic, msg)
        except Exception as exc:  # noqa: BLE001 - nothing in a message may stop the view
            self._drop("bad_message", f"{topic}: {exc!r}")

    def _on_stats(self, spec: ChannelSpec, msg) -> None:
        try:
            self.channels[spec.topic].log(stats_json(msg))
            self.forwarded[spec.topic] += 1
        except Exception as exc:  # noqa: BLE001 - a bad message must not stop the view
            self._drop("bad_stats", repr(exc))

    def _on_image(self, topic: str, msg: Image) -> None:
        for spec in self.plan:
            if spec.kind != IMAGE or topic not in spec.sources:
                continue
            if not self.channels[spec.topic].has_sinks():
                continue
            if spec.role == "roi_overlay":  # the frame waits (by stamp) for its packet
                raws = self._raw_for_overlay.setdefault(spec.topic, BoundedStampMap(8))
                raws.put(stamp_ns(msg.header), msg)
            elif self._allowed(spec):
                self.worker.put(spec.topic, lambda s=spec, m=msg: self._log_jpeg(
                    s, image_to_rgb(m), m.header))

    def _on_packet(self, topic: str, msg) -> None:
        """A packet's block mask over the original frame of the same stamp."""
        spec = next(s for s in self.plan if s.role == "roi_overlay" and s.sources[1] == topic)
        try:
            packet = packet_from_msg(msg).packet  # bounds and CRC: hostile until checked
        except PacketError as exc:
            self._drop("bad_packet", f"{topic}: {exc}")
            return
        raws = self._raw_for_overlay.get(spec.topic)
        raw = raws.pop(stamp_ns(msg.header)) if raws is not None else None
        if raw is None:
            self.drops["overlay_without_frame"] += 1
        elif self._allowed(spec):
            self.worker.put(spec.topic, lambda: self._log_jpeg(spec, roi_overlay(
                image_to_rgb(raw), _blocks(packet), packet.block_size), raw.header))

    def _allowed(self, spec: ChannelSpec) -> bool:
        if self.gate.allow(spec.topic):
            return True
        self.drops["rate_limited"] += 1
        return False

    def _log_jpeg(self, spec: ChannelSpec, rgb, header) -> None:
        from foxglove.messages import CompressedImage, Timestamp

        self.channels[spec.topic].log(CompressedImage(
            timestamp=Timestamp(int(header.stamp.sec), int(header.stamp.nanosec)),
            frame_id=str(header.frame_id), data=encode_jpeg(rgb, self.quality), format="jpeg"))

    def _on_video(self, topic: str, msg) -> None:
        from foxglove.messages import CompressedVideo, Timestamp

        fmt, size = str(msg.format), len(msg.data)
        if fmt not in VIDEO_FORMATS or not 0 < size <= MAX_VIDEO_FRAME_BYTES:
            self._drop("bad_video", f"{topic}: format '{fmt[:20]}', {size} bytes")
            return
        stamp = msg.timestamp
        self.channels[topic].log(CompressedVideo(
            timestamp=Timestamp(int(stamp.sec), int(stamp.nanosec)),
            frame_id=str(msg.frame_id), data=bytes(msg.data), format=fmt))
        self.forwarded[topic] += 1

    def _on_job_error(self, key: str, exc: Exception) -> None:
        reason = "bad_image" if isinstance(exc, (SacError, ValueError)) else "encode_error"
        self._drop(reason, f"{key}: {exc}")

    def _drop(self, reason: str, detail: str) -> None:
        """Count; one warning per reason at most every few seconds."""
        self.drops[reason] += 1
        now = time.monotonic()
        if now - self._last_log.get(reason, -LOG_EVERY_S) >= LOG_EVERY_S:
            self._last_log[reason] = now
            self.get_logger().warning(f"not shown ({reason}): {detail[:200]}")

    def _health_sample(self) -> Sample:
        """/diagnostics: messages in = shown + not shown; frames the rate gate skips by
        design (and overlays without their frame) are not failures."""
        drops = {r: n for r, n in self.drops.items() if r not in INTENDED_SKIPS}
        shown = sum(self.forwarded.values())
        return Sample(time.monotonic(), shown + sum(drops.values()), shown, drops)

    def _publish_view_stats(self) -> None:
        self.channels[VIEW_STATS_CHANNEL].log(
            view_stats(self.worker, self.forwarded, self.drops, list(self._subs)))

    def close(self) -> None:
        self.worker.stop()
        server = getattr(self, "server", None)
        if server is not None:
            server.stop()


def _blocks(packet):
    """The packet's block mask (True = ROI)."""
    return unpack_blocks(packet.roi_mask, packet.block_rows, packet.block_cols).astype(bool)


def main(args=None) -> int:
    return run_node("sac_view", ViewNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
