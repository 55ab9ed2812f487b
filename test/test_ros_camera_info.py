"""CameraInfo through the pipeline over real Fast DDS (issue 18 item 4).

The sensor takes the camera's CameraInfo beside its input, forwards it with each encoded
frame, and the ECU republishes it beside each reconstructed image with exactly the
image's header. Hostile infos are dropped and counted, never fatal. A bag converted with
``--calibration`` and run through the pipeline comes out with its camera_info.
"""

from __future__ import annotations

import json
import os
import subprocess

import numpy as np
import ros_helpers as rh
import yaml
from builtin_interfaces.msg import Time
from diagnostic_msgs.msg import DiagnosticArray
from ros_helpers import frame
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from sac_ros.core.wire import DIAGNOSTICS_TOPIC, OUTPUT_CAMERA_INFO_TOPIC
from sac_ros.msg import SacStats

WIDTH, HEIGHT = rh.WIDTH, rh.HEIGHT


def camera_info(stamp_ns: int, fx: float, width: int = WIDTH, height: int = HEIGHT,
                d=(0.1, -0.05, 0.0, 0.0, 0.01)) -> CameraInfo:
    msg = CameraInfo(header=header(stamp_ns, "camera_optical"), width=width, height=height,
                     distortion_model="plumb_bob", d=list(d))
    msg.k = [fx, 0.0, width / 2, 0.0, fx, height / 2, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [fx, 0.0, width / 2, 0.0, 0.0, fx, height / 2, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def header(stamp_ns: int, frame_id: str = "camera") -> Header:
    return Header(stamp=Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000),
                  frame_id=frame_id)


def sensor_relay_values(ros, arrays: rh.Collector) -> dict[str, str] | None:
    """The key-values of the sensor's latest "camera info" status."""
    name = f"{ros.namespace}/sac_sensor: camera info"
    for array in reversed(arrays.messages):
        for status in array.status:
            if status.name == name:
                return {kv.key: kv.value for kv in status.values} | {"level": status.level}
    return None


def test_camera_info_reaches_the_ecu_output_with_the_image_header(ros):
    infos = ros.publisher(CameraInfo, "camera_info", depth=50)
    images = ros.publisher(Image, "image_raw", depth=50)
    outputs = ros.subscribe(Image, "sac/image")
    out_infos = ros.subscribe(CameraInfo, OUTPUT_CAMERA_INFO_TOPIC, depth=100)
    sensor_stats = ros.subscribe(SacStats, "sac/sensor_stats")
    ecu_stats = ros.subscribe(SacStats, "sac/ecu_stats")
    ros.start("sac_sensor", {"gop": 5, "preset": "ultrafast"})
    ros.start("sac_ecu")
    arrays = rh.Collector()
    ros.node.create_subscription(DiagnosticArray, DIAGNOSTICS_TOPIC, arrays, rh.reliable(100))
    ros.wait_discovery(publishers=[(infos, 1), (images, 1)],
                       heard_from=[sensor_stats, ecu_stats, arrays])
    # Our endpoints matched says nothing of the sensor's packet writer and the ECU's reader.
    ros.wait_stats(sensor_stats, lambda m: m.output_readers >= 1, "the ECU to match")

    def relay_received(count: int) -> None:
        ros.wait_for(lambda: int((sensor_relay_values(ros, arrays) or {}).get(
            "received", 0)) >= count, f"the sensor to hold {count} camera info(s)")

    base = ros.node.get_clock().now().nanoseconds
    stamps = [base + i * 33_000_000 for i in range(8)]
    # Per-frame infos for the first five frames (each with its own focal length), then a
    # "latched" one stamped later: the sensor holds all six before any frame comes.
    for i in range(5):
        infos.publish(camera_info(stamps[i], 500.0 + i))
    infos.publish(camera_info(stamps[-1] + 10**9, 777.0))
    relay_received(6)
    for i, stamp in enumerate(stamps):
        ros.send(images, rh.rgb_to_image(frame(i), header(stamp)), outputs)
    ros.wait_for(lambda: len(out_infos) >= len(stamps), "a camera info per output image")
    by_stamp = out_infos.by_stamp()
    for i, image in enumerate(outputs.messages):
        info = by_stamp[rh.stamp_ns(image.header)]
        assert info.header == image.header  # exactly: stamp and frame_id
        # Exact stamp where the camera sent one, else the newest info received.
        assert info.k[0] == (500.0 + i if i < 5 else 777.0), (i, info.k[0])
        assert (info.width, info.height) == (image.width, image.height)
        np.testing.assert_allclose(info.d, [0.1, -0.05, 0.0, 0.0, 0.01])

    # Hostile: a size that is not the frames', then 100 000 distortion coefficients and a
    # NaN focal length. Dropped and counted; the nodes carry on.
    infos.publish(camera_info(stamps[-1] + 2 * 10**9, 600.0, width=4000, height=3000))
    relay_received(7)
    ros.send(images, ros.image(frame(9)), outputs)
    infos.publish(camera_info(0, 600.0, d=[0.0] * 100_000))
    infos.publish(camera_info(0, float("nan")))
    relay_received(9)
    counted = ros.wait_for(lambda: (lambda v: v if v and "dropped malformed" in v else None)(
        sensor_relay_values(ros, arrays)), "the malformed infos in the sensor's diagnostics")
    assert counted["dropped malformed"] == "2" and counted["dropped size_mismatch"] == "1"
    assert counted["level"] == b"\x01", counted  # WARN
    assert len(out_infos) == len(stamps)  # the mismatched one did not go out
    # A good info again: forwarded again.
    infos.publish(camera_info(stamps[-1] + 3 * 10**9, 640.0))
    relay_received(10)
    stamp = ros.send(images, ros.image(frame(10)), outputs)
    ros.wait_for(lambda: stamp in out_infos.by_stamp(), "the camera info of the last frame")
    assert out_infos.by_stamp()[stamp].k[0] == 640.0
    ros.check_children()


def test_bag_with_calibration_through_the_pipeline(tmp_path):
    """`sac bag convert --calibration` then `sac bag run`: the ECU's camera_info for every
    reconstructed image, with its header, the bag's calibration."""
    from bags_fixtures import make_cityscapes, sac, tiny_segmenter
    from test_bags_ros import domain_env, sac_cmd, stop

    from sac_ros.bags.bagio import open_bag

    root = tmp_path / "cs"
    make_cityscapes(root, [("train", "aachen", 0, 0, 10, {5})], height=64, width=96)
    calib = tmp_path / "camera.yaml"
    calib.write_text(yaml.safe_dump({
        "image_width": 96, "image_height": 64, "camera_name": "front",
        "camera_matrix": {"rows": 3, "cols": 3, "data": [100, 0, 47.5, 0, 100, 31.5, 0, 0, 1]},
        "distortion_model": "plumb_bob",
        "distortion_coefficients": {"rows": 1, "cols": 5, "data": [0.1, 0, 0, 0, 0]},
        "rectification_matrix": {"rows": 3, "cols": 3, "data": [1, 0, 0, 0, 1, 0, 0, 0, 1]},
        "projection_matrix": {"rows": 3, "cols": 4,
                              "data": [100, 0, 47.5, 0, 0, 100, 31.5, 0, 0, 0, 1, 0]}}))
    source = tmp_path / "source"
    result = sac("bag", "convert", root, source, "--calibration", calib, "--no-progress")
    assert result.returncode == 0, result.stderr
    run = tmp_path / "run"
    cmd = [*sac_cmd(), "bag", "run", source, run, "--no-perception", "--no-progress",
           "--json", tmp_path / "run.json", "-p", "sac_sensor.preset=ultrafast",
           "--model", tiny_segmenter(tmp_path / "rule.onnx")]
    proc = subprocess.Popen(cmd, env=domain_env(int.from_bytes(os.urandom(1), "big")),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        stdout, stderr = proc.communicate(timeout=150)
    finally:
        stop(proc)
    assert proc.returncode == 0, stdout + stderr[-3000:]
    cam = json.loads((tmp_path / "run.json").read_text())["cameras"][0]
    with open_bag(run) as reader:
        msgs: dict[str, list] = {}
        for conn, _, raw in reader.messages():
            if conn.topic in ("/front/sac/image", "/front/sac/camera_info"):
                msgs.setdefault(conn.topic, []).append(reader.deserialize(raw, conn.msgtype))
    images, infos = msgs["/front/sac/image"], msgs.get("/front/sac/camera_info", [])
    assert len(images) == cam["reconstructed"] > 0
    key = lambda m: (m.header.stamp.sec, m.header.stamp.nanosec, m.header.frame_id)  # noqa: E731
    assert sorted(map(key, infos)) == sorted(map(key, images))
    for info in infos:
        assert (info.width, info.height) == (96, 64)
        # The calibration file's, as the camera's camera_info in the bag carried it.
        np.testing.assert_allclose(info.k.reshape(3, 3),
                                   [[100, 0, 47.5], [0, 100, 31.5], [0, 0, 1]])
