"""Standard compressed video out of the nodes: ``foxglove_msgs/msg/CompressedVideo``.

Foxglove and Lichtblick play this message natively, and a bag of it opens anywhere.

- ``sac_sensor`` in ``roi_qp`` / ``uniform`` mode: its one stream already is plain
  H.264 / H.265 (Annex B, parameter sets at every key frame), published as is.
- ``sac_ecu`` for ``dual_crf`` (two streams only sac_ros can combine): the reconstruction
  re-encoded to one stream (``core/reencode.py``), off by default.

Both cost nothing while nobody subscribes: the subscription count is read before any
message is built or frame encoded. Each time subscribers appear, publishing starts at an
entry point (a key frame carrying its parameter sets), so every recording and every
viewer starts on a decodable frame.
"""

from __future__ import annotations

from types import SimpleNamespace

from foxglove_msgs.msg import CompressedVideo

from sac_ros.core.annexb import entry_point, foxglove_format
from sac_ros.core.codec import PRESETS
from sac_ros.core.reencode import Reencoder
from sac_ros.core.wire import VIDEO_TOPIC
from sac_ros.nodes.common import declare, qos

REENCODE_MODE = "dual_crf"  # the other modes' stream is published by the sensor itself


def declare_sensor_video(node) -> SimpleNamespace:
    d = lambda *a, **k: declare(node, *a, **k)  # noqa: E731
    return SimpleNamespace(
        enabled=d("publish_video", True, "roi_qp / uniform: also publish the coded stream as "
                  "foxglove_msgs/CompressedVideo (free while nobody subscribes). dual_crf "
                  "has two streams: see sac_ecu reencode_video.", read_only=True),
        topic=d("video_topic", VIDEO_TOPIC, "CompressedVideo output topic.", read_only=True))


def declare_ecu_video(node) -> SimpleNamespace:
    d = lambda *a, **k: declare(node, *a, **k)  # noqa: E731
    return SimpleNamespace(
        enabled=d("reencode_video", False, "dual_crf: re-encode the reconstruction to one "
                  "H.264 stream on video_topic (foxglove_msgs/CompressedVideo), only while "
                  "subscribed. Costs an encode per frame: see docs/compressed_video.md.",
                  read_only=True),
        topic=d("video_topic", VIDEO_TOPIC, "CompressedVideo output topic (re-encoded "
                "dual_crf video).", read_only=True),
        crf=d("reencode_crf", 18.0, "CRF of the re-encoded stream (low = close to the "
              "reconstruction).", low=0.0, high=51.0, read_only=True),
        preset=d("reencode_preset", "veryfast", "x264 preset of the re-encoded stream.",
                 choices=PRESETS, read_only=True),
        gop=d("reencode_gop", 0, "Key-frame interval of the re-encoded stream; 0 = the "
              "sensor's (learned from the packets' key frames, key frames aligned).",
              low=0, high=600, read_only=True))


class VideoPublisher:
    """A CompressedVideo publisher that is free without subscribers and starts each
    listening spell at an entry point."""

    def __init__(self, node, topic: str, reliability: str, depth: int):
        self._node = node
        self.pub = node.create_publisher(CompressedVideo, topic, qos(reliability, depth))
        self.topic = self.pub.topic_name
        self.published = 0
        self.failures = 0
        self._listening = False
        self._waiting_for_entry = True
        self._spell = 0  # frames published since subscribers appeared

    def wanted(self) -> bool:
        """Somebody subscribes (read before any work; logs when a spell starts or ends)."""
        listeners = self.pub.get_subscription_count()
        if listeners and not self._listening:
            self._listening, self._waiting_for_entry, self._spell = True, True, 0
            self._node.get_logger().info(f"video: {listeners} subscriber(s) on {self.topic}; "
                                         "publishing from the next key frame")
        elif not listeners and self._listening:
            self._listening = False
            self._node.get_logger().info(f"video: no subscriber on {self.topic}; stopped "
                                         f"after {self._spell} frames")
        return listeners > 0

    def offer(self, header, data: bytes, codec: str) -> None:
        """The sensor's access unit of a frame: published if anybody subscribes. A failure
        is logged and counted, never raised (the packet is out already)."""
        if not self.wanted():
            return
        try:
            self.publish(header, data, codec)
        except Exception as exc:  # noqa: BLE001 - the video is an extra; the node goes on
            self.failed(exc)

    def failed(self, exc: Exception) -> None:
        self.failures += 1
        self._node.get_logger().error(f"video: frame not published: {exc!r}",
                                      throttle_duration_sec=5.0)

    def publish(self, header, data: bytes, codec: str) -> bool:
        """Publish one access unit (False while waiting for the spell's entry point)."""
        if self._waiting_for_entry:
            if not entry_point(data, codec):
                return False
            self._waiting_for_entry = False
        self.pub.publish(CompressedVideo(timestamp=header.stamp, frame_id=header.frame_id,
                                         data=data, format=foxglove_format(codec)))
        self.published += 1
        self._spell += 1
        return True


class ReencodedVideo:
    """sac_ecu's dual_crf reconstruction as one H.264 stream, while subscribed."""

    def __init__(self, node, params: SimpleNamespace, reliability: str, depth: int):
        self._node = node
        self.out = VideoPublisher(node, params.topic, reliability, depth)
        self.reencoder = Reencoder(params.crf, params.preset, params.gop)
        self._other_mode_logged = False

    def offer(self, rgb, header, packet) -> None:
        """A delivered frame: re-encoded and published if anybody subscribes."""
        if packet.mode != REENCODE_MODE:
            if not self._other_mode_logged:
                self._other_mode_logged = True
                self._node.get_logger().info(f"video: {packet.mode} packets are published as "
                                             "video by the sensor itself; not re-encoding")
            return
        if not self.out.wanted():
            self.reencoder.stop()
            self.reencoder.observe(packet.seq, packet.key_frame)
            return
        try:
            data = self.reencoder.encode(rgb, packet.seq, packet.key_frame)
            self.out.publish(header, data, self.reencoder.codec)
        except Exception as exc:  # noqa: BLE001 - the image is out already; restart cleanly
            self.reencoder.stop()
            self.out.failed(exc)

    def close(self) -> None:
        self.reencoder.stop()
