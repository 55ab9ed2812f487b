"""The ECU node on its own, fed with packets encoded in the test (real Fast DDS, issue 4).

Packets come from the core SacEncoder (GOP 5: key frames at seq 0, 5, 10, 15) and are
published straight to a running ECU, so which packets it sees, in which order and
in which state, is decided by the test.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import ros_helpers as rh
from ros_helpers import HEIGHT, WIDTH, drops_of, frame
from sensor_msgs.msg import Image

from sac_ros.core.codec import EncoderSettings
from sac_ros.core.sac import SacDecoder, SacEncoder
from sac_ros.msg import SacPacket, SacStats

GOP = 5
COUNT = 20


@pytest.fixture(scope="module")
def encoded():
    """(frames, core SacPackets) of a 20-frame clip, dual CRF, GOP 5."""
    frames = [frame(i) for i in range(COUNT)]
    encoder = SacEncoder(WIDTH, HEIGHT, 20.0, 34.0, EncoderSettings("h264", "veryfast", GOP))
    try:
        packets = [encoder.encode(rgb, rh.polygon_blocks(rgb))
                   for rgb in frames]
    finally:
        encoder.close()
    assert [p.key_frame for p in packets] == [i % GOP == 0 for i in range(COUNT)]
    return frames, packets


class Ecu:
    """A running ECU with our packet publisher, output and stats subscriptions."""

    def __init__(self, ros, before_start=None, params=None):
        self.ros = ros
        self.packets = ros.publisher(SacPacket, "sac/packets", depth=50)
        self.outputs = ros.subscribe(Image, "sac/image")
        self.stats = ros.subscribe(SacStats, "sac/ecu_stats")
        self.sent: dict[int, int] = {}  # header stamp -> seq
        if before_start:
            before_start(self)
        self.node = ros.start("sac_ecu", params)
        ros.wait_discovery(publishers=[(self.packets, 1)], heard_from=[self.stats])

    def send(self, packet, expect_output: bool, msg=None) -> int:
        """Publish a packet (or a doctored message of it); wait for its output if expected."""
        msg = msg if msg is not None else self.ros.packet_msg(packet)
        stamp = self.ros.send(self.packets, msg, self.outputs if expect_output else None,
                              f"the reconstructed frame of packet {msg.seq}")
        self.sent[stamp] = int(msg.seq)
        return stamp

    def output_seqs(self) -> list[int]:
        return [self.sent[rh.stamp_ns(m.header)] for m in self.outputs.messages]

    def final_stats(self, received: int) -> SacStats:
        stats = self.ros.wait_stats(self.stats, lambda m: m.received == received,
                                    f"ECU stats with {received} packets received")
        assert stats.dropped == sum(drops_of(stats).values())
        return stats


def test_late_joining_ecu_starts_at_a_key_frame(ros, encoded):
    frames, packets = encoded

    def stream_already_running(ecu):  # seq 0-6 go out before the ECU exists
        for packet in packets[:7]:
            ecu.send(packet, expect_output=False)

    ecu = Ecu(ros, before_start=stream_already_running)
    for packet in packets[7:17]:
        ecu.send(packet, expect_output=packet.seq >= 10)

    assert ecu.output_seqs() == list(range(10, 17))
    first = ecu.outputs.messages[0]
    assert packets[ecu.sent[rh.stamp_ns(first.header)]].key_frame
    decoded = rh.image_pixels(first)
    assert rh.psnr(decoded, frames[10], rh.roi_pixels_of(packets[10])) > 30.0
    stats = ecu.final_stats(received=10)
    # Joining late is not loss: nothing counted as lost, the non-key packets waited.
    assert drops_of(stats) == {"waiting_for_key_frame": 3}
    assert stats.processed == 7


def test_lost_packet_recovers_at_next_key_frame(ros, encoded):
    frames, packets = encoded
    ecu = Ecu(ros)
    for packet in packets[:15]:
        if packet.seq == 7:
            continue  # lost on the way
        ecu.send(packet, expect_output=packet.seq < 7 or packet.seq >= 10)

    assert ecu.output_seqs() == [*range(0, 7), *range(10, 15)]
    by_seq = {seq: rh.image_pixels(m) for seq, m in zip(ecu.output_seqs(),
                                                        ecu.outputs.messages, strict=True)}
    # Resumed with the right picture (the previous frame would score about 26 dB).
    assert rh.psnr(by_seq[10], frames[10], rh.roi_pixels_of(packets[10])) > 30.0
    stats = ecu.final_stats(received=14)
    assert drops_of(stats) == {"lost": 1, "waiting_for_key_frame": 2}
    assert stats.processed == 12


def _garbage(size: int) -> bytes:
    return np.random.default_rng(7).integers(0, 256, size, dtype=np.uint8).tobytes()


def test_malformed_packets_are_counted_and_survived(ros, encoded):
    frames, packets = encoded
    ecu = Ecu(ros)

    def doctored(seq: int, change):
        msg = ros.packet_msg(packets[seq])
        change(msg)
        return msg

    def bad_grid(msg):
        msg.block_rows += 1  # block grid does not fit width x height

    def short_mask(msg):
        msg.roi_mask = bytes(msg.roi_mask)[:-1]

    def unknown_codec(msg):
        msg.roi.codec = "vp9"

    corrupt_key = dataclasses.replace(packets[10], roi=dataclasses.replace(
        packets[10].roi, data=_garbage(len(packets[10].roi.data))))
    # The premise: the core decoder cannot decode this key frame.
    probe = SacDecoder()
    try:
        assert probe.decode(packets[9]) is None  # not synced yet
        assert probe.decode(corrupt_key) is None
        assert probe.last_drop_reason.startswith("decode_error")
    finally:
        probe.close()

    for packet in packets[:5]:
        ecu.send(packet, expect_output=True)
    ecu.send(None, False, doctored(5, bad_grid))
    ecu.send(None, False, doctored(6, short_mask))
    ecu.send(None, False, doctored(7, unknown_codec))
    for packet in packets[8:10]:  # decodable only with the references the ECU skipped
        ecu.send(packet, expect_output=False)
    ecu.send(corrupt_key, expect_output=False)
    for packet in packets[11:18]:
        ecu.send(packet, expect_output=packet.seq >= 15)

    assert ecu.node.running
    assert ecu.output_seqs() == [0, 1, 2, 3, 4, 15, 16, 17]
    decoded = rh.image_pixels(ecu.outputs.messages[5])
    assert rh.psnr(decoded, frames[15], rh.roi_pixels_of(packets[15])) > 30.0
    stats = ecu.final_stats(received=18)
    assert drops_of(stats) == {"malformed": 3, "decode_error": 1, "waiting_for_key_frame": 6}
    assert stats.processed == 8
    assert ecu.node.stop() == 0  # a clean shutdown, too
    log = ecu.node.stderr()
    assert "Traceback" not in log
    assert "block grid" in log and "decode_error" in log


# ------------------------------------------------------------ E2E protection and order
# A long hold: on a busy machine the next packet may take a while, and these tests are
# about order, not about the timeout.
PATIENT = {"reorder_max_hold_ms": 2000.0}


def test_reordered_packets_are_put_back_in_order(ros, encoded):
    frames, packets = encoded
    ecu = Ecu(ros, params=PATIENT)
    order = [0, 1, 3, 2, 4, 5, 6, 7, 9, 8]
    for seq in order:
        ecu.send(packets[seq], expect_output=seq not in (3, 9))
    ecu.ros.wait_for(lambda: len(ecu.outputs) == 10, "all ten frames")

    assert ecu.output_seqs() == list(range(10))  # in sequence order, every one
    for msg, seq in zip(ecu.outputs.messages, range(10), strict=True):
        assert rh.psnr(rh.image_pixels(msg), frames[seq], rh.roi_pixels_of(packets[seq])) > 30
    stats = ecu.final_stats(received=10)
    assert drops_of(stats) == {} and stats.processed == 10  # 10 in = 10 out + 0 drops


def test_duplicates_are_dropped_not_counted_as_gaps(ros, encoded):
    frames, packets = encoded
    ecu = Ecu(ros, params=PATIENT)
    for seq in [0, 1, 1, 2, 3, 3, 4, 5, 6]:  # two duplicates inside one GOP
        first_time = seq not in ecu.sent.values()
        ecu.send(packets[seq], expect_output=first_time)
    ecu.ros.wait_for(lambda: len(ecu.outputs) == 7, "seven frames")

    assert ecu.output_seqs() == list(range(7))
    stats = ecu.final_stats(received=9)
    # 9 in = 7 out + 2 duplicates; no frame of the GOP was lost to them.
    assert drops_of(stats) == {"duplicate": 2} and stats.processed == 7


def _flip(data, index: int) -> bytes:
    out = bytearray(bytes(data))
    out[index] ^= 0x5A
    return bytes(out)


def test_corrupt_and_unprotected_packets_are_never_published(ros, encoded):
    frames, packets = encoded
    ecu = Ecu(ros, params=PATIENT)
    for packet in packets[:5]:
        ecu.send(packet, expect_output=True)
    # Key frame 5 damaged on the way (one byte of its ROI stream), its CRC not re-made.
    damaged = ros.packet_msg(packets[5])
    damaged.roi.data = _flip(damaged.roi.data, len(damaged.roi.data) // 2)
    ecu.send(None, False, damaged)
    for packet in packets[6:10]:
        ecu.send(packet, expect_output=False)  # need the key frame that was dropped
    # A packet from a sender without E2E protection: refused by default.
    unprotected = ros.packet_msg(packets[10])
    unprotected.e2e_profile = 0
    ecu.send(None, False, unprotected)
    # A valid packet with an absurd sequence number: must not break the stats publisher.
    huge = ros.packet_msg(dataclasses.replace(packets[11], seq=2**64 - 1))
    ecu.send(None, False, huge)
    stats = ecu.final_stats(received=12)

    assert ecu.output_seqs() == list(range(5))  # nothing damaged went out
    drops = drops_of(stats)
    assert drops["corrupt"] == 1 and drops["unprotected"] == 1
    assert ecu.node.running
    # The stats keep coming after the seq 2**64-1 packet, which is followed as a sender
    # that lost its count (a resync), not counted as 2**64 lost packets.
    # 6-9 needed key frame 5; the huge one is held (reorder window), then taken as the
    # start of a new stream, which decodes from its next key frame.
    later = ecu.ros.wait_stats(
        ecu.stats, lambda m: m.received == 12 and drops_of(m).get("waiting_for_key_frame") == 5,
        "stats after the huge sequence number", after_ns=rh.stamp_ns(huge.header))
    assert drops_of(later).get("lost", 0) == 0 and later.dropped == 7
    assert ecu.node.stop() == 0
    assert "Traceback" not in ecu.node.stderr()


def test_whole_numbers_are_taken_for_double_parameters(ros):
    """-p reorder_max_hold_ms:=50 (an INTEGER to rclpy) sets the DOUBLE parameter to 50.0."""
    Ecu(ros, params={"reorder_max_hold_ms": 50})
    assert ros.get_parameters("sac_ecu", "reorder_max_hold_ms") == [50.0]
