"""SacEncoder / SacDecoder with real x264 / x265: packets, key frames, recombination, recovery."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from sac_ros.core import metrics
from sac_ros.core.codec import EncoderSettings, check_crf
from sac_ros.core.errors import SacError
from sac_ros.core.frames import BLACK_C, BLACK_Y, PlaneLayout, as_rgb, select, split
from sac_ros.core.mask import block_grid, expand_blocks
from sac_ros.core.sac import SacDecoder, SacEncoder, SacPacket

CODECS = ("h264", "hevc")
GOP = 4

# Parameter-set and random-access NAL unit types.
H264_SPS, H264_PPS, H264_IDR = 7, 8, 5
HEVC_VPS, HEVC_SPS, HEVC_PPS = 32, 33, 34
HEVC_IRAP = range(16, 22)  # BLA / IDR / CRA


def nal_types(data: bytes, codec: str) -> list[int]:
    """NAL unit types of an Annex-B byte stream (3- or 4-byte start codes)."""
    types, pos = [], 0
    while True:
        pos = data.find(b"\x00\x00\x01", pos)
        if pos < 0 or pos + 3 >= len(data):
            return types
        header = data[pos + 3]
        assert header & 0x80 == 0, "forbidden_zero_bit set: not a NAL unit header"
        types.append(header & 0x1F if codec == "h264" else (header >> 1) & 0x3F)
        pos += 3


def is_annex_b(data: bytes) -> bool:
    return data.startswith(b"\x00\x00\x00\x01") or data.startswith(b"\x00\x00\x01")


def half_mask(height: int, width: int) -> np.ndarray:
    rows, cols = block_grid(height, width)
    blocks = np.zeros((rows, cols), bool)
    blocks[:, : cols // 2] = True
    return blocks


def checkerboard(height: int, width: int) -> np.ndarray:
    rows, cols = block_grid(height, width)
    return (np.add.outer(np.arange(rows), np.arange(cols)) % 2).astype(bool)


def encode_clip(make_frame, codec, count=10, height=64, width=96, roi_crf=18, non_crf=30,
                mode="dual_crf", blocks=None):
    encoder = SacEncoder(width, height, roi_crf, non_crf,
                         EncoderSettings(codec, gop=GOP, threads=1), mode)
    frames = [make_frame(height, width, 0.15 * i) for i in range(count)]
    if blocks is None:
        blocks = half_mask(height, width)
    try:
        packets = [encoder.encode(frame, blocks) for frame in frames]
    finally:
        encoder.close()
    return frames, packets


def corrupt(packet: SacPacket, stream: str, seed: int = 7) -> SacPacket:
    original = getattr(packet, stream)
    garbage = np.random.default_rng(seed).integers(0, 256, len(original.data), np.uint8)
    return dataclasses.replace(
        packet, **{stream: dataclasses.replace(original, data=garbage.tobytes())})


# ------------------------------------------------------------------ packets and key frames

@pytest.mark.parametrize("codec", CODECS)
def test_one_packet_per_frame_with_parameter_sets(make_frame, codec):
    frames, packets = encode_clip(make_frame, codec, count=9)
    assert len(packets) == len(frames)
    blocks = half_mask(64, 96)
    for index, packet in enumerate(packets):
        assert isinstance(packet, SacPacket)
        assert packet.seq == index and packet.mode == "dual_crf"
        assert (packet.width, packet.height, packet.block_rows, packet.block_cols) == (96, 64, 4, 6)
        np.testing.assert_array_equal(packet.blocks(), blocks)
        key = index % GOP == 0
        assert packet.key_frame is key
        for stream in (packet.roi, packet.non_roi):
            assert stream.codec == codec
            assert len(stream.data) > 0
            assert is_annex_b(stream.data)
            assert stream.key_frame is key
            types = nal_types(stream.data, codec)
            assert types, "no NAL units found"
            if codec == "h264":
                params = {H264_SPS, H264_PPS}
                assert params <= set(types) if key else not params & set(types)
                assert (H264_IDR in types) is key
            else:
                params = {HEVC_VPS, HEVC_SPS, HEVC_PPS}
                assert params <= set(types) if key else not params & set(types)
                assert any(t in HEVC_IRAP for t in types) is key
        assert packet.num_bytes == len(packet.roi.data) + len(packet.non_roi.data)
    # Key frames carry the parameter sets, so they are the big ones.
    assert len(packets[4].roi.data) > len(packets[5].roi.data)


@pytest.mark.parametrize("codec", CODECS)
def test_key_frame_interval_follows_gop(make_frame, codec):
    encoder = SacEncoder(48, 32, 20, 30, EncoderSettings(codec, gop=3, threads=1))
    keys = [encoder.encode(make_frame(32, 48, 0.2 * i)).key_frame for i in range(7)]
    encoder.close()
    assert keys == [True, False, False, True, False, False, True]


# ------------------------------------------------------------------ exact output size

@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("height, width", [(67, 131), (541, 962), (540, 960)])
def test_output_is_exactly_input_size(make_frame, codec, height, width):
    frame = make_frame(height, width)
    encoder = SacEncoder(width, height, 18, 24, EncoderSettings(codec, gop=GOP, threads=2))
    packet = encoder.encode(frame, half_mask(height, width))
    encoder.close()
    decoded = SacDecoder().decode(packet)
    assert decoded is not None
    assert decoded.rgb.shape == (height, width, 3) and decoded.rgb.dtype == np.uint8
    # Cropped, not shifted or rescaled: the picture still matches the original.
    assert metrics.psnr(frame, decoded.rgb) > 32
    # The edge rows/columns (partial blocks) are right too.
    assert metrics.psnr(frame[-3:], decoded.rgb[-3:]) > 28
    assert metrics.psnr(frame[:, -3:], decoded.rgb[:, -3:]) > 28


# ------------------------------------------------------------------ quality and recombination

@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("fill", [True, False], ids=["all_roi", "no_roi"])
def test_all_and_no_roi_decode_near_original(make_frame, codec, fill):
    height, width = 64, 96
    rows, cols = block_grid(height, width)
    blocks = np.full((rows, cols), fill)
    frames, packets = encode_clip(make_frame, codec, count=3, roi_crf=18, non_crf=18,
                                  blocks=blocks)
    decoder = SacDecoder(keep_streams=True)
    for frame, packet in zip(frames, packets, strict=True):
        decoded = decoder.decode(packet)
        assert decoded is not None
        assert metrics.psnr(frame, decoded.rgb) > 30
        # The stream that owns no block is black (RGB 0) everywhere.
        empty = decoded.non_roi_stream_rgb if fill else decoded.roi_stream_rgb
        full = decoded.roi_stream_rgb if fill else decoded.non_roi_stream_rgb
        assert empty.mean() < 3
        assert metrics.psnr(frame, full) > 30


@pytest.mark.parametrize("codec", CODECS)
def test_recombination_selects_per_block(make_frame, codec):
    height, width = 64, 96
    blocks = checkerboard(height, width)
    frames, packets = encode_clip(make_frame, codec, count=3, roi_crf=12, non_crf=51,
                                  blocks=blocks)
    mask = expand_blocks(blocks, height, width)
    decoder = SacDecoder()
    for frame, packet in zip(frames, packets, strict=True):
        decoded = decoder.decode(packet)
        assert decoded is not None
        np.testing.assert_array_equal(decoded.blocks, blocks)
        roi = metrics.psnr(frame, decoded.rgb, mask)
        non = metrics.psnr(frame, decoded.rgb, ~mask)
        assert roi > 33, roi
        assert non < roi - 6, (roi, non)
        # Every ROI block on its own is good, every non-ROI block worse than the worst ROI one.
        per_block = {}
        for r in range(blocks.shape[0]):
            for c in range(blocks.shape[1]):
                window = np.s_[16 * r:16 * r + 16, 16 * c:16 * c + 16]
                per_block[r, c] = metrics.psnr(frame[window], decoded.rgb[window])
        roi_blocks = [v for k, v in per_block.items() if blocks[k]]
        non_blocks = [v for k, v in per_block.items() if not blocks[k]]
        assert min(roi_blocks) > 30
        assert max(non_blocks) < min(roi_blocks)


def i420_views(buf: np.ndarray, padded_height: int, padded_width: int):
    """Y, U, V of an I420 buffer, derived from the flat plane layout (not PlaneLayout)."""
    flat = buf.reshape(-1)
    y_size = padded_height * padded_width
    c_size = y_size // 4
    y = flat[:y_size].reshape(padded_height, padded_width)
    u = flat[y_size:y_size + c_size].reshape(padded_height // 2, padded_width // 2)
    v = flat[y_size + c_size:].reshape(padded_height // 2, padded_width // 2)
    return y, u, v


def test_select_exact_on_synthetic_planes():
    layout = PlaneLayout(41, 57)  # pads to 48x64: 3x4 blocks, partial edges
    assert (layout.padded_height, layout.padded_width) == (48, 64)
    rng = np.random.default_rng(11)
    roi, non = layout.new_i420(), layout.new_i420()
    roi[...] = rng.integers(0, 256, roi.shape, np.uint8)
    non[...] = rng.integers(0, 256, non.shape, np.uint8)
    blocks = np.array([[1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0]], bool)
    out = layout.new_i420()
    result = select(layout, roi, non, blocks, out)
    assert result is out
    views = [i420_views(b, 48, 64) for b in (out, roi, non)]
    for plane in range(3):
        size = 16 if plane == 0 else 8
        got, want_roi, want_non = (v[plane] for v in views)
        for r in range(3):
            for c in range(4):
                window = np.s_[size * r:size * (r + 1), size * c:size * (c + 1)]
                want = want_roi if blocks[r, c] else want_non
                np.testing.assert_array_equal(got[window], want[window],
                                              err_msg=f"plane {plane} block {r},{c}")


def test_select_never_wraps_near_255():
    layout = PlaneLayout(32, 48)
    blocks = np.array([[1, 0, 1], [0, 1, 0]], bool)
    roi, non, out = layout.new_i420(), layout.new_i420(), layout.new_i420()
    roi[...] = 250
    non[...] = 250
    select(layout, roi, non, blocks, out)
    assert (out == 250).all()
    roi[...] = 255
    non[...] = 0
    select(layout, roi, non, blocks, out)
    y, u, v = i420_views(out, 32, 48)
    np.testing.assert_array_equal(y, np.where(expand_blocks(blocks, 32, 48), 255, 0))
    np.testing.assert_array_equal(u, np.where(expand_blocks(blocks, 16, 24, 8), 255, 0))
    np.testing.assert_array_equal(v, u)


def test_split_blackens_the_other_region(make_frame):
    layout = PlaneLayout(40, 56)
    src = layout.rgb_to_i420(make_frame(40, 56))
    blocks = np.array([[1, 0, 0, 1], [0, 0, 1, 1], [1, 0, 1, 0]], bool)
    roi_out, non_out = layout.new_i420(), layout.new_i420()
    split(layout, src, blocks, roi_out, non_out)
    src_v, roi_v, non_v = (i420_views(b, 48, 64) for b in (src, roi_out, non_out))
    assert (BLACK_Y, BLACK_C) == (16, 128)  # BT.601 limited-range black
    for plane, black in zip(range(3), (16, 128, 128), strict=True):
        size = 16 if plane == 0 else 8
        keep = np.repeat(np.repeat(blocks, size, 0), size, 1)
        np.testing.assert_array_equal(roi_v[plane], np.where(keep, src_v[plane], black))
        np.testing.assert_array_equal(non_v[plane], np.where(keep, black, src_v[plane]))


def test_i420_chroma_layout_matches_block_grid():
    """A colour edge on a block boundary stays on the 8x8 chroma boundary (no flash)."""
    layout = PlaneLayout(32, 48)
    rgb = np.zeros((32, 48, 3), np.uint8)
    rgb[:, :16] = (255, 0, 0)
    rgb[:, 16:] = (0, 0, 255)
    _, u, v = i420_views(layout.rgb_to_i420(rgb), 32, 48)
    assert len(np.unique(u[:, :8])) == 1 and len(np.unique(u[:, 8:])) == 1
    assert len(np.unique(v[:, :8])) == 1 and len(np.unique(v[:, 8:])) == 1
    assert v[0, 0] > 200 and u[0, 8] > 200  # red is high Cr, blue is high Cb
    back = layout.i420_to_rgb(layout.rgb_to_i420(rgb))
    assert back.shape == rgb.shape
    assert np.abs(back.astype(int) - rgb).max() <= 3


# ------------------------------------------------------------------ decoder recovery

def assert_decodes_to(decoded, frame):
    assert decoded is not None
    assert metrics.psnr(frame, decoded.rgb) > 30


@pytest.mark.parametrize("codec", CODECS)
def test_late_joiner_waits_for_key_frame(make_frame, codec):
    frames, packets = encode_clip(make_frame, codec, count=10)
    decoder = SacDecoder()
    for index in range(1, 10):
        decoded = decoder.decode(packets[index])
        if index < 4:
            assert decoded is None
            assert decoder.last_drop_reason == "waiting_for_key_frame"
        else:
            assert_decodes_to(decoded, frames[index])
            assert decoded.seq == index
            assert decoder.last_drop_reason is None


@pytest.mark.parametrize("codec", CODECS)
def test_lost_packet_drops_until_key_frame(make_frame, codec):
    frames, packets = encode_clip(make_frame, codec, count=10)
    decoder = SacDecoder()
    for index in (0, 1, 2, 3, 4):
        assert_decodes_to(decoder.decode(packets[index]), frames[index])
    # Packet 5 is lost.
    for index in (6, 7):
        assert decoder.decode(packets[index]) is None
        assert decoder.last_drop_reason == "waiting_for_key_frame"
    for index in (8, 9):
        assert_decodes_to(decoder.decode(packets[index]), frames[index])


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("stream", ["roi", "non_roi"])
def test_corrupted_key_frame_is_dropped(make_frame, codec, stream):
    frames, packets = encode_clip(make_frame, codec, count=10)
    decoder = SacDecoder()
    for index in range(4):
        assert_decodes_to(decoder.decode(packets[index]), frames[index])
    assert decoder.decode(corrupt(packets[4], stream)) is None  # must not raise
    assert decoder.last_drop_reason.startswith("decode_error")
    for index in (5, 6, 7):
        assert decoder.decode(packets[index]) is None
        assert decoder.last_drop_reason == "waiting_for_key_frame"
    for index in (8, 9):
        assert_decodes_to(decoder.decode(packets[index]), frames[index])


@pytest.mark.parametrize("codec", CODECS)
def test_corrupted_first_packet_then_recovers(make_frame, codec):
    frames, packets = encode_clip(make_frame, codec, count=6)
    decoder = SacDecoder()
    assert decoder.decode(corrupt(packets[0], "roi", seed=3)) is None
    assert decoder.last_drop_reason.startswith("decode_error")
    assert decoder.decode(packets[1]) is None
    assert decoder.decode(packets[2]) is None
    assert decoder.decode(packets[3]) is None
    assert_decodes_to(decoder.decode(packets[4]), frames[4])
    assert_decodes_to(decoder.decode(packets[5]), frames[5])


def test_decoder_follows_size_change(make_frame):
    _, small = encode_clip(make_frame, "h264", count=2, height=32, width=48)
    frames, large = encode_clip(make_frame, "h264", count=2, height=67, width=131)
    decoder = SacDecoder()
    assert decoder.decode(small[0]).rgb.shape == (32, 48, 3)
    assert decoder.decode(small[1]) is not None
    # A new stream (seq restarts at 0) of another size starts at its key frame.
    decoded = decoder.decode(large[0])
    assert decoded.rgb.shape == (67, 131, 3)
    assert_decodes_to(decoded, frames[0])


# ------------------------------------------------------------------ CRF changes

@pytest.mark.parametrize("codec", CODECS)
def test_set_crfs_takes_effect_at_next_key_frame(make_frame, codec):
    encoder = SacEncoder(96, 64, 18, 30, EncoderSettings(codec, gop=GOP, threads=1))
    decoder = SacDecoder()
    blocks = half_mask(64, 96)
    mask = expand_blocks(blocks, 64, 96)
    packets, roi_psnr, non_psnr = [], [], []
    for index in range(10):
        if index == 2:
            encoder.set_crfs(34, 46)
            assert (encoder.roi_crf, encoder.non_roi_crf) == (18, 30)  # not yet
        frame = make_frame(64, 96, 0.15 * index)
        packets.append(encoder.encode(frame, blocks))
        decoded = decoder.decode(packets[-1])
        assert decoded is not None
        roi_psnr.append(metrics.psnr(frame, decoded.rgb, mask))
        non_psnr.append(metrics.psnr(frame, decoded.rgb, ~mask))
    encoder.close()
    assert (encoder.roi_crf, encoder.non_roi_crf) == (34, 46)
    crfs = [(p.roi.crf, p.non_roi.crf) for p in packets]
    assert crfs == [(18, 30)] * 4 + [(34, 46)] * 6
    assert [p.key_frame for p in packets] == [i % GOP == 0 for i in range(10)]
    # The new CRFs really changed the coding, from frame 4 on and not before.
    assert min(roi_psnr[:4]) > max(roi_psnr[4:]) + 1
    assert min(non_psnr[:4]) > max(non_psnr[4:]) + 3
    before = sum(len(p.roi.data) for p in packets[1:4])
    after = sum(len(p.roi.data) for p in packets[5:8])
    assert after < 0.8 * before


@pytest.mark.parametrize("codec", CODECS)
def test_set_crfs_stream_stays_decodable(make_frame, codec):
    encoder = SacEncoder(96, 64, 18, 30, EncoderSettings(codec, gop=GOP, threads=1))
    decoder = SacDecoder()
    for index in range(9):
        if index == 3:
            encoder.set_crfs(22, 36)
        frame = make_frame(64, 96, 0.15 * index)
        assert_decodes_to(decoder.decode(encoder.encode(frame, half_mask(64, 96))), frame)
    encoder.close()


def test_set_crfs_uniform_and_roi_only():
    encoder = SacEncoder(48, 32, 20, settings=EncoderSettings("h264", gop=2, threads=1),
                         mode="uniform")
    frame = np.full((32, 48, 3), 90, np.uint8)
    encoder.encode(frame)
    encoder.set_crfs(30)
    assert encoder.encode(frame).roi.crf == 20
    packet = encoder.encode(frame)
    assert packet.key_frame and packet.roi.crf == 30 and packet.non_roi is None
    dual = SacEncoder(48, 32, 20, 25, EncoderSettings("h264", gop=1, threads=1))
    dual.set_crfs(23)  # non-ROI CRF unchanged when not given
    packet = dual.encode(frame)
    dual.close()
    assert (packet.roi.crf, packet.non_roi.crf) == (23, 25)


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("roi_crf, non_crf", [(52, 30), (-1, 30), (18, 51.5), (18, -0.1)])
def test_crf_out_of_range(roi_crf, non_crf):
    with pytest.raises(SacError, match="outside 0-51"):
        SacEncoder(48, 32, roi_crf, non_crf)


def test_set_crfs_out_of_range():
    encoder = SacEncoder(48, 32, 20, 30, EncoderSettings(threads=1))
    with pytest.raises(SacError, match="outside 0-51"):
        encoder.set_crfs(60)
    with pytest.raises(SacError, match="outside 0-51"):
        encoder.set_crfs(20, 52)
    encoder.close()
    assert check_crf(0) == 0 and check_crf(51) == 51
    with pytest.raises(SacError, match="must be a number"):
        check_crf("high")


@pytest.mark.parametrize("codec", ["vp9", "av1", ""])
def test_unknown_codec(codec):
    with pytest.raises(SacError, match="unknown codec"):
        EncoderSettings(codec)


def test_codec_aliases():
    assert EncoderSettings("x265").codec == "hevc"
    assert EncoderSettings("H264").codec == "h264"


@pytest.mark.parametrize("kwargs, message", [
    ({"preset": "warp"}, "unknown preset"), ({"gop": 0}, "gop"), ({"fps": 0}, "fps"),
    ({"threads": -1}, "threads")])
def test_bad_encoder_settings(kwargs, message):
    with pytest.raises(SacError, match=message):
        EncoderSettings(**kwargs)


def test_bad_mode_mask_and_frame(make_frame):
    with pytest.raises(SacError, match="unknown mode"):
        SacEncoder(48, 32, 20, mode="triple")
    with pytest.raises(SacError, match="too small"):
        SacEncoder(1, 32, 20)
    encoder = SacEncoder(48, 32, 20, 30, EncoderSettings(threads=1))
    with pytest.raises(SacError, match="block mask"):
        encoder.encode(make_frame(32, 48), np.ones((3, 3), bool))
    with pytest.raises(SacError, match="expected 48x32"):
        encoder.encode(make_frame(30, 48), np.ones((2, 3), bool))
    with pytest.raises(SacError, match="pixel type"):
        encoder.encode(make_frame(32, 48).astype(np.float32))
    encoder.close()


@pytest.mark.parametrize("codec", CODECS)
def test_mono_and_rgba_frames_are_converted(make_frame, codec):
    height, width = 34, 50
    rgb = make_frame(height, width)
    mono = rgb[..., 1].copy()
    rgba = np.concatenate([rgb, np.full((height, width, 1), 7, np.uint8)], axis=2)
    assert as_rgb(mono).shape == (height, width, 3)
    np.testing.assert_array_equal(as_rgb(rgba), rgb)
    np.testing.assert_array_equal(as_rgb((rgb.astype(np.uint16) << 8) | 0xFF), rgb)
    encoder = SacEncoder(width, height, 16, 16, EncoderSettings(codec, gop=GOP, threads=1))
    decoder = SacDecoder()
    blocks = half_mask(height, width)
    grey = decoder.decode(encoder.encode(mono, blocks))
    colour = decoder.decode(encoder.encode(rgba, blocks))
    encoder.close()
    assert grey.rgb.shape == colour.rgb.shape == (height, width, 3)
    assert metrics.psnr(np.repeat(mono[..., None], 3, 2), grey.rgb) > 30
    assert metrics.psnr(rgb, colour.rgb) > 30


# ------------------------------------------------------------------ uniform mode

@pytest.mark.parametrize("codec", CODECS)
def test_uniform_mode_has_one_stream(make_frame, codec):
    frames, packets = encode_clip(make_frame, codec, count=5, roi_crf=20, mode="uniform")
    decoder = SacDecoder()
    for frame, packet in zip(frames, packets, strict=True):
        assert packet.mode == "uniform"
        assert packet.non_roi is None
        assert packet.roi.crf == 20
        assert packet.num_bytes == len(packet.roi.data) > 0
        assert packet.blocks().all()  # the whole frame is one (ROI-quality) stream
        assert_decodes_to(decoder.decode(packet), frame)
