"""roi_qp mode with real x264 / x265: the per-block QP offsets must really reach the encoder.

x264's offsets are read back from the decoded stream (FFmpeg's per-macroblock QP
export, on frames textured everywhere: a macroblock without residual carries no QP
of its own); x265's through per-region quality and bytes. An encoder that silently
ignored the offsets would fail every test here.
"""

from __future__ import annotations

import av
import numpy as np
import pytest

from sac_ros.core import codec as codec_module
from sac_ros.core import metrics
from sac_ros.core.codec import EncoderSettings, StreamEncoder, block_runs
from sac_ros.core.errors import SacError
from sac_ros.core.mask import block_grid, expand_blocks
from sac_ros.core.sac import SacDecoder, SacEncoder


@pytest.fixture(scope="module")
def textured_frames():
    """Four 320x176 frames with fine noise in every macroblock, so each one has residual."""
    from conftest import textured

    rng = np.random.default_rng(3)
    return [np.clip(textured(176, 320, 0.3 * index).astype(int)
                    + rng.integers(-24, 25, (176, 320, 3)), 0, 255).astype(np.uint8)
            for index in range(4)]


@pytest.fixture(scope="module")
def frames():
    """Four consecutive sample frames at 320x180 (3x downscaled, partial bottom block row)."""
    from sac_ros.core.io import load_clip

    return [np.ascontiguousarray(f[::3, ::3]) for f in load_clip("sample", 0, 4).frames]


def lower_half(height: int, width: int) -> np.ndarray:
    rows, cols = block_grid(height, width)
    blocks = np.zeros((rows, cols), bool)
    blocks[rows // 2:] = True
    return blocks


def stripes(height: int, width: int) -> np.ndarray:
    """ROI on every other 16-px block row: misplaced if x265 used 32x32 QP groups."""
    rows, cols = block_grid(height, width)
    blocks = np.zeros((rows, cols), bool)
    blocks[::2] = True
    return blocks


def encode(frames, codec, mode, roi_crf, non_roi_crf, blocks, preset="veryfast", gop=30):
    height, width = frames[0].shape[:2]
    encoder = SacEncoder(width, height, roi_crf, non_roi_crf,
                         EncoderSettings(codec, preset, gop, threads=1, fps=25), mode)
    try:
        return [encoder.encode(frame, blocks) for frame in frames]
    finally:
        encoder.close()


def h264_qp_maps(packets) -> list[np.ndarray]:
    """Per-macroblock QP of each decoded frame, as FFmpeg's H.264 decoder reports it."""
    decoder = av.CodecContext.create("h264", "r")
    decoder.options = {"export_side_data": "venc_params"}
    maps = []
    for packet in packets:
        for frame in decoder.decode(av.Packet(packet.roi.data)):
            params = [s for s in frame.side_data if s.type.name == "VIDEO_ENC_PARAMS"]
            assert params, "the decoder exported no QP map"
            maps.append(params[0].qp_map())
    return maps


def region_psnr(frames, packets, blocks):
    height, width = frames[0].shape[:2]
    mask = expand_blocks(blocks, height, width)
    decoder = SacDecoder()
    roi, non = [], []
    for frame, packet in zip(frames, packets, strict=True):
        decoded = decoder.decode(packet)
        assert decoded is not None
        roi.append(metrics.psnr(frame, decoded.rgb, mask))
        non.append(metrics.psnr(frame, decoded.rgb, ~mask))
    return float(np.mean(roi)), float(np.mean(non))


# ------------------------------------------------------------------ offsets reach the encoder

@pytest.mark.parametrize("preset", ["veryfast", "ultrafast"])  # ultrafast: AQ switched on
def test_x264_qp_per_block_follows_the_mask(textured_frames, preset):
    blocks = stripes(176, 320)  # 16-px stripes: per-macroblock resolution
    frames = textured_frames
    # Intra frames: a P macroblock coded without residual would report its neighbour's QP.
    offset_maps = h264_qp_maps(encode(frames, "h264", "roi_qp", 24, 32, blocks, preset, gop=1))
    plain_maps = h264_qp_maps(encode(frames, "h264", "roi_qp", 24, 24, blocks, preset, gop=1))
    assert len(offset_maps) == len(frames)
    for offset_qp, plain_qp in zip(offset_maps, plain_maps, strict=True):
        assert offset_qp.shape == blocks.shape
        gap = offset_qp[~blocks].mean() - offset_qp[blocks].mean()
        plain_gap = plain_qp[~blocks].mean() - plain_qp[blocks].mean()
        # +8 QP on the non-ROI blocks (x264's AQ adds its own spread around it).
        assert 6 <= gap - plain_gap <= 11, (gap, plain_gap)
        assert abs(plain_gap) < 2, plain_gap


# x264 follows 16x16 stripes; x265 averages the offsets over each coding unit (up to
# 64x64), so it is tested on one large region, as real ROI masks are.
@pytest.mark.parametrize("codec, mask", [("h264", stripes), ("hevc", lower_half)])
def test_offsets_cut_non_roi_quality_and_bytes_only(frames, codec, mask):
    blocks = mask(180, 320)
    base = 26 if codec == "h264" else 30
    plain = encode(frames, codec, "roi_qp", base, base, blocks)
    shifted = encode(frames, codec, "roi_qp", base, base + 10, blocks)
    roi_plain, non_plain = region_psnr(frames, plain, blocks)
    roi_shifted, non_shifted = region_psnr(frames, shifted, blocks)
    assert non_shifted < non_plain - 2.0, (non_plain, non_shifted)
    assert abs(roi_shifted - roi_plain) < 0.8, (roi_plain, roi_shifted)
    assert sum(p.num_bytes for p in shifted) < 0.9 * sum(p.num_bytes for p in plain)


def test_packet_has_one_stream_and_the_mask(frames):
    blocks = lower_half(180, 320)
    packets = encode(frames, "hevc", "roi_qp", 28, 33, blocks)
    decoder = SacDecoder()  # the unchanged decoder: the packet says it has one stream
    for frame, packet in zip(frames, packets, strict=True):
        assert packet.mode == "roi_qp" and packet.non_roi is None
        assert packet.roi.crf == 28 and packet.qp_offset == 5
        np.testing.assert_array_equal(packet.blocks(), blocks)
        assert packet.num_bytes == len(packet.roi.data)
        decoded = decoder.decode(packet)
        assert decoded.rgb.shape == (180, 320, 3)
        assert metrics.psnr(frame, decoded.rgb) > 30


def test_set_crfs_moves_the_offset_at_the_next_key_frame(frames):
    blocks = lower_half(180, 320)
    encoder = SacEncoder(320, 180, 24, 28, EncoderSettings("h264", gop=2, threads=1, fps=25),
                         "roi_qp")
    packets = []
    for index, frame in enumerate(frames):
        if index == 1:
            encoder.set_crfs(22, 34)
            assert (encoder.roi_crf, encoder.non_roi_crf, encoder.qp_offset) == (24, 28, 4)
        packets.append(encoder.encode(frame, blocks))
    encoder.close()
    assert [(p.roi.crf, p.qp_offset) for p in packets] == [(24, 4), (24, 4), (22, 12), (22, 12)]
    gaps = [q[~blocks].mean() - q[blocks].mean() for q in h264_qp_maps(packets)]
    assert gaps[2] > gaps[0] + 5 and gaps[3] > gaps[1] + 5, gaps


def test_block_runs_cover_the_mask_exactly():
    rng = np.random.default_rng(5)
    for shape, density in (((17, 30), 0.5), ((34, 60), 0.1), ((5, 7), 0.9), ((3, 4), 0.0)):
        blocks = rng.random(shape) < density
        blocks[shape[0] // 2:, 2:5] = True  # a solid part, so rows merge
        rects = block_runs(blocks)
        cover = np.zeros(shape, int)
        for top, bottom, left, right in rects:
            cover[top:bottom, left:right] += 1
        np.testing.assert_array_equal(cover, blocks.astype(int))  # exact, no overlap
    solid = np.zeros((10, 12), bool)
    solid[4:, 3:9] = True
    assert block_runs(solid).tolist() == [[4, 10, 3, 9]]


def test_changing_mask_grows_the_region_slots(textured_frames):
    """A checkerboard needs more regions than the first slots; offsets still apply."""
    rows, cols = block_grid(176, 320)
    checker = (np.add.outer(np.arange(rows), np.arange(cols)) % 2).astype(bool)
    moving = [lower_half(176, 320), checker, ~checker, lower_half(176, 320)]
    encoder = SacEncoder(320, 176, 24, 32, EncoderSettings("h264", gop=1, threads=1, fps=25),
                         "roi_qp")
    packets = [encoder.encode(f, b) for f, b in zip(textured_frames, moving, strict=True)]
    encoder.close()
    for qp, blocks in zip(h264_qp_maps(packets), moving, strict=True):
        assert qp[~blocks].mean() - qp[blocks].mean() > 5


# ------------------------------------------------------------------ never silent

def test_aq_off_is_refused():
    with pytest.raises(SacError, match="adaptive quantisation.*aq_mode is 0"):
        SacEncoder(64, 64, 23, 30, EncoderSettings("h264", aq_mode=0), "roi_qp")
    with pytest.raises(SacError, match="aq_mode 5 is outside 0-3"):
        EncoderSettings("h264", aq_mode=5)


@pytest.mark.parametrize("name", ["h264_nvenc", "hevc_nvenc", "h264_qsv", "hevc_vaapi"])
def test_hardware_encoders_are_refused_clearly(name):
    with pytest.raises(SacError, match=f"encoder '{name}' is not supported.*ignore the per-block"):
        EncoderSettings(name)


def test_an_encoder_that_drops_the_offsets_is_caught(monkeypatch):
    """x265 superfast turns AQ off; without the automatic fix the probe must notice."""
    monkeypatch.setitem(codec_module.PRESETS_WITHOUT_AQ, "hevc", ("ultrafast",))
    codec_module.check_roi_qp_honoured.cache_clear()
    try:
        with pytest.raises(SacError, match="libx265 .preset superfast. ignores per-block QP"):
            SacEncoder(64, 64, 23, 30, EncoderSettings("hevc", "superfast"), "roi_qp")
    finally:
        codec_module.check_roi_qp_honoured.cache_clear()
    monkeypatch.undo()
    SacEncoder(64, 64, 23, 30, EncoderSettings("hevc", "superfast"), "roi_qp")  # fixed


def test_bad_roi_qp_input():
    with pytest.raises(SacError, match="roi_qp needs block_size 16, 32 or 64"):
        SacEncoder(64, 64, 23, 30, mode="roi_qp", block_size=8)
    with pytest.raises(SacError, match="outside 0-51"):
        SacEncoder(64, 64, 23, 52, mode="roi_qp")
    plain = StreamEncoder(64, 64, 23, EncoderSettings(threads=1))
    with pytest.raises(SacError, match="need a ROI-QP stream"):
        plain.encode(np.zeros((96, 64), np.uint8), np.ones((4, 4), bool))
    with pytest.raises(SacError, match="needs a ROI-QP stream"):
        plain.set_qp_offset(3)
    roi = StreamEncoder(64, 64, 23, EncoderSettings(threads=1), qp_offset=3)
    with pytest.raises(SacError, match="does not tile"):
        roi.encode(np.zeros((96, 64), np.uint8), np.ones((3, 4), bool))
    with pytest.raises(SacError, match="outside -51 to \\+51"):
        roi.set_qp_offset(60)
