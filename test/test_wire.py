"""The wire module (bounds, E2E CRC) and the ECU's packet path without ROS (order, accounting).

Messages here are plain namespaces with the fields of msg/SacPacket.msg, built by the
same ``wire.packet_to_msg`` the sensor uses; test_ros_ecu.py runs the rclpy classes over
real DDS and test_fuzz.py throws hostile packets at all of it.
"""

from __future__ import annotations

import copy
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
from conftest import textured

from sac_ros.core import wire
from sac_ros.core.codec import EncoderSettings
from sac_ros.core.errors import PacketError
from sac_ros.core.receiver import PacketReceiver
from sac_ros.core.sac import SacDecoder, SacEncoder

WIDTH, HEIGHT, GOP = 96, 64, 5
BASE_NS = 1_700_000_000_000_000_000


def header(index: int, frame_id: str = "camera"):
    ns = BASE_NS + index * 33_000_000
    return SimpleNamespace(stamp=SimpleNamespace(sec=ns // 10**9, nanosec=ns % 10**9),
                           frame_id=frame_id)


def to_msg(packet, index: int | None = None):
    index = packet.seq if index is None else index
    return wire.packet_to_msg(packet, header(index), SimpleNamespace, SimpleNamespace)


@pytest.fixture(scope="module")
def coded():
    frames = [textured(HEIGHT, WIDTH, t / 3) for t in range(20)]
    blocks = np.zeros((HEIGHT // 16, WIDTH // 16), bool)
    blocks[2:, :] = True
    encoder = SacEncoder(WIDTH, HEIGHT, 20, 34, EncoderSettings(gop=GOP, preset="ultrafast"))
    try:
        packets = [encoder.encode(f, blocks) for f in frames]
    finally:
        encoder.close()
    reference = SacDecoder()
    try:
        decoded = [reference.decode(p).rgb.copy() for p in packets]
    finally:
        reference.close()
    return packets, decoded


# ------------------------------------------------------------------ wire

def test_round_trip_keeps_every_field(coded):
    packets, _ = coded
    msg = to_msg(packets[3])
    received = wire.packet_from_msg(msg, require_e2e=True)
    assert received.e2e == "ok"
    assert received.stamp_ns == BASE_NS + 3 * 33_000_000
    back = received.packet
    for name in ("seq", "mode", "width", "height", "block_size", "block_rows", "block_cols",
                 "roi_mask", "roi", "non_roi"):
        assert getattr(back, name) == getattr(packets[3], name), name


@pytest.mark.parametrize("change", [
    lambda m: setattr(m.header.stamp, "nanosec", m.header.stamp.nanosec + 1),
    lambda m: setattr(m.header, "frame_id", "camerb"),
    lambda m: setattr(m, "seq", m.seq + 1),
    lambda m: setattr(m, "encode_ms", m.encode_ms + 1.0),
    lambda m: setattr(m.roi, "crf", 21.0),
    lambda m: setattr(m.roi, "key_frame", not m.roi.key_frame),
    lambda m: setattr(m.non_roi[0], "codec", "hevc"),
    lambda m: setattr(m, "roi_mask", bytes([m.roi_mask[0] ^ 1]) + m.roi_mask[1:]),
    lambda m: setattr(m.non_roi[0], "data", m.non_roi[0].data[:-1] + b"\0"),
    # ROI and non-ROI swapped: every byte is still there, in the wrong place.
    lambda m: (setattr(m, "roi", m.non_roi[0]), setattr(m, "non_roi", [m.roi])),
], ids=["stamp", "frame_id", "seq", "timing", "crf", "key_flag", "codec", "mask", "payload",
        "swapped"])
def test_any_changed_field_is_corrupt(coded, change):
    msg = copy.deepcopy(to_msg(coded[0][3]))
    change(msg)
    with pytest.raises(PacketError) as err:
        wire.packet_from_msg(msg)
    assert err.value.reason == "corrupt"


def test_a_message_without_the_checksum_is_absent_or_refused(coded):
    msg = to_msg(coded[0][0])
    # A message recorded with the definition from before the checksum has no such fields.
    old = SimpleNamespace(**{k: v for k, v in vars(msg).items()
                             if k not in ("e2e_profile", "e2e_crc")})
    assert wire.packet_from_msg(old).e2e == "absent"
    with pytest.raises(PacketError) as err:
        wire.packet_from_msg(old, require_e2e=True)
    assert err.value.reason == "unprotected"


@pytest.mark.parametrize("fields, words", [
    ({"width": 1 << 20, "height": 1 << 16, "block_size": 65534}, "frame size"),
    ({"block_size": 0}, "block size 0"),
    ({"block_size": 17}, "block size 17"),
    ({"block_rows": 5}, "block grid"),
    ({"mode": "x" * 1000}, "mode has 1000"),
    ({"mode": "uniform"}, "mode uniform with 2 streams"),
    ({"roi_mask": b"\xff"}, "ROI mask has 1 bytes"),
])
def test_bounds_are_checked_before_anything_is_allocated(coded, fields, words):
    msg = to_msg(coded[0][1])
    for key, value in fields.items():
        setattr(msg, key, value)
    msg.e2e_crc = wire.e2e_crc(msg)  # a sender that signs nonsense: still refused
    with pytest.raises(PacketError) as err:
        wire.packet_from_msg(msg)
    assert err.value.reason == "malformed" and words in str(err.value)


@pytest.mark.parametrize("crf", [float("nan"), float("inf"), -1.0, 52.0])
def test_crf_must_be_finite_and_in_range(coded, crf):
    msg = to_msg(coded[0][1])
    msg.roi.crf = crf
    msg.e2e_crc = wire.e2e_crc(msg)
    with pytest.raises(PacketError, match="CRF"):
        wire.packet_from_msg(msg)


def test_the_decoder_guards_itself_without_the_wire(coded):
    """Core packets from anywhere (not only the wire) are bounded before allocation."""
    decoder = SacDecoder()
    try:
        for change in ({"block_size": 0}, {"width": 1 << 20, "height": 1 << 16,
                                           "block_size": 65534}, {"seq": 2**64}):
            with pytest.raises(PacketError):
                decoder.decode(dataclasses.replace(coded[0][0], **change))
        assert decoder.decode(coded[0][0]) is not None  # and it still works
    finally:
        decoder.close()


def test_saturate_u64():
    assert wire.saturate_u64(2**70) == 2**64 - 1
    assert wire.saturate_u64(-3) == 0
    assert wire.saturate_u64(12) == 12


# ------------------------------------------------------------------ receiver

def run(receiver, msgs, now_ns=0):
    out = []
    for msg in msgs:
        out += receiver.push(msg, now_ns)
    return out


def seqs(delivered):
    return [d.received.packet.seq for d in delivered]


def test_in_order_packets_are_delivered_at_once_and_bit_exact(coded):
    packets, decoded = coded
    receiver = PacketReceiver()
    for packet in packets:
        out = receiver.push(to_msg(packet), 0)
        assert seqs(out) == [packet.seq]  # no added latency without reordering
        assert np.array_equal(out[0].frame.rgb, decoded[packet.seq])
    assert receiver.balanced() and receiver.delivered == len(packets)


def test_a_gap_that_outlives_the_window_is_lost_then_a_late_packet_is_late(coded):
    packets, _ = coded
    receiver = PacketReceiver(reorder_window=2)
    msgs = [to_msg(p) for p in packets[:12]]
    out = run(receiver, msgs[:3] + msgs[4:6])     # seq 3 missing: 4 and 5 wait
    assert seqs(out) == [0, 1, 2] and receiver.pending == 2
    out += run(receiver, [msgs[6]])               # a third one: the window is full
    assert receiver.drops["lost"] == 1 and receiver.pending == 0
    out += run(receiver, [msgs[3]])               # too late now
    out += run(receiver, msgs[7:12])
    assert receiver.drops["lost"] == 0 and receiver.drops["late"] == 1
    # 4 needs 3: it and the rest of the GOP wait for key frame 5... and 10.
    assert seqs(out) == [0, 1, 2, 5, 6, 7, 8, 9, 10, 11]
    assert receiver.drops["waiting_for_key_frame"] == 1
    assert receiver.balanced()


def test_the_hold_time_releases_a_gap_without_more_packets(coded):
    packets, _ = coded
    receiver = PacketReceiver(reorder_window=5, max_hold_ms=50)
    out = run(receiver, [to_msg(p) for p in (packets[0], packets[2])], now_ns=0)
    assert seqs(out) == [0] and receiver.pending == 1
    assert receiver.poll(now_ns=10_000_000) == []                # 10 ms: still waiting
    released = receiver.poll(now_ns=60_000_000)                   # 60 ms: given up
    assert released == [] and receiver.drops == {"lost": 1, "waiting_for_key_frame": 1}
    assert receiver.balanced()


def test_a_restarted_sensor_is_followed_and_a_replay_is_not(coded):
    packets, decoded = coded
    receiver = PacketReceiver()
    run(receiver, [to_msg(dataclasses.replace(p, seq=p.seq + 5000), index=p.seq)
                   for p in packets[:10]])
    # Replay of an old packet (old stamp, far-behind seq): stale, not a restart.
    replay = to_msg(dataclasses.replace(packets[0], seq=7), index=0)
    assert run(receiver, [replay]) == [] and receiver.drops["stale"] == 1
    # The sensor restarted: seq from 0 again, stamps newer than anything delivered.
    out = run(receiver, [to_msg(p, index=100 + p.seq) for p in packets[:5]])
    assert seqs(out) == [0, 1, 2, 3, 4] and receiver.resyncs == 1
    assert np.array_equal(out[0].frame.rgb, decoded[0])
    assert receiver.balanced()


def test_flush_releases_what_is_held(coded):
    packets, _ = coded
    receiver = PacketReceiver(reorder_window=8)
    run(receiver, [to_msg(p) for p in (packets[0], packets[5], packets[6])])
    assert receiver.pending == 2
    assert seqs(receiver.flush()) == [5, 6]
    assert receiver.drops == {"lost": 4} and receiver.balanced()


def test_a_jump_the_stamps_cannot_explain_is_a_resync_not_a_loss(coded):
    packets, _ = coded
    receiver = PacketReceiver()
    run(receiver, [to_msg(p) for p in packets[:5]])
    # 2000 numbers ahead 33 ms later: no sender is that fast, so no 2000 packets were lost.
    out = run(receiver, [to_msg(dataclasses.replace(p, seq=p.seq + 2000), index=p.seq)
                         for p in packets[5:10]])
    assert seqs(out) == [2005, 2006, 2007, 2008, 2009] and receiver.resyncs == 1
    assert "lost" not in receiver.drops and receiver.balanced()
    # 50 ahead: a real gap (dropped on the link), counted as lost.
    out = run(receiver, [to_msg(dataclasses.replace(p, seq=p.seq + 2050), index=p.seq + 50)
                         for p in packets[10:15]])
    assert seqs(out) == [2060, 2061, 2062, 2063, 2064] and receiver.drops["lost"] == 50
