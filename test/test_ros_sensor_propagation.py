"""sac_sensor with the model mask and segment_every (issue 16 items 3, 4), over real DDS.

The same real frames go to a sensor segmenting every frame, then to one segmenting every
third frame and the key frames (mask carried along the motion, then held still): each
delivers a decodable packet for every frame, and the carried masks (publish_mask) stay
close to the per-frame ones.
"""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import ros_helpers as rh
from sensor_msgs.msg import Image

from sac_ros.config import load_core_config
from sac_ros.core.io import load_clip
from sac_ros.core.metrics import binary_iou
from sac_ros.core.sac import SacDecoder
from sac_ros.core.wire import packet_from_msg
from sac_ros.msg import SacPacket, SacStats
from sac_ros.segmentation import load_segmenter
from sac_ros.segmentation.propagation import PropagatingSegmenter

GOP, FRAMES, EVERY = 5, 14, 3  # key frames 0, 5, 10: off the every-3rd rhythm
WIDTH, HEIGHT = 480, 270  # real footage at half size: a partial edge block row (270 / 16)


@pytest.fixture(scope="module")
def footage() -> list[np.ndarray]:
    clip = load_clip("sample:project_video01", 0, FRAMES)
    return [np.ascontiguousarray(frame[::2, ::2]) for frame in clip.frames]  # 960x540 -> half


@pytest.fixture(scope="module")
def expected(footage) -> dict[int | str, list[np.ndarray]]:
    """The masks the sensor should publish, from the same model and schedule in-process."""
    hold = load_core_config().mask.hysteresis_frames
    segmenter = load_segmenter(model="default")
    try:
        masks = {}
        for key, every, carry in ((1, 1, "motion"), (EVERY, EVERY, "motion"),
                                  ("still", EVERY, "still")):
            source = PropagatingSegmenter(segmenter, every, hold, carry=carry)
            masks[key] = [source.block_roi(rgb, key_frame=i % GOP == 0)
                          for i, rgb in enumerate(footage)]
        return masks
    finally:
        segmenter.close()


def run_sensor(ros, footage, segment_every: int,
               carry: str = "motion") -> tuple[list[SacPacket], list[Image]]:
    """Start a model-mask sensor, send every frame lock-step, and return its packets and
    masks in frame order; the sensor is stopped afterwards."""
    node = ros.start("sac_sensor", {"mask_source": "model", "segment_every": segment_every,
                                    "mask_carry": carry, "publish_mask": True, "gop": GOP,
                                    "fps": 10, "frame_size": [WIDTH, HEIGHT]})
    images = ros.publisher(Image, "image_raw")
    packets = ros.subscribe(SacPacket, "sac/packets")
    masks = ros.subscribe(Image, "sac/roi_mask")
    stats = ros.subscribe(SacStats, "sac/sensor_stats", 100)
    ros.wait_discovery(publishers=[(images, 1)], heard_from=[stats])
    stamps = []
    for rgb in footage:
        stamp = ros.send(images, ros.image(rgb), packets)
        ros.wait_for(lambda s=stamp: s in masks.by_stamp(), f"the mask of frame {stamp}")
        stamps.append(stamp)
    assert node.running
    final = ros.wait_stats(stats, lambda m: m.processed >= len(footage), "the sensor's stats")
    assert final.received == final.processed == len(footage)
    assert final.dropped == 0 and rh.drops_of(final) == {}
    assert ros.get_parameters("sac_sensor", "segment_every") == [segment_every]
    assert node.stop() == 0
    every = "every frame" if segment_every == 1 else f"every {segment_every} frames"
    assert f"mask from sac_roi_default.onnx on onnxruntime, segmented {every}" in node.stderr()
    ros.children.remove(node)  # stopped on purpose: not a death the next run should report
    by_stamp, mask_by_stamp = packets.by_stamp(), masks.by_stamp()
    return [by_stamp[s] for s in stamps], [mask_by_stamp[s] for s in stamps]


def decoded_all(packets: list[SacPacket]) -> list[np.ndarray]:
    decoder = SacDecoder()
    try:
        frames = [decoder.decode(packet_from_msg(m, require_e2e=True).packet) for m in packets]
    finally:
        decoder.close()
    assert all(f is not None for f in frames), [f is None for f in frames]
    return [f.blocks for f in frames]


def mask_blocks(msg: Image) -> np.ndarray:
    assert msg.encoding == "mono8" and msg.step == msg.width
    pixels = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.width)
    return pixels[::16, ::16] > 0


def differing(a, b) -> int:
    """Blocks that differ between two stacks of masks."""
    return int((np.asarray(a) != np.asarray(b)).sum())


def test_segment_every_delivers_every_frame_with_masks_close_to_per_frame(ros, footage,
                                                                           expected):
    # the premise: carrying changes some blocks on this footage (26 of 7140 when written),
    # so a sensor that ignored segment_every would be caught below
    schedules_differ = differing(expected[1], expected[EVERY])
    assert schedules_differ >= 10
    runs = {1: run_sensor(ros, footage, 1), EVERY: run_sensor(ros, footage, EVERY),
            "still": run_sensor(ros, footage, EVERY, "still")}
    published = {}
    for run, (packets, masks) in runs.items():
        assert [p.seq for p in packets] == list(range(FRAMES))
        assert [p.roi.key_frame for p in packets] == [i % GOP == 0 for i in range(FRAMES)]
        blocks = decoded_all(packets)  # every packet decodes, in order, from the first
        published[run] = np.stack([mask_blocks(m) for m in masks])
        # the published mask is the one the frame was coded with
        assert np.array_equal(published[run], np.stack(blocks))
        # and the one its schedule gives: key frames and every N-th frame segmented (ONNX
        # Runtime in another process might round a borderline block the other way)
        assert differing(published[run], expected[run]) <= schedules_differ // 4
    reference = published[1]
    assert 0.05 < reference.mean() < 0.95  # a real mask, neither empty nor full
    assert binary_iou(reference, published[EVERY]) > 0.95, binary_iou(reference,
                                                                       published[EVERY])
    assert np.array_equal(reference[0], published[EVERY][0])  # a key frame: segmented
    assert binary_iou(reference, published["still"]) > 0.95


def test_segment_every_defaults_to_sac_yaml_and_refuses_zero(ros, tmp_path):
    """The defaults' one home is config/sac.yaml mask.segment_every / mask.carry (as sac
    eval's); segment_every 0 is a one-line start-up error naming the parameter."""
    ros.start("sac_sensor")
    mask = load_core_config().mask
    assert ros.get_parameters("sac_sensor", "segment_every", "mask_carry") == [
        mask.segment_every, mask.carry]
    domain, namespace = rh.unique_ids()
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain),
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_LOG_DIR": str(tmp_path / "log")}
    result = subprocess.run(
        [sys.executable, "-m", rh.EXECUTABLES["sac_sensor"], "--ros-args", "-r",
         f"__ns:={namespace}", "-p", "mask_source:=model", "-p", "segment_every:=0"],
        env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode not in (0, None), result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sac_sensor: error: "), result.stderr
    assert "segment_every" in lines[0], lines[0]
