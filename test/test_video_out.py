"""The standard video out without ROS: the sensor's streams are what Foxglove needs
(Annex B, parameter sets in every key frame), and the ECU's re-encoder keeps its key
frames on the sensor's (issue 18)."""

from __future__ import annotations

import av
import numpy as np
import pytest

from sac_ros.core.annexb import (
    entry_point,
    foxglove_format,
    has_parameter_sets,
    is_annexb,
    is_key_frame,
    nal_types,
)
from sac_ros.core.codec import EncoderSettings
from sac_ros.core.errors import SacError
from sac_ros.core.reencode import Reencoder
from sac_ros.core.sac import SacEncoder

GOP = 4


def textured(index: int, width: int = 250, height: int = 142) -> np.ndarray:
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 128 + 60 * np.sin(x / 7.0 + 0.4 * index) + 30 * np.cos(y / 5.0)
    g = 128 + 50 * np.cos(x / 11.0 - y / 9.0 + 0.4 * index)
    b = 100 + 80 * np.sin((x + y) / 13.0)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("codec", ["h264", "hevc"])
@pytest.mark.parametrize("mode", ["uniform", "roi_qp"])
def test_single_stream_modes_repeat_parameter_sets_at_every_key_frame(codec, mode):
    encoder = SacEncoder(250, 142, 23.0, 32.0, EncoderSettings(codec, "veryfast", GOP), mode)
    blocks = np.zeros((9, 16), bool)
    blocks[5:] = True
    packets = [encoder.encode(textured(i), blocks) for i in range(2 * GOP + 1)]
    for index, packet in enumerate(packets):
        data = packet.roi.data
        key = index % GOP == 0
        assert is_annexb(data)
        assert is_key_frame(data, codec) == key == packet.key_frame, (index, nal_types(data, codec))
        assert has_parameter_sets(data, codec) == key
        assert entry_point(data, codec) == key
    # A decoder that joins at the second key frame decodes every frame from there on.
    decoder = av.CodecContext.create(codec, "r")
    for packet in packets[GOP:]:
        assert len(decoder.decode(av.Packet(packet.roi.data))) == 1


def test_nal_parsing_on_hand_made_units():
    sps, pps, idr, p_slice = (b"\x00\x00\x00\x01\x67\x42", b"\x00\x00\x01\x68\xce",
                              b"\x00\x00\x01\x65\x88", b"\x00\x00\x00\x01\x41\x9a")
    assert nal_types(sps + pps + idr, "h264") == [7, 8, 5]
    assert entry_point(sps + pps + idr, "x264")
    assert not entry_point(idr, "h264")            # a key frame without its SPS/PPS
    assert not entry_point(p_slice, "h264")
    assert not is_annexb(b"\x00\x00\x00\x05\x65\x88\x84\x00\x00")  # AVCC length prefix
    vps, hsps, hpps, cra = (b"\x00\x00\x01\x40\x01", b"\x00\x00\x01\x42\x01",
                            b"\x00\x00\x01\x44\x01", b"\x00\x00\x01\x2a\x01")
    assert nal_types(vps + hsps + hpps + cra, "hevc") == [32, 33, 34, 21]
    assert entry_point(vps + hsps + hpps + cra, "h265")  # CRA is a random access point
    assert not entry_point(hsps + hpps + cra, "hevc")    # no VPS
    assert nal_types(b"\x00\x00\x01", "h264") == []       # a start code and nothing
    assert foxglove_format("hevc") == "h265" and foxglove_format("x264") == "h264"
    with pytest.raises(SacError):
        foxglove_format("vp9")


def reencode(reencoder: Reencoder, seqs, sensor_gop: int) -> list[tuple[int, bytes]]:
    return [(seq, reencoder.encode(textured(seq), seq, seq % sensor_gop == 0)) for seq in seqs]


def test_reencoder_follows_the_sensors_key_frames_after_a_loss():
    reencoder = Reencoder(crf=18.0)
    # Joins at seq 2 (mid-GOP), sensor GOP 5; seq 8-11 lost, resumes at the key frame 15.
    seqs = [*range(2, 8), *range(15, 26)]
    out = reencode(reencoder, seqs, 5)
    keys = [seq for seq, data in out if is_key_frame(data, "h264")]
    # Its own first frame, then the sensor's: 5 (restart), 15 (restart after the gap), 20, 25.
    assert keys == [2, 5, 15, 20, 25]
    assert all(entry_point(data, "h264") for seq, data in out if seq in keys)
    assert reencoder.sensor_gop == 5  # learned from 15 -> 20 only (5 -> 15 had a gap)
    # Started at 2; restarted at 5, 15 (mid-GOP) and 20 (the learned GOP replaces 30).
    assert reencoder.restarts == 4
    decoder = av.CodecContext.create("h264", "r")
    for seq, data in out:
        (picture,) = decoder.decode(av.Packet(data))
        assert (picture.width, picture.height) == (252, 144)  # padded to a multiple of 4 only
        original = textured(seq)
        error = picture.to_ndarray(format="rgb24")[:142, :250].astype(float) - original
        assert 10 * np.log10(255 ** 2 / np.mean(error ** 2)) > 35.0


def test_reencoder_fixed_gop_and_stop():
    reencoder = Reencoder(crf=20.0, gop=3)
    out = reencode(reencoder, range(0, 7), 100)  # the sensor's key frame only at 0
    assert [seq for seq, data in out if is_key_frame(data, "h264")] == [0, 3, 6]
    reencoder.stop()
    assert not reencoder.active
    (seq, data), = reencode(reencoder, [7], 100)
    assert entry_point(data, "h264")  # a fresh encoder starts with a key frame
    with pytest.raises(SacError):
        Reencoder(crf=60.0)
