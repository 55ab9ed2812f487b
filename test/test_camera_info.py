"""core/camera_info.py: bounds checks and the stamp pairing of CameraInfo (no ROS needed)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from sac_ros.core.camera_info import (
    MALFORMED,
    SIZE_MISMATCH,
    UNMATCHED,
    CameraInfoMatcher,
    CameraInfoPairing,
    check,
    topic_beside,
)
from sac_ros.core.wire import (
    IMAGE_TOPIC,
    INPUT_TOPIC,
    OUTPUT_CAMERA_INFO_TOPIC,
    topic_in,
)


def info(width=640, height=480, stamp=0, **fields):
    msg = SimpleNamespace(
        header=SimpleNamespace(frame_id="camera", stamp=SimpleNamespace(sec=0, nanosec=stamp)),
        width=width, height=height, distortion_model="plumb_bob", d=[0.1, -0.2, 0, 0, 0.01],
        k=[500.0, 0, 320, 0, 500, 240, 0, 0, 1], r=[1.0, 0, 0, 0, 1, 0, 0, 0, 1],
        p=[500.0, 0, 320, 0, 0, 500, 240, 0, 0, 0, 1, 0], binning_x=0, binning_y=0,
        roi=SimpleNamespace(x_offset=0, y_offset=0, width=0, height=0, do_rectify=False))
    for key, value in fields.items():
        setattr(msg, key, value)
    return msg


def test_topic_beside_follows_image_transport():
    assert topic_beside("/front/image_raw") == "/front/camera_info"
    assert topic_beside(INPUT_TOPIC) == "camera_info"
    assert topic_beside(topic_in("front", INPUT_TOPIC)) == "/front/camera_info"
    assert topic_beside(IMAGE_TOPIC) == OUTPUT_CAMERA_INFO_TOPIC


@pytest.mark.parametrize("field, value", [
    ("d", [0.0] * 17), ("d", [0.0] * 1_000_000), ("k", [1.0] * 8), ("p", [1.0] * 13),
    ("distortion_model", "x" * 65), ("d", [float("nan")]), ("k", [float("inf")] * 9),
    ("width", 0), ("height", 100_000), ("width", -5),
    ("roi", SimpleNamespace(x_offset=600, y_offset=0, width=100, height=10)),
    ("binning_x", 10**9), ("header", SimpleNamespace(frame_id="f" * 300)),
    ("k", None), ("distortion_model", 7),
])
def test_hostile_infos_are_malformed(field, value):
    assert check(info(**{field: value})) == MALFORMED


def test_good_info_passes():
    assert check(info()) is None
    assert check(info(d=[0.0] * 8, distortion_model="rational_polynomial")) is None


def test_matcher_prefers_the_exact_stamp_else_the_newest():
    matcher = CameraInfoMatcher()
    once = info(stamp=1)
    assert matcher.add(1, once)
    # A camera that published its info once: every later frame gets it.
    assert matcher.match(10, 640, 480) is once
    assert matcher.match(20, 640, 480) is once
    exact, newer = info(stamp=30), info(stamp=40)
    matcher.add(30, exact)
    matcher.add(40, newer)
    assert matcher.match(30, 640, 480) is exact
    assert matcher.match(35, 640, 480) is newer
    assert matcher.forwarded == 4


def test_matcher_drops_and_counts_bad_infos():
    matcher = CameraInfoMatcher()
    assert not matcher.add(1, info(d=[0.0] * 100))
    assert matcher.match(1, 640, 480) is None  # nothing usable
    matcher.add(2, info(width=320, height=240))
    assert matcher.match(2, 640, 480) is None
    assert matcher.drops == {MALFORMED: 1, SIZE_MISMATCH: 1}
    assert matcher.received == 2 and matcher.forwarded == 0


def test_matcher_is_bounded():
    matcher = CameraInfoMatcher(keep=5)
    for stamp in range(1000):
        matcher.add(stamp, info(stamp=stamp))
    assert len(matcher._by_stamp) == 5


def test_pairing_either_order_with_the_image_header():
    pairing = CameraInfoPairing()
    first = info(stamp=1)
    assert pairing.on_info(1, first) is None
    assert pairing.on_image(1, "header 1", 640, 480) == (first, "header 1")
    # The image first: the info is published when it comes, under the image's header.
    assert pairing.on_image(2, "header 2", 640, 480) is None
    second = info(stamp=2)
    assert pairing.on_info(2, second) == (second, "header 2")
    assert pairing.forwarded == 2 and not pairing.drops


def test_pairing_counts_mismatch_unmatched_and_stays_bounded():
    pairing = CameraInfoPairing(keep=4)
    pairing.on_info(1, info(width=320))
    assert pairing.on_image(1, "h", 640, 480) is None
    assert pairing.drops[SIZE_MISMATCH] == 1
    # Infos whose images were dropped: given up once a later image comes out.
    for stamp in (5, 6, 7):
        pairing.on_info(stamp, info(stamp=stamp))
    assert pairing.on_image(8, "h8", 640, 480) is None
    assert pairing.drops[UNMATCHED] == 3
    for stamp in range(100, 200):  # images that never get an info, infos with no image
        pairing.on_image(stamp, "h", 640, 480)
        pairing.on_info(stamp + 1000, info())
    assert len(pairing._images) <= 4 and len(pairing._infos) <= 4
    assert pairing.on_info(3, info(k=[1.0])) is None
    assert pairing.drops[MALFORMED] == 1


def test_real_camera_info_message():
    """The checks read rclpy's generated class (arrays are array / numpy types)."""
    CameraInfo = pytest.importorskip("sensor_msgs.msg").CameraInfo
    msg = CameraInfo(width=640, height=480, distortion_model="plumb_bob", d=[0.1, 0, 0, 0, 0])
    msg.k[0] = 500.0
    assert check(msg) is None
    msg.d = [0.0] * 64
    assert check(msg) == MALFORMED
