"""Standard video in recorded bags (issue 18): `sac bag run` records the nodes'
foxglove_msgs/CompressedVideo, and the bag opens in the independent ``mcap`` reader
(``mcap_ros2`` decoding the CDR with the bag's own schema), as Foxglove opens it; PyAV
then decodes every frame (count and size checked).

Real processes over real Fast DDS; skipped when rclpy or the built messages are missing.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import av
import pytest

try:
    import rclpy  # noqa: F401

    import sac_ros.msg  # noqa: F401  (the built messages)
except ImportError as exc:  # pragma: no cover - depends on the install
    pytest.skip(f"needs rclpy and the built sac_ros messages: {exc}", allow_module_level=True)

from bags_fixtures import make_cityscapes, sac

from sac_ros.bags.record import camera_topics
from sac_ros.bags.types import COMPRESSED_VIDEO, typestore
from sac_ros.core.annexb import entry_point, is_key_frame
from sac_ros.core.wire import VIDEO_TOPIC, topic_in

WIDTH, HEIGHT, FRAMES, GOP = 96, 64, 24, 5  # 96x64: on the 16 px grid, no padding
VIDEO = topic_in("front", VIDEO_TOPIC)
PACKETS = "/front/sac/packets"


def domain_env(offset: int) -> dict:
    domain = 151 + (os.getpid() * 5 + offset) % 50   # clear of the harness's 1-100
    return dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")


@pytest.fixture(scope="module")
def source_bag(tmp_path_factory):
    """Two Cityscapes snippets of 12 frames, converted to a bag."""
    root = tmp_path_factory.mktemp("cs")
    make_cityscapes(root, [("train", "aachen", 0, 0, 12, {5}), ("train", "aachen", 3, 0, 12,
                                                              {7})], height=HEIGHT, width=WIDTH)
    bag = tmp_path_factory.mktemp("bags") / "source"
    result = sac("bag", "convert", root, bag, "--no-progress")
    assert result.returncode == 0, result.stderr
    return bag


def run_bag(source: Path, tmp_path: Path, offset: int, *params: str) -> tuple[Path, dict]:
    run = tmp_path / "run"
    args = ["bag", "run", source, run, "--no-perception", "--no-progress", "--json",
            tmp_path / "run.json", "-p", f"sac_sensor.gop={GOP}"]
    for param in params:
        args += ["-p", param]
    result = sac(*args, env=domain_env(offset), timeout=240)
    assert result.returncode == 0, result.stdout + result.stderr[-3000:]
    return run, json.loads((tmp_path / "run.json").read_text())["cameras"][0]


def mcap_messages(run: Path) -> dict[str, list]:
    """Every message of the run's MCAP, decoded by mcap_ros2 from the bag's own schemas:
    topic -> [(schema name, log time, decoded message)]."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    (path,) = run.glob("*.mcap")
    found: dict[str, list] = {}
    with open(path, "rb") as stream:
        reader = make_reader(stream, decoder_factories=[DecoderFactory()])
        for schema, channel, message, decoded in reader.iter_decoded_messages():
            found.setdefault(channel.topic, []).append((schema.name, message.log_time,
                                                        decoded))
    return found


def stamp(msg) -> int:
    return msg.timestamp.sec * 1_000_000_000 + msg.timestamp.nanosec


def decode_all(video: list, codec: str) -> list:
    decoder = av.CodecContext.create(codec, "r")
    pictures = []
    for msg in video:
        frames = decoder.decode(av.Packet(bytes(msg.data)))
        assert len(frames) == 1
        pictures.append(frames[0])
    return pictures


def test_camera_topics_include_the_video_and_the_store_knows_it():
    assert "/rear/sac/video" in camera_topics("rear")
    store = typestore()
    assert COMPRESSED_VIDEO in store.fielddefs
    # The hash of upstream foxglove_msgs (as rosidl generates it), so readers match types.
    assert store.hash_rihs01(COMPRESSED_VIDEO) == (
        "RIHS01_32039eafc3770e589c86c4dabff9c392ce9955ebffd43f5f60763011d43d8d1d")


def test_bag_run_roi_qp_records_the_sensors_stream(source_bag, tmp_path):
    run, cam = run_bag(source_bag, tmp_path, 1, "sac_sensor.mode=roi_qp")
    messages = mcap_messages(run)
    assert {name for name, _, _ in messages[VIDEO]} == {COMPRESSED_VIDEO}
    video = [m for _, _, m in messages[VIDEO]]
    packets = {p.header.stamp.sec * 1_000_000_000 + p.header.stamp.nanosec: p
               for _, _, p in messages[PACKETS]}
    assert len(packets) == cam["packets"] == cam["reconstructed"]
    # The recorder subscribed before the first frame: every packet is in the video too,
    # from the first (a key frame with its SPS/PPS).
    assert len(video) == len(packets) == FRAMES - cam["counted_drops"]
    assert entry_point(bytes(video[0].data), "h264")
    for msg in video:
        packet = packets[stamp(msg)]
        assert bytes(msg.data) == bytes(packet.roi.data) and msg.format == "h264"
        assert is_key_frame(bytes(msg.data), "h264") == bool(packet.roi.key_frame)
        assert msg.frame_id == packet.header.frame_id
    pictures = decode_all(video, "h264")
    assert len(pictures) == len(video)
    assert {(p.width, p.height) for p in pictures} == {(WIDTH, HEIGHT)}


def test_bag_run_dual_crf_records_the_ecus_reencoded_stream(source_bag, tmp_path):
    run, cam = run_bag(source_bag, tmp_path, 2, "sac_ecu.reencode_video=true")
    messages = mcap_messages(run)
    video = [m for name, _, m in messages[VIDEO] if name == COMPRESSED_VIDEO]
    images = {m.header.stamp.sec * 1_000_000_000 + m.header.stamp.nanosec
              for _, _, m in messages["/front/sac/image"]}
    assert len(video) == len(images) == cam["reconstructed"] > 0
    assert [stamp(m) for m in video] == sorted(images)
    assert entry_point(bytes(video[0].data), "h264")
    keys = [i for i, m in enumerate(video) if is_key_frame(bytes(m.data), "h264")]
    assert keys[0] == 0 and all(b - a <= GOP for a, b in zip(keys, keys[1:], strict=False))
    pictures = decode_all(video, "h264")
    assert len(pictures) == len(video)
    assert {(p.width, p.height) for p in pictures} == {(WIDTH, HEIGHT)}


def test_bag_without_video_has_none(source_bag, tmp_path):
    """dual_crf without re-encoding: no video channel (nothing offered, nothing recorded)."""
    run, _ = run_bag(source_bag, tmp_path, 3, "sac_sensor.preset=ultrafast")
    assert VIDEO not in mcap_messages(run)

