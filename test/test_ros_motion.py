"""Motion at the ECU and the propagating perception node, over real Fast DDS.

Packets are encoded in the test (dual CRF, GOP 5) from real dashcam footage resized to
the harness's odd size, published straight to a running ECU, and sent lock-step: the
next packet goes out once the previous one's output has arrived.
"""

from __future__ import annotations

import numpy as np
import pytest
import ros_helpers as rh
from PIL import Image as PilImage
from ros_helpers import HEIGHT, WIDTH
from sensor_msgs.msg import Image

from sac_ros.core import motion
from sac_ros.core.codec import EncoderSettings
from sac_ros.core.errors import SacError
from sac_ros.core.io import load_clip
from sac_ros.core.sac import SacEncoder
from sac_ros.msg import PerceptionStats, SacMotion, SacPacket, SacStats

GOP = 5
COUNT = 20
STEP = 2  # px per frame of the synthetic pan


def pan_frames(count: int) -> list[np.ndarray]:
    """A textured picture panning left by STEP px a frame: dx = 4 * STEP everywhere."""
    rng = np.random.default_rng(1)
    from scipy import ndimage

    big = ndimage.gaussian_filter(rng.random((HEIGHT, WIDTH + STEP * count, 3)), (1.5, 1.5, 0))
    big = ((big - big.min()) / np.ptp(big) * 235 + 10).astype(np.uint8)
    return [np.ascontiguousarray(big[:, STEP * t:STEP * t + WIDTH]) for t in range(count)]


def footage(count: int) -> list[np.ndarray]:
    try:
        clip = load_clip("sample:project_video01", 0, count)
    except SacError as exc:
        pytest.skip(f"needs the bundled sample footage: {exc}")
    return [np.asarray(PilImage.fromarray(f).resize((WIDTH, HEIGHT), PilImage.Resampling.BILINEAR))
            for f in clip.frames]


def encode(frames: list[np.ndarray]):
    encoder = SacEncoder(WIDTH, HEIGHT, 20.0, 30.0, EncoderSettings("h264", "veryfast", GOP))
    try:
        return [encoder.encode(rgb, rh.polygon_blocks(rgb)) for rgb in frames]
    finally:
        encoder.close()


class Ecu:
    def __init__(self, ros, params=None, motion_subscribed=True):
        self.ros = ros
        self.packets = ros.publisher(SacPacket, "sac/packets", depth=50)
        self.outputs = ros.subscribe(Image, "sac/image")
        self.motions = ros.subscribe(SacMotion, "sac/motion") if motion_subscribed else None
        self.stats = ros.subscribe(SacStats, "sac/ecu_stats")
        self.node = ros.start("sac_ecu", params)
        ros.wait_discovery(publishers=[(self.packets, 1)], heard_from=[self.stats])
        self.seq_of: dict[int, int] = {}

    def send(self, packet, reply) -> int:
        stamp = self.ros.send(self.packets, self.ros.packet_msg(packet), reply,
                              f"the output of packet {packet.seq}")
        self.seq_of[stamp] = packet.seq
        return stamp


def test_motion_has_the_image_stamp_shape_and_the_pan(ros):
    packets = encode(pan_frames(COUNT))
    ecu = Ecu(ros)
    ros.wait_for(lambda: ecu.motions is not None and ros.node.count_publishers(
        ros.topic("sac/motion")) >= 1, "the ECU's motion publisher")
    stamps = [ecu.send(p, ecu.outputs) for p in packets]
    motions = ros.wait_for(lambda: len(ecu.motions) >= COUNT and ecu.motions.by_stamp(),
                           "a motion message per frame")
    rows, cols = -(-HEIGHT // 16), -(-WIDTH // 16)
    assert set(motions) == set(stamps)  # exactly the images' stamps
    for image in ecu.outputs.messages:
        stamp = rh.stamp_ns(image.header)
        msg = motions[stamp]
        assert msg.header.frame_id == image.header.frame_id
        assert msg.seq == ecu.seq_of[stamp]
        assert (msg.block_size, msg.rows, msg.cols) == (16, rows, cols)
        assert all(len(a) == rows * cols for a in (msg.dx, msg.dy, msg.unreliable,
                                                     msg.residual))
        field = motion.field_from_msg(msg)
        assert field.key_frame == (msg.seq % GOP == 0)
        if field.key_frame:
            assert field.unreliable.all()
            continue
        inner = (slice(1, -1), slice(1, -1))
        # Within a quarter pixel (blocks at the ROI edge see the other stream's black).
        good = ((abs(field.dx - 4 * STEP) <= 1) & (abs(field.dy) <= 1) & ~field.unreliable)
        assert good[inner].mean() > 0.9, (msg.seq, field.dx, field.dy)


def test_motion_starts_at_a_key_frame_after_a_subscriber_and_obeys_the_switch(ros):
    packets = encode(pan_frames(COUNT))
    ecu = Ecu(ros, motion_subscribed=False)
    for packet in packets[:7]:  # nobody wants motion: none is exported
        ecu.send(packet, ecu.outputs)
    motions = ros.subscribe(SacMotion, "sac/motion")
    ros.wait_for(lambda: ros.node.count_publishers(ros.topic("sac/motion")) >= 1,
                 "the ECU's motion publisher")
    for packet in packets[7:]:
        ecu.send(packet, ecu.outputs)
    ros.wait_for(lambda: len(motions) > 0, "motion once subscribed")
    seqs = sorted(int(m.seq) for m in motions.messages)
    # From the first key frame after the subscription on, every frame; none before.
    assert seqs[0] >= 10 and seqs[0] % GOP == 0, seqs
    assert seqs == list(range(seqs[0], COUNT))


def test_publish_motion_off_publishes_none(ros):
    packets = encode(pan_frames(8))
    ecu = Ecu(ros, params={"publish_motion": False})
    for packet in packets:
        ecu.send(packet, ecu.outputs)
    assert len(ecu.outputs) == 8 and len(ecu.motions) == 0


@pytest.mark.parametrize("segment_every", [1, 3])
def test_perception_publishes_a_class_map_per_frame(ros, segment_every):
    frames = footage(COUNT)
    packets = encode(frames)
    class_maps = ros.subscribe(Image, "sac/perception/class_map")
    perception_stats = ros.subscribe(PerceptionStats, "sac/perception_stats")
    perception = ros.start("sac_perception", {"segment_every": segment_every,
                                              "motion_wait_ms": 200.0})
    ros.wait_discovery(heard_from=[perception_stats])
    ecu = Ecu(ros)
    # Perception started first: only the ECU's own count proves its image writer matched
    # perception's reader (images published before that are lost to perception).
    ros.wait_stats(ecu.stats, lambda m: m.output_readers >= 2, "perception to match the ECU")
    if segment_every > 1:  # the perception node subscribes to motion only to propagate
        ros.wait_for(lambda: ros.node.count_subscribers(ros.topic("sac/motion")) >= 2,
                     "perception's motion subscription")
    stamps = [ecu.send(p, class_maps) for p in packets]
    maps = class_maps.by_stamp()
    assert len(class_maps) == COUNT and set(maps) == set(stamps)
    for msg in maps.values():
        assert (msg.width, msg.height, msg.encoding) == (WIDTH, HEIGHT, "mono8")
    stats = ros.wait_stats(perception_stats, lambda m: m.frames_segmented == COUNT,
                           f"{COUNT} class maps in the perception stats")
    assert stats.frames_segmented == COUNT
    if segment_every == 1:
        assert stats.frames_propagated == 0
        return
    # Key frames (every 5th) and every 3rd frame are segmented in full; the rest are warped.
    assert COUNT // 3 <= stats.frames_propagated < COUNT, stats
    assert ros.wait_for(lambda: "propagated" in perception.stderr(), "the propagation log")
    # Warped maps agree with the network run on the same reconstructed frames.
    from sac_ros.segmentation import load_segmenter

    segmenter = load_segmenter(model="default", backend="auto")
    agreement = [float((segmenter.predict(rh.image_pixels(img)).class_map ==
                        np.frombuffer(bytes(maps[rh.stamp_ns(img.header)].data), np.uint8)
                        .reshape(HEIGHT, WIDTH)).mean())
                 for img in ecu.outputs.messages]
    assert np.mean(agreement) > 0.9, agreement


def test_perception_survives_motion_it_cannot_use(ros):
    """Hostile or mismatched SacMotion: every frame still gets its class map."""
    frames = footage(6)
    class_maps = ros.subscribe(Image, "sac/perception/class_map")
    perception_stats = ros.subscribe(PerceptionStats, "sac/perception_stats")
    perception = ros.start("sac_perception", {"segment_every": 3, "motion_wait_ms": 300.0})
    images = ros.publisher(Image, "sac/image")
    motions = ros.publisher(SacMotion, "sac/motion")
    ros.wait_discovery(publishers=[(images, 1), (motions, 1)], heard_from=[perception_stats])
    rows, cols = motion.grid(WIDTH, HEIGHT)
    for i, rgb in enumerate(frames):
        image = ros.image(rgb)
        field = motion.MotionField.still(rows + (i == 4), cols, key_frame=False)
        field.unreliable[:] = False
        field.residual[:] = 0
        field.seq = i
        if i == 1:
            field.dx[:] = motion.MAX_QUARTER_PEL  # well-formed, absurd: 8192 px
        msg = motion.fill_msg(SacMotion(header=image.header), field)
        if i == 2:
            msg.dx = msg.dx[:-1]  # arrays that do not fit the grid: rejected
        motions.publish(msg)
        ros.send(images, image, class_maps, f"the class map of frame {i}")
    assert len(class_maps) == len(frames)
    ros.wait_for(lambda: "dropping motion message (1 so far)" in perception.stderr(),
                 "the rejected motion in the log")
    # 0 first, 1 warped (to the frame's edge), 2 no usable motion, 3 gap (2's seq is
    # unknown), 4 a grid that is not the image's, 5 warped.
    line = ros.wait_for(lambda: next((x for x in reversed(perception.stderr().splitlines())
                                      if "class maps:" in x and "grid 1" in x), None),
                        "the propagation log line")
    assert "2 propagated, 4 segmented" in line, line
    assert perception.running


def test_perception_follows_a_best_effort_ecu(ros):
    """qos_reliability best_effort: perception hears a best-effort image writer (a
    reliable reader would not match it) and publishes its class maps best effort."""
    from rclpy.qos import qos_profile_sensor_data

    class_maps = rh.Collector()
    ros.node.create_subscription(Image, ros.topic("sac/perception/class_map"), class_maps,
                                 qos_profile_sensor_data)
    perception_stats = ros.subscribe(PerceptionStats, "sac/perception_stats")
    ros.start("sac_perception", {"qos_reliability": "best_effort"})
    images = ros.node.create_publisher(Image, ros.topic("sac/image"), qos_profile_sensor_data)
    ros.wait_discovery(publishers=[(images, 1)], heard_from=[perception_stats])
    ros.wait_for(lambda: ros.node.count_publishers(ros.topic("sac/perception/class_map")) >= 1,
                 "perception's class map writer")
    frames = footage(3)
    for i, rgb in enumerate(frames):  # best effort: a frame may be lost, so each is resent
        image = ros.image(rgb)
        stamp = rh.stamp_ns(image.header)
        for _ in range(5):
            images.publish(image)
            if ros.wait_for(lambda s=stamp: class_maps.receipt_of(s) is not None,
                            f"the class map of frame {i}", timeout=4.0, required=False):
                break
        else:
            raise AssertionError(f"no class map of frame {i} in 5 tries")
    stats = ros.wait_stats(perception_stats, lambda m: m.frames_segmented >= len(frames),
                           "the class maps in the stats")
    assert stats.frames_segmented >= len(frames)


def thread_niceness(pid: int) -> dict[int, int]:
    """Each thread's niceness, from /proc (field 19 of its stat line)."""
    from pathlib import Path

    out = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(task.name)] = int(fields[16])
    return out


def test_perception_cpu_nice_lowers_every_thread(ros):
    """cpu_nice: every thread of the node (DDS's, the executor's, the model's and the
    worker's) runs at that niceness, so a shared CPU serves the coding chain first."""
    class_maps = ros.subscribe(Image, "sac/perception/class_map")
    perception_stats = ros.subscribe(PerceptionStats, "sac/perception_stats")
    perception = ros.start("sac_perception", {"cpu_nice": 7})
    images = ros.publisher(Image, "sac/image")
    ros.wait_discovery(publishers=[(images, 1)], heard_from=[perception_stats])
    ros.send(images, ros.image(footage(1)[0]), class_maps, "a class map")
    niceness = thread_niceness(perception.proc.pid)
    assert len(niceness) > 3 and set(niceness.values()) == {7}, niceness
