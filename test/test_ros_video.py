"""Standard video out (issue 18): foxglove_msgs/CompressedVideo from real node processes
over real Fast DDS, decoded frame for frame by PyAV as a viewer would.

- the sensor in roi_qp / uniform mode publishes its one stream as is;
- the ECU re-encodes a dual_crf reconstruction to one H.264 stream when asked to;
- neither publishes (nor, the ECU, encodes) while nobody subscribes, and each starts a
  subscriber's spell at a key frame with its parameter sets.
"""

from __future__ import annotations

import av
import numpy as np
import pytest
import ros_helpers as rh
from foxglove_msgs.msg import CompressedVideo
from ros_helpers import HEIGHT, WIDTH, frame
from sensor_msgs.msg import Image

from sac_ros.core.annexb import entry_point, foxglove_format, is_key_frame
from sac_ros.core.codec import EncoderSettings
from sac_ros.core.sac import SacEncoder
from sac_ros.core.wire import VIDEO_TOPIC
from sac_ros.msg import SacPacket, SacStats

GOP = 5
PADDED = (256, 144)  # the sensor's stream: WIDTH x HEIGHT padded to the 16 px block grid
REENCODED = (252, 144)  # the ECU's re-encode: padded to a multiple of 4 only


def decode_all(messages, codec: str) -> list[np.ndarray]:
    """Every message's picture, decoded in order by a fresh PyAV decoder (RGB)."""
    decoder = av.CodecContext.create(codec, "r")
    pictures = []
    for msg in messages:
        frames = decoder.decode(av.Packet(bytes(msg.data)))
        assert len(frames) == 1, f"{len(frames)} pictures from one message"
        pictures.append(frames[0].to_ndarray(format="rgb24"))
    return pictures


def stamp(msg) -> int:
    """A CompressedVideo message's timestamp in ns (it has no header)."""
    return msg.timestamp.sec * 1_000_000_000 + msg.timestamp.nanosec


def crop_psnr(picture: np.ndarray, original: np.ndarray) -> float:
    height, width = original.shape[:2]
    return rh.psnr(picture[:height, :width], original, np.ones((height, width), bool))


def video_spells(node) -> list[int]:
    """Frame counts of the spells a node logged as ended ('stopped after N frames')."""
    import re

    return [int(n) for n in re.findall(r"video: no subscriber on \S+; stopped after (\d+) "
                                       r"frames", node.stderr())]


class Sensor:
    def __init__(self, ros, video_first: bool, **params):
        self.ros = ros
        self.node = ros.start("sac_sensor", {"gop": GOP, "fps": 10, "roi_crf": 20.0,
                                             "non_roi_crf": 30.0, **params})
        self.images = ros.publisher(Image, "image_raw")
        self.packets = ros.subscribe(SacPacket, "sac/packets")
        self.video = ros.subscribe(CompressedVideo, VIDEO_TOPIC) if video_first else None
        self.stats = ros.subscribe(SacStats, "sac/sensor_stats", 100)  # last: see wait_discovery
        ros.wait_discovery(publishers=[(self.images, 1)], heard_from=[self.stats])
        self.sent: list[tuple[int, np.ndarray]] = []  # (stamp, frame)

    def send(self, count: int) -> None:
        for _ in range(count):
            rgb = frame(len(self.sent))
            stamp = self.ros.send(self.images, self.ros.image(rgb, "cam_front"), self.packets)
            self.sent.append((stamp, rgb))


def check_stream(messages, packets_by_stamp, originals: dict, codec: str, size) -> None:
    """The video is the packets' stream, message for message, and decodes to the frames."""
    assert entry_point(bytes(messages[0].data), codec), "the first message is no entry point"
    for msg in messages:
        packet = packets_by_stamp[stamp(msg)]
        assert bytes(msg.data) == bytes(packet.roi.data)
        assert msg.frame_id == "cam_front" and msg.format == foxglove_format(codec)
        assert is_key_frame(bytes(msg.data), codec) == packet.roi.key_frame
    pictures = decode_all(messages, codec)
    assert len(pictures) == len(messages)
    for msg, picture in zip(messages, pictures, strict=True):
        assert (picture.shape[1], picture.shape[0]) == size
        assert crop_psnr(picture, originals[stamp(msg)]) > 30.0


@pytest.mark.parametrize("mode, codec", [("roi_qp", "h264"), ("uniform", "hevc")])
def test_sensor_publishes_its_stream_as_compressed_video(ros, mode, codec):
    sensor = Sensor(ros, video_first=True, mode=mode, codec=codec)
    sensor.send(12)
    ros.wait_for(lambda: len(sensor.video) == 12, "12 CompressedVideo messages")

    messages = sensor.video.messages
    assert [stamp(m) for m in messages] == [s for s, _ in sensor.sent]
    check_stream(messages, sensor.packets.by_stamp(), dict(sensor.sent), codec, PADDED)
    assert [is_key_frame(bytes(m.data), codec) for m in messages] == [
        i % GOP == 0 for i in range(12)]
    assert sensor.node.running


def test_sensor_video_only_while_subscribed_from_a_key_frame(ros):
    sensor = Sensor(ros, video_first=False, mode="roi_qp")
    sensor.send(7)  # seq 0-6, nobody watching
    assert "video:" not in sensor.node.stderr()

    video = rh.Collector()
    subscription = ros.node.create_subscription(CompressedVideo, ros.topic(VIDEO_TOPIC), video,
                                                rh.reliable(50))
    # Stats heard on a reader made after the video reader: the sensor knows both.
    fresh = ros.subscribe(SacStats, "sac/sensor_stats", 10)
    ros.wait_for(lambda: len(fresh) > 0, "sensor stats on a fresh reader")
    sensor.send(9)  # seq 7-15: the spell starts at key frame 10
    ros.wait_for(lambda: len(video) == 6, "video from key frame 10 on")
    stamps = [s for s, _ in sensor.sent]
    assert [stamp(m) for m in video.messages] == stamps[10:16]
    check_stream(video.messages, sensor.packets.by_stamp(), dict(sensor.sent), "h264", PADDED)

    ros.node.destroy_subscription(subscription)
    # The sensor notices on its next frame and logs the spell's length: what we received.
    ros.wait_for(lambda: video_spells(sensor.node) or sensor.send(1), "the end of the spell")
    assert video_spells(sensor.node) == [6]
    assert len(video) == 6


def test_dual_crf_sensor_offers_no_video(ros):
    sensor = Sensor(ros, video_first=True, mode="dual_crf")
    sensor.send(6)
    assert ros.node.count_publishers(ros.topic(VIDEO_TOPIC)) == 0
    assert len(sensor.video) == 0


@pytest.fixture(scope="module")
def dual_crf_clip():
    """(frames, core SacPackets): 24 frames, dual CRF, GOP 5."""
    frames = [frame(i) for i in range(24)]
    encoder = SacEncoder(WIDTH, HEIGHT, 20.0, 34.0, EncoderSettings("h264", "veryfast", GOP))
    try:
        packets = [encoder.encode(rgb, rh.polygon_blocks(rgb)) for rgb in frames]
    finally:
        encoder.close()
    return frames, packets


def test_ecu_reencodes_dual_crf_only_while_subscribed(ros, dual_crf_clip):
    frames, packets = dual_crf_clip
    publisher = ros.publisher(SacPacket, "sac/packets", depth=50)
    images = ros.subscribe(Image, "sac/image")
    stats = ros.subscribe(SacStats, "sac/ecu_stats")
    ecu = ros.start("sac_ecu", {"reencode_video": True, "reencode_crf": 16.0})
    ros.wait_discovery(publishers=[(publisher, 1)], heard_from=[stats])

    def send(packet) -> int:
        return ros.send(publisher, ros.packet_msg(packet, "cam_front"), images)

    stamps = [send(p) for p in packets[:3]]  # nobody watching the video: no encoder
    assert "video:" not in ecu.stderr()

    video = rh.Collector()
    subscription = ros.node.create_subscription(CompressedVideo, ros.topic(VIDEO_TOPIC), video,
                                                rh.reliable(50))
    fresh = ros.subscribe(SacStats, "sac/ecu_stats", 10)
    ros.wait_for(lambda: len(fresh) > 0, "ECU stats on a fresh reader")
    stamps += [send(p) for p in packets[3:16]]  # seq 3-15, all re-encoded
    ros.wait_for(lambda: len(video) == 13, "13 re-encoded frames")

    messages = video.messages
    assert [stamp(m) for m in messages] == stamps[3:16]
    assert all(m.frame_id == "cam_front" and m.format == "h264" for m in messages)
    assert entry_point(bytes(messages[0].data), "h264")
    # Key frames: the encoder's first (seq 3), then the sensor's (5, 10, 15).
    assert [i for i, m in zip(range(3, 16), messages, strict=True)
            if is_key_frame(bytes(m.data), "h264")] == [3, 5, 10, 15]
    pictures = decode_all(messages, "h264")
    by_stamp = images.by_stamp()
    for msg, picture in zip(messages, pictures, strict=True):
        assert (picture.shape[1], picture.shape[0]) == REENCODED
        reconstruction = rh.image_pixels(by_stamp[stamp(msg)])
        assert crop_psnr(picture, reconstruction) > 38.0  # CRF 16: close to the ECU's image

    ros.node.destroy_subscription(subscription)
    rest = iter(packets[16:])  # the ECU notices on its next frame and logs the spell
    ros.wait_for(lambda: video_spells(ecu) or send(next(rest)) is None, "the end of the spell")
    assert video_spells(ecu) == [13]
    assert len(video) == 13


def test_ecu_reencode_is_off_by_default(ros, dual_crf_clip):
    _, packets = dual_crf_clip
    publisher = ros.publisher(SacPacket, "sac/packets", depth=50)
    images = ros.subscribe(Image, "sac/image")
    video = ros.subscribe(CompressedVideo, VIDEO_TOPIC)
    stats = ros.subscribe(SacStats, "sac/ecu_stats")
    ros.start("sac_ecu")
    ros.wait_discovery(publishers=[(publisher, 1)], heard_from=[stats])
    for packet in packets[:6]:
        ros.send(publisher, ros.packet_msg(packet), images)
    assert ros.node.count_publishers(ros.topic(VIDEO_TOPIC)) == 0
    assert len(video) == 0
