"""`sac bag convert` / `info` (ROS-free): tiny Cityscapes, KITTI-STEP and video sources.

Converted bags are checked with independent readers: the `mcap` library (with the
`mcap-ros2-support` CDR decoder) and rosbags; and, when rclpy is there, every message
is deserialized with rclpy.serialization.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import yaml
from bags_fixtures import (
    make_cityscapes,
    make_kitti,
    make_video,
    one_line_error,
    sac,
    sac_inprocess,
)
from PIL import Image

from sac_ros.bags.bagio import BagWriter, open_bag
from sac_ros.bags.convert import ConvertOptions, convert
from sac_ros.bags.types import msg_dir, typestore
from sac_ros.core.errors import SacError

# (split, city, seq, first frame, frames, labelled offsets): two snippets of one city
# sequence (a real gap of 40 frame numbers), and a second city.
CS_SEQUENCES = [("train", "aachen", 0, 0, 4, {2}), ("train", "aachen", 0, 44, 3, {1}),
                ("val", "bonn", 7, 100, 3, set())]
RATE = 17.0


def cs_stamps_ns() -> list[int]:
    """Stamps the converter must give: frame numbers at 17 Hz within a sequence
    (aachen_000000 keeps its 40-frame gap), the next sequence one second later."""
    first = [round(n * 1e9 / RATE) for n in (0, 1, 2, 3, 44, 45, 46)]
    base = first[-1] + 1_000_000_000
    return first + [base + round(k * 1e9 / RATE) for k in range(3)]


@pytest.fixture(scope="module")
def cityscapes(tmp_path_factory):
    root = tmp_path_factory.mktemp("cityscapes")
    return root, make_cityscapes(root, CS_SEQUENCES)


@pytest.fixture(scope="module")
def cs_bag(cityscapes, tmp_path_factory):
    root, _ = cityscapes
    out = tmp_path_factory.mktemp("bags") / "cs_bag"
    result = sac("bag", "convert", root, out, "--no-progress")
    assert result.returncode == 0, result.stderr
    return out, result.stdout


def mcap_messages(bag: Path) -> list:
    """(topic, schema, log_time, decoded) via the mcap library, not rosbags."""
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    files = list(bag.glob("*.mcap"))
    assert len(files) == 1, files
    with open(files[0], "rb") as handle:
        reader = make_reader(handle, decoder_factories=[DecoderFactory()])
        return [(channel.topic, schema.name, message.log_time, decoded)
                for schema, channel, message, decoded in reader.iter_decoded_messages()]


def stamp(header) -> int:
    return header.stamp.sec * 1_000_000_000 + header.stamp.nanosec


def test_cityscapes_bag_reads_back_with_mcap_and_rosbags(cityscapes, cs_bag):
    _, data = cityscapes
    bag, stdout = cs_bag
    assert "10 frames in 2 sequence(s) at 17 Hz" in stdout
    messages = mcap_messages(bag)
    images = [m for m in messages if m[0] == "/front/image_raw"]
    labels = [m for m in messages if m[0] == "/front/labels"]
    assert len(images) == len(data["frames"]) == 10
    assert len(labels) == len(data["labels"]) == 2
    stamps = cs_stamps_ns()
    for (_, schema, log_time, msg), (_, rgb), want in zip(images, data["frames"], stamps,
                                                          strict=True):
        assert schema == "sensor_msgs/msg/Image"
        assert log_time == stamp(msg.header) == want
        assert (msg.encoding, msg.width, msg.height, msg.step) == ("rgb8", 80, 48, 240)
        assert msg.header.frame_id == "camera"
        np.testing.assert_array_equal(np.frombuffer(bytes(msg.data), np.uint8).reshape(48, 80, 3),
                                      rgb)
    # Labels: labelIds as mono8, on the stamps of their frames, pixel-exact.
    paths = [p for p, _ in data["frames"]]
    for (_, _, log_time, msg), (path, ids) in zip(labels, data["labels"].items(), strict=True):
        assert msg.encoding == "mono8"
        assert log_time == stamps[paths.index(path)]
        np.testing.assert_array_equal(np.frombuffer(bytes(msg.data), np.uint8).reshape(48, 80),
                                      ids)
    # rosbags, through our reader: the same counts and stamps.
    with open_bag(bag) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        got = [t for c, t, _ in reader.messages() if c.topic == "/front/image_raw"]
        assert reader.custom_data.get("sac_ros.source")
    assert counts == {"/front/image_raw": 10, "/front/labels": 2}
    assert got == stamps
    source = json.loads(yaml.safe_load((bag / "metadata.yaml").read_text())[
        "rosbag2_bagfile_information"]["custom_data"]["sac_ros.source"])
    assert [s["name"] for s in source["sequences"]] == ["aachen_000000", "bonn_000007"]


def test_converted_bag_deserializes_with_rclpy(cs_bag, cityscapes):
    serialization = pytest.importorskip("rclpy.serialization",
                                        reason="rclpy is not installed")
    from sensor_msgs.msg import Image as RosImage

    bag, _ = cs_bag
    _, data = cityscapes
    count = 0
    with open_bag(bag) as reader:
        for conn, time_ns, raw in reader.messages():
            msg = serialization.deserialize_message(bytes(raw), RosImage)
            assert stamp(msg.header) == time_ns
            count += 1
            if conn.topic == "/front/image_raw" and count == 1:
                np.testing.assert_array_equal(
                    np.frombuffer(bytes(msg.data), np.uint8).reshape(48, 80, 3),
                    data["frames"][0][1])
    assert count == 12


def test_kitti_step_sqlite3_resized_with_camera_info(tmp_path):
    root = tmp_path / "kitti-step"
    data = make_kitti(root, [("train", "0000", 5), ("val", "0003", 3)])
    calib = tmp_path / "camera.yaml"
    calib.write_text(yaml.safe_dump({
        "image_width": 72, "image_height": 40, "camera_name": "front",
        "camera_matrix": {"rows": 3, "cols": 3, "data": [60, 0, 35.5, 0, 60, 19.5, 0, 0, 1]},
        "distortion_model": "plumb_bob",
        "distortion_coefficients": {"rows": 1, "cols": 5, "data": [0.1, 0, 0, 0, 0]},
        "rectification_matrix": {"rows": 3, "cols": 3, "data": [1, 0, 0, 0, 1, 0, 0, 0, 1]},
        "projection_matrix": {"rows": 3, "cols": 4,
                              "data": [60, 0, 35.5, 0, 0, 60, 19.5, 0, 0, 0, 1, 0]}}))
    out = tmp_path / "kitti_bag"
    result = sac("bag", "convert", root / "images" / "train", out, "--storage", "sqlite3",
                 "--size", "36x20", "--calibration", calib, "--topic", "/cam/image",
                 "--labels-topic", "/cam/labels", "--camera-info-topic", "/cam/info",
                 "--frame-id", "cam_optical", "--no-progress")
    assert result.returncode == 0, result.stderr
    assert list(out.glob("*.db3")), list(out.iterdir())
    with open_bag(out) as reader:
        msgs = {}
        for conn, time_ns, raw in reader.messages():
            msgs.setdefault(conn.topic, []).append(
                (time_ns, reader.deserialize(raw, conn.msgtype)))
    assert {t: len(v) for t, v in msgs.items()} == {"/cam/image": 5, "/cam/labels": 5,
                                                    "/cam/info": 5}
    for topic in msgs:
        assert [t for t, _ in msgs[topic]] == [round(k * 1e8) for k in range(5)]  # 10 Hz
    image = msgs["/cam/image"][0][1]
    assert (image.width, image.height, image.header.frame_id) == (36, 20, "cam_optical")
    # Panoptic labels: rgb8 with ids in R and instance ids kept, nearest-neighbour resized.
    label = msgs["/cam/labels"][2][1]
    panoptic = label.data.reshape(20, 36, 3)
    source = data["labels"][data["frames"][2][0]]
    np.testing.assert_array_equal(panoptic, source[1::2, 1::2])
    assert label.encoding == "rgb8" and set(np.unique(panoptic[..., 0])) <= {0, 8, 10, 13}
    info = msgs["/cam/info"][0][1]
    assert (info.width, info.height) == (36, 20)
    np.testing.assert_allclose(info.k.reshape(3, 3), [[30, 0, 17.5], [0, 30, 9.5], [0, 0, 1]])
    np.testing.assert_allclose(info.d, [0.1, 0, 0, 0, 0])
    # The mixed-in val sequence was not converted (the input was the train split).
    assert "1 sequence(s)" in result.stdout


def test_video_conversion(tmp_path):
    video = tmp_path / "clip.mp4"
    frames = make_video(video, frames=6, fps=12)
    out = tmp_path / "video_bag"
    result = convert(str(video), out, ConvertOptions(start_time_ns=5_000_000_000))
    assert (result.frames, result.rate_hz, result.kind) == (6, 12.0, "video")
    messages = mcap_messages(out)
    assert [m[2] for m in messages] == [5_000_000_000 + round(i * 1e9 / 12) for i in range(6)]
    for (_, _, _, msg), rgb in zip(messages, frames, strict=True):
        np.testing.assert_array_equal(np.frombuffer(bytes(msg.data), np.uint8).reshape(rgb.shape),
                                      rgb)


def test_plain_image_folder_converts_as_sac_eval_reads_it(tmp_path, capsys):
    """Issue 17 item 5: a folder in neither dataset layout is read as `sac eval` reads it
    (its images in file-name order, at 30 Hz unless --fps), not refused."""
    folder = tmp_path / "shots"
    folder.mkdir()
    frames = [np.full((24, 40, 3), 10 * i, np.uint8) for i in range(5)]
    for i, rgb in enumerate(frames):
        Image.fromarray(rgb).save(folder / f"shot_{i:02d}.png")
    out = tmp_path / "bag"
    result = sac_inprocess(capsys, "bag", "convert", folder, out, "--no-progress")
    assert result.returncode == 0, result.stderr
    stdout = result.stdout
    assert f"source   images {folder}: 5 frames in 1 sequence(s) at 30 Hz, 40x24" in stdout
    messages = mcap_messages(out)
    assert [m[2] for m in messages] == [round(i * 1e9 / 30) for i in range(5)]
    for (topic, _, _, msg), rgb in zip(messages, frames, strict=True):
        assert topic == "/front/image_raw"
        np.testing.assert_array_equal(np.frombuffer(bytes(msg.data), np.uint8).reshape(rgb.shape),
                                      rgb)
    result = sac_inprocess(capsys, "bag", "convert", folder, tmp_path / "b10", "--fps", "10",
                           "--no-progress")
    assert result.returncode == 0, result.stderr
    assert [m[2] for m in mcap_messages(tmp_path / "b10")][-1] == 400_000_000


def test_typestore_hashes_match_rosidl():
    """The bag definitions of our messages carry the hashes rosidl generated."""
    store = typestore()
    checked = 0
    for path in sorted(msg_dir().glob("*.msg")):
        generated = [p / "share" / "sac_ros" / "msg" / f"{path.stem}.json"
                     for p in (Path(__import__("sys").prefix),)]
        if not generated[0].is_file():
            continue
        description = json.loads(generated[0].read_text())
        want = description["type_hashes"][0]["hash_string"]
        assert store.hash_rihs01(f"sac_ros/msg/{path.stem}") == want
        checked += 1
    if not checked:
        pytest.skip("the rosidl-generated type descriptions are not installed")


# ------------------------------------------------------------------ bad input

def test_existing_output_is_refused_then_replaced(cityscapes, tmp_path, capsys):
    root, _ = cityscapes
    out = tmp_path / "out"
    out.mkdir()
    (out / "metadata.yaml").write_text("old")
    one_line_error(sac_inprocess(capsys, "bag", "convert", root, out, "--no-progress"), "bag",
                   "already exists")
    assert (out / "metadata.yaml").read_text() == "old"
    result = sac_inprocess(capsys, "bag", "convert", root, out, "--overwrite", "--max-frames",
                           "2", "--no-progress")
    assert result.returncode == 0, result.stderr
    with open_bag(out) as reader:
        assert reader.message_count == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


@pytest.mark.parametrize("case", ["neither", "cs_gap", "kitti_gap", "mixed", "label_size"])
def test_bad_datasets(tmp_path, case, capsys):
    if case == "neither":  # no image at all (a plain image folder converts: see above)
        (tmp_path / "data" / "pics").mkdir(parents=True)
        (tmp_path / "data" / "pics" / "notes.txt").write_text("not an image")
        fragment = "holds no images (.png, .jpg, .jpeg, .bmp, .ppm) and is in neither dataset"
    elif case == "cs_gap":
        make_cityscapes(tmp_path / "data", [("train", "ulm", 0, 0, 5, set())])
        (tmp_path / "data/leftImg8bit_sequence/train/ulm/ulm_000000_000002_leftImg8bit.png"
         ).unlink()
        fragment = "missing frames in sequence ulm_000000: ulm_000000_000002_leftImg8bit.png"
    elif case == "kitti_gap":
        make_kitti(tmp_path / "data", [("train", "0001", 4)])
        (tmp_path / "data/images/train/0001/000001.png").unlink()
        fragment = "missing frames in sequence train/0001: 000001.png"
    elif case == "mixed":
        make_kitti(tmp_path / "data", [("train", "0001", 2)], labels=False)
        make_kitti(tmp_path / "data", [("train", "0002", 2)], height=44, labels=False)
        fragment = "mixed image sizes"
    else:
        make_cityscapes(tmp_path / "data", [("train", "ulm", 0, 0, 2, {0})])
        label = next((tmp_path / "data" / "gtFine").rglob("*.png"))
        Image.new("L", (10, 10)).save(label)
        fragment = "label ulm_000000_000000_gtFine_labelIds.png is 10x10 but its frame is 80x48"
    args = ("bag", "convert", tmp_path / "data", tmp_path / "out", "--no-progress")
    # One case through the installed console script, the others in-process (faster).
    result = sac(*args) if case == "neither" else sac_inprocess(capsys, *args)
    one_line_error(result, "bag", fragment)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_failure_mid_write_leaves_nothing(tmp_path, capsys):
    """A frame that cannot be decoded half-way: the partial bag is closed and removed."""
    data = make_cityscapes(tmp_path / "data", [("train", "ulm", 0, 0, 4, set())])
    data["frames"][2][0].write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(SacError, match="cannot read image"):
        convert(str(tmp_path / "data"), tmp_path / "out", ConvertOptions())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    # The same through the CLI, and a video that is not one.
    one_line_error(sac_inprocess(capsys, "bag", "convert", tmp_path / "data", tmp_path / "out",
                                 "--no-progress"), "bag", "cannot read image")
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    one_line_error(sac_inprocess(capsys, "bag", "convert", tmp_path / "bad.mp4",
                                 tmp_path / "out"), "bag", "cannot read video")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.mp4", "data"]


def test_bag_with_unknown_type_reads_definitions_from_the_bag(tmp_path, capsys):
    """A type neither Kilted nor sac_ros: `info` and our reader use the bag's definition;
    `play` refuses it clearly (rclpy cannot publish it); `report` says what is missing."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    other = get_typestore(Stores.ROS2_KILTED)
    other.register(get_types_from_msg("std_msgs/Header header\nfloat64 speed\nstring[] tags",
                                      "acme_msgs/msg/Odo"))
    Odo = other.types["acme_msgs/msg/Odo"]
    header = other.types["std_msgs/msg/Header"](
        stamp=other.types["builtin_interfaces/msg/Time"](sec=1, nanosec=5), frame_id="base")
    out = tmp_path / "acme"
    with BagWriter(out) as bag:
        msgdef, _ = other.generate_msgdef("acme_msgs/msg/Odo", ros_version=2)
        conn = bag.writer.add_connection("/odo", "acme_msgs/msg/Odo", msgdef=msgdef,
                                         rihs01=other.hash_rihs01("acme_msgs/msg/Odo"))
        bag.writer.write(conn, 1_000_000_005, other.serialize_cdr(
            Odo(header=header, speed=12.5, tags=["a", "b"]), "acme_msgs/msg/Odo"))
    assert "acme_msgs/msg/Odo" not in typestore().fielddefs
    with open_bag(out) as reader:
        (conn, _, raw), = list(reader.messages())
        msg = reader.deserialize(raw, conn.msgtype)
    assert (msg.speed, list(msg.tags), msg.header.frame_id) == (12.5, ["a", "b"], "base")
    info = sac_inprocess(capsys, "bag", "info", out, "--json")
    assert info.returncode == 0, info.stderr
    assert json.loads(info.stdout)["topics"] == [
        {"topic": "/odo", "type": "acme_msgs/msg/Odo", "messages": 1, "definition": "bag"}]
    one_line_error(sac_inprocess(capsys, "bag", "play", out, "--no-progress"), "bag",
                   "cannot publish /odo: acme_msgs/msg/Odo is not installed for rclpy")
    one_line_error(sac_inprocess(capsys, "report", out, "--out", tmp_path / "rep",
                                 "--no-progress"), "report", "no sac_ros/msg/SacPacket topic")
    one_line_error(sac_inprocess(capsys, "bag", "info", tmp_path), "bag", "is not a ROS 2 bag")
    shutil.rmtree(out)


def test_conversion_and_report_import_without_ros():
    """Conversion, reading and the report are ROS-free: importing them loads no rclpy."""
    import subprocess
    import sys

    code = ("import sys; import sac_ros.bags.convert, sac_ros.bags.info, sac_ros.report.report, "
            "sac_ros.eval.reproduce, sac_ros.cli.main; "
            "ros = ('rclpy', 'sensor_msgs', 'sac_ros.msg'); "
            "bad = [m for m in sys.modules if m.startswith(ros)]; "
            "print(bad); sys.exit(1 if bad else 0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
