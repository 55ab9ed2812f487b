"""Sensor and ECU nodes in their own processes over real Fast DDS (issue 4).

Frames go in lock-step: each one is published after the previous one's packet
(or reconstructed image) came back, so at these low rates nothing can be
superseded and every count is exact.
"""

from __future__ import annotations

import itertools
import sys
import threading
import time

import numpy as np
import pytest
import ros_helpers as rh
from ros_helpers import HEIGHT, WIDTH, drops_of, frame, stamp_ns
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from sac_ros.core.codec import EncoderSettings
from sac_ros.core.mask import pack_blocks
from sac_ros.core.sac import SacEncoder
from sac_ros.msg import SacPacket, SacStats
from sac_ros.nodes.common import NodeStats

GOP = 5
SENSOR = {"gop": GOP, "fps": 10, "preset": "veryfast", "roi_crf": 20.0, "non_roi_crf": 36.0}


class Pipeline:
    """A sensor (and ECU) in ``ros``'s namespace, with the in-test endpoints around them."""

    def __init__(self, ros, sensor_params: dict, ecu: bool = True):
        self.ros = ros
        self.sensor = ros.start("sac_sensor", sensor_params)
        self.images = ros.publisher(Image, "image_raw")
        self.packets = ros.subscribe(SacPacket, "sac/packets")
        self.sensor_stats = ros.subscribe(SacStats, "sac/sensor_stats", 100)
        self.outputs = ros.subscribe(Image, "sac/image")
        self.ecu_stats = ros.subscribe(SacStats, "sac/ecu_stats", 100)
        ros.wait_discovery(publishers=[(self.images, 1)], heard_from=[self.sensor_stats])
        self.ecu = None
        if ecu:
            self.start_ecu()

    def start_ecu(self) -> None:
        self.ecu = self.ros.start("sac_ecu")
        self.ros.wait_discovery(heard_from=[self.ecu_stats])

    def send(self, rgb, reply=None, frame_id: str = "camera") -> int:
        return self.ros.send(self.images, self.ros.image(rgb, frame_id), reply)

    def run_until_output(self, first_index: int, what: str) -> int:
        """Publish frames at up to 10 Hz (each after its packet) until one comes out of
        the ECU, then wait for the last one's output too; returns how many were sent.

        Our endpoints being matched does not prove that the sensor's packet writer has
        matched the ECU's reader: with localhost discovery that took up to a second or
        two longer here. A reconstructed frame proves it; packets sent before reach no
        ECU and are counted nowhere there.
        """
        deadline, sent, stamp = time.monotonic() + rh.DISCOVERY_TIMEOUT, 0, None
        while not len(self.outputs):
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: no reconstructed frame after {sent} frames")
            stamp = self.send(frame(first_index + sent), self.packets)
            sent += 1
            self.ros.wait_for(lambda: len(self.outputs), what, timeout=0.1, required=False)
        # In sync now: the last frame sent comes out too (outputs keep their order).
        if stamp is not None:
            self.ros.wait_for(lambda: self.outputs.receipt_of(stamp),
                              f"{what}: the last output")
        return sent

    def warm_up(self) -> int:
        """Frames through sensor and ECU before a test's own; returns how many."""
        return self.run_until_output(1000, "warm-up")


def test_frames_in_reconstructed_frames_out(ros):
    pipe = Pipeline(ros, SENSOR)
    pipe.warm_up()
    first_output = len(pipe.outputs)
    sent = {}
    for i in range(10):
        rgb = frame(i)
        sent[pipe.send(rgb, pipe.outputs, frame_id="front_camera_optical")] = rgb

    outputs = pipe.outputs.messages[first_output:]
    packets = pipe.packets.by_stamp()
    assert len(outputs) == len(sent)
    assert len({stamp_ns(m.header) for m in outputs}) == len(outputs)  # no duplicates
    roi_psnrs, non_roi_psnrs = [], []
    for out in outputs:
        stamp = stamp_ns(out.header)
        assert stamp in sent, "output stamp matches no input stamp"
        assert out.header.frame_id == "front_camera_optical"
        assert (out.width, out.height) == (WIDTH, HEIGHT)
        decoded = rh.image_pixels(out)
        roi = rh.roi_pixels_of(packets[stamp])
        assert roi.shape == decoded.shape[:2] and roi.any() and not roi.all()
        roi_psnrs.append(rh.psnr(decoded, sent[stamp], roi))
        non_roi_psnrs.append(rh.psnr(decoded, sent[stamp], ~roi))
    assert min(roi_psnrs) > 30.0, roi_psnrs
    # ROI at CRF 20, the rest at 36: the recombination took each block from its stream.
    assert np.mean(roi_psnrs) > np.mean(non_roi_psnrs) + 2.0, (roi_psnrs, non_roi_psnrs)


def test_late_joining_ecu_behind_a_running_sensor(ros):
    pipe = Pipeline(ros, SENSOR, ecu=False)
    for i in range(7):  # the camera runs: seq 0-6, key frames at 0 and 5
        pipe.send(frame(i), pipe.packets)
    pipe.start_ecu()
    # The ECU joins at whatever packet its reader is matched from (seq 7 or later); it
    # may only decode from a key frame on. Run until its first output, then three more.
    pipe.run_until_output(7, "the late-joining ECU")
    for i in range(3):
        pipe.send(frame(100 + i), pipe.outputs)

    packets = pipe.packets.by_stamp()
    seqs = [packets[stamp_ns(m.header)].seq for m in pipe.outputs.messages]
    first = packets[stamp_ns(pipe.outputs.messages[0].header)]
    assert first.roi.key_frame and first.non_roi[0].key_frame and first.seq >= 7
    assert len(seqs) >= 4 and seqs == list(range(first.seq, first.seq + len(seqs)))
    last_out = pipe.outputs.timed()[-1][0]
    stats = ros.wait_stats(pipe.ecu_stats, lambda m: True, "ECU stats", after_ns=last_out)
    drops = drops_of(stats)
    # Joining is not loss: the packets it got before the key frame waited, nothing else.
    assert set(drops) <= {"waiting_for_key_frame"}, drops
    assert stats.received == stats.processed + drops.get("waiting_for_key_frame", 0)
    assert drops.get("waiting_for_key_frame", 0) < GOP
    assert stats.processed == len(seqs)


def _bad_image(ros) -> Image:
    msg = ros.image(frame(0))
    msg.encoding = "32FC1"
    msg.step = WIDTH * 4
    msg.data = bytes(WIDTH * HEIGHT * 4)
    return msg


def test_frame_accounting(ros):
    pipe = Pipeline(ros, SENSOR)
    warm = pipe.warm_up()
    warm_out = ros.wait_for(lambda: pipe.outputs.timed()[-1][0], "warm-up output time")
    # Baselines once the warm-up frames are through both nodes.
    s0 = ros.wait_stats(pipe.sensor_stats, lambda m: m.received == warm and
                        m.processed + m.dropped == warm, "sensor stats after the warm-up")
    e0 = ros.wait_stats(pipe.ecu_stats, lambda m: True, "ECU stats after the warm-up",
                        after_ns=warm_out)
    outputs0, packets0 = len(pipe.outputs), len(pipe.packets)

    published, bad = 0, 0
    for i in range(9):
        if i in (3, 6):  # a frame the sensor must drop, and count
            pipe.ros.send(pipe.images, _bad_image(ros))
            published, bad = published + 1, bad + 1
            ros.wait_stats(pipe.sensor_stats, lambda m, n=bad: m.dropped == s0.dropped + n,
                           "the sensor to count the bad frame")
        pipe.send(frame(i), pipe.outputs)
        published += 1
    last_out = pipe.outputs.timed()[-1][0]

    s1 = ros.wait_stats(pipe.sensor_stats, lambda m: m.received == s0.received + published
                        and m.processed + m.dropped == m.received, "final sensor stats")
    e1 = ros.wait_stats(pipe.ecu_stats, lambda m: True, "final ECU stats", after_ns=last_out)
    for stats in (s0, s1, e0, e1):
        assert stats.dropped == sum(drops_of(stats).values())

    received = s1.received - s0.received
    processed = s1.processed - s0.processed
    sensor_drops = {k: v - drops_of(s0).get(k, 0) for k, v in drops_of(s1).items()}
    sensor_drops = {k: v for k, v in sensor_drops.items() if v}
    decoded = e1.processed - e0.processed
    ecu_dropped = e1.dropped - e0.dropped
    assert received == published
    assert processed + sum(sensor_drops.values()) == received
    assert sensor_drops == {"bad_image": bad}
    assert len(pipe.packets) - packets0 == processed
    assert e1.received - e0.received == processed
    assert decoded + ecu_dropped == processed
    assert len(pipe.outputs) - outputs0 == decoded
    # Published frames = decoded frames + counted drops, end to end.
    assert published == decoded + sum(sensor_drops.values()) + ecu_dropped
    assert e1.node.endswith("/sac_ecu") and s1.node.endswith("/sac_sensor")
    assert e1.kbytes_per_frame > 0 and s1.kbytes_per_frame > 0


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_packet_bytes_match_offline_core(ros, codec):
    params = {**SENSOR, "codec": codec, "roi_crf": 24.0, "non_roi_crf": 33.0}
    pipe = Pipeline(ros, params, ecu=False)
    frames = [frame(i) for i in range(12)]
    for rgb in frames:
        pipe.send(rgb, pipe.packets)
    packets = pipe.packets.messages
    assert len(packets) == len(frames)

    settings = EncoderSettings(codec, params["preset"], params["gop"], 0, params["fps"])
    encoder = SacEncoder(WIDTH, HEIGHT, params["roi_crf"], params["non_roi_crf"], settings,
                         "dual_crf")
    try:
        offline = [encoder.encode(rgb, rh.polygon_blocks(rgb))
                   for rgb in frames]
    finally:
        encoder.close()

    for msg, ref in zip(packets, offline, strict=True):
        assert msg.seq == ref.seq
        assert (msg.mode, msg.width, msg.height) == ("dual_crf", WIDTH, HEIGHT)
        assert bytes(msg.roi_mask) == pack_blocks(ref.blocks())
        assert msg.roi.codec == codec and len(msg.non_roi) == 1
        assert msg.roi.key_frame == ref.roi.key_frame == msg.non_roi[0].key_frame
        assert (msg.roi.crf, msg.non_roi[0].crf) == (params["roi_crf"], params["non_roi_crf"])
    assert [m.roi.key_frame for m in packets] == [i % GOP == 0 for i in range(len(frames))]
    node_bytes = sum(len(m.roi.data) + len(m.non_roi[0].data) for m in packets)
    core_bytes = sum(p.num_bytes for p in offline)
    assert node_bytes == pytest.approx(core_bytes, rel=0.02)


def test_stats_messages_consistent_while_a_worker_counts():
    """NodeStats is read by the stats timer while the encode worker thread updates it."""
    stats, stop, reasons = NodeStats(), threading.Event(), itertools.count()

    def worker():
        while not stop.is_set():
            stats.done(1000, 5.0)
            stats.drop(f"reason_{next(reasons) % 400}")  # new reasons keep appearing

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often: make any race show up quickly
    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        deadline, checked = time.monotonic() + 1.5, 0
        while time.monotonic() < deadline:
            msg = stats.to_msg("/cam/sac_sensor", Header())
            assert len(msg.drop_reasons) == len(msg.drop_counts)
            assert msg.dropped == sum(msg.drop_counts)
            checked += 1
    finally:
        stop.set()
        thread.join()
        sys.setswitchinterval(interval)
    assert checked > 10
