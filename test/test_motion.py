"""core/motion.py on real x264 streams: recovered vectors, merge, residual, warp."""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
from scipy import ndimage

from sac_ros.core import motion
from sac_ros.core.codec import EncoderSettings, StreamDecoder, StreamEncoder
from sac_ros.core.sac import SacDecoder, SacEncoder

W, H = 256, 128


def texture(height: int, width: int, seed: int = 0) -> np.ndarray:
    """Smooth random texture: every block has structure for the motion search."""
    rng = np.random.default_rng(seed)
    noise = ndimage.gaussian_filter(rng.random((height, width)), 1.5)
    return ((noise - noise.min()) / np.ptp(noise) * 235 + 10).astype(np.uint8)


def moving_frames(count: int, step_x: int, step_y: int, seed: int = 0) -> list[np.ndarray]:
    """Luma frames of a pattern whose content moves so that, each frame,
    content(x, y, t) = content(x + step_x, y + step_y, t - 1)."""
    margin = 8 + 8 * count
    big = texture(H + 2 * margin, W + 2 * margin, seed)
    return [big[margin + t * step_y:margin + t * step_y + H,
                margin + t * step_x:margin + t * step_x + W] for t in range(count)]


def i420(y: np.ndarray) -> np.ndarray:
    return np.concatenate([y, np.full((y.shape[0] // 2, y.shape[1]), 128, np.uint8)])


def decode_fields(frames: list[np.ndarray], codec: str = "h264") -> list[motion.MotionField]:
    encoder = StreamEncoder(W, H, 18.0, EncoderSettings(codec=codec, gop=30, threads=1))
    decoder = StreamDecoder(codec)
    decoder.export_motion = True
    fields, previous = [], None
    for y in frames:
        data, key = encoder.encode(i420(y))
        out = decoder.decode(data, key, (W, H))
        current = out[:H]
        fields.append(motion.motion_field(decoder.last_vectors, None, False, None, 16, W, H,
                                          key, current, previous))
        previous = current.copy()
    return fields


def interior(a: np.ndarray) -> np.ndarray:
    return a[1:-1, 1:-1]


@pytest.mark.parametrize("step", [(3, 1), (-2, 2), (5, 0)])
def test_recovered_motion_matches_the_known_shift(step):
    fields = decode_fields(moving_frames(5, *step))
    assert fields[0].key_frame and fields[0].unreliable.all()
    for field in fields[1:]:
        assert not field.key_frame
        reliable = ~interior(field.unreliable)
        assert reliable.mean() > 0.9
        # content(x, t) = content(x + step, t - 1): dx = 4 * step in quarter pixels.
        exact = (interior(field.dx) == 4 * step[0]) & (interior(field.dy) == 4 * step[1])
        assert exact[reliable].mean() > 0.9, (field.dx, field.dy)
        assert np.median(interior(field.residual)[reliable]) <= 6


def test_static_scene_has_zero_motion():
    y = texture(H, W, 3)
    fields = decode_fields([y] * 4)
    for field in fields[1:]:
        assert not field.unreliable.any()
        assert not field.dx.any() and not field.dy.any()
        assert field.residual.max() <= 4


def test_residual_flags_blocks_the_vector_does_not_explain():
    frames = moving_frames(4, 2, 0, seed=5)
    frames[3] = frames[3].copy()
    frames[3][32:64, 64:128] = texture(32, 64, 99)  # new content in 2 x 4 blocks
    field = decode_fields(frames)[3]
    occluded = np.zeros_like(field.unreliable)
    occluded[2:4, 4:8] = True
    flagged = field.refresh_blocks(max_residual=20)
    assert flagged[occluded].all()
    assert flagged[1:-1, 1:-1][~occluded[1:-1, 1:-1]].mean() < 0.1


def test_hevc_exports_no_vectors_so_every_block_is_unreliable():
    fields = decode_fields(moving_frames(3, 2, 0), codec="hevc")
    assert all(f.unreliable.all() for f in fields)
    assert all(not f.dx.any() for f in fields)


def test_export_is_off_by_default():
    encoder = StreamEncoder(W, H, 18.0, EncoderSettings(gop=30, threads=1))
    decoder = StreamDecoder("h264")
    for y in moving_frames(3, 2, 0):
        data, key = encoder.encode(i420(y))
        decoder.decode(data, key, (W, H))
        assert decoder.last_vectors is None


def rgb_clip(count: int, step_x: int, step_y: int) -> list[np.ndarray]:
    return [np.repeat(y[:, :, None], 3, axis=2) for y in moving_frames(count, step_x, step_y)]


@pytest.mark.parametrize("mode", ["dual_crf", "roi_qp", "uniform"])
def test_decoder_merges_both_streams_on_the_block_grid(mode):
    """dual_crf: ROI blocks take the ROI stream's vectors, the others the non-ROI one's;
    each stream alone is black (no usable motion) on the other's blocks."""
    frames = rgb_clip(4, 3, 0)
    blocks = np.zeros((H // 16, W // 16), bool)
    blocks[:, : W // 32] = True  # left half ROI
    encoder = SacEncoder(W, H, 18.0, 24.0, EncoderSettings(gop=30, threads=1), mode=mode)
    decoder = SacDecoder(export_motion=True)
    try:
        fields = [decoder.decode(encoder.encode(f, blocks)).motion for f in frames]
    finally:
        encoder.close()
        decoder.close()
    assert fields[0].key_frame
    for field in fields[1:]:
        # interior blocks away from the ROI edge (columns 7, 8) and the frame border
        inner = np.zeros_like(blocks)
        inner[1:-1, 1:6] = inner[1:-1, 10:-1] = True
        good = (field.dx == 12) & (field.dy == 0) & ~field.unreliable
        assert good[inner].mean() > 0.9, field.dx


def test_decoder_without_export_gives_no_motion_and_switches_at_a_key_frame():
    frames = rgb_clip(6, 2, 0)
    encoder = SacEncoder(W, H, 18.0, 24.0, EncoderSettings(gop=3, threads=1))
    decoder = SacDecoder()
    try:
        out = [decoder.decode(encoder.encode(frames[0]))]
        decoder.export_motion = True  # takes effect when the decoders reopen at frame 3
        out += [decoder.decode(encoder.encode(f)) for f in frames[1:]]
    finally:
        encoder.close()
        decoder.close()
    assert [f.motion is not None for f in out] == [False, False, False, True, True, True]
    assert out[3].motion.key_frame and not out[4].motion.key_frame


def test_warp_moves_a_class_map_with_the_field():
    rows, cols = motion.grid(W, H)
    class_map = np.zeros((H, W), np.uint8)
    class_map[40:80, 100:140] = 2
    field = motion.MotionField.still(rows, cols, key_frame=False)
    field.unreliable[:] = False
    field.dx[:] = 4 * 5   # content came from 5 px right, 3 px down: it moved left, up
    field.dy[:] = 4 * 3
    warped = motion.warp_class_map(class_map, field)
    expected = np.zeros_like(class_map)
    expected[37:77, 95:135] = 2
    assert np.array_equal(warped, expected)
    # Unreliable blocks keep their old classes.
    field.unreliable[:] = True
    assert np.array_equal(motion.warp_class_map(class_map, field), class_map)


def test_warp_follows_real_motion_of_a_decoded_clip():
    frames = moving_frames(4, 4, -2, seed=7)
    fields = decode_fields(frames)
    # A "class map" drawn on the content: thresholded texture moves with it.
    maps = [(y > 128).astype(np.uint8) for y in frames]
    warped = maps[0]
    for field in fields[1:]:
        warped = motion.warp_class_map(warped, field)
    inner = (slice(16, -16), slice(16, -16))
    assert (warped[inner] == maps[-1][inner]).mean() > 0.97


def test_warp_refuses_a_map_of_another_grid():
    field = motion.MotionField.still(8, 16)
    with pytest.raises(ValueError):
        motion.warp_class_map(np.zeros((64, 64), np.uint8), field)


def test_roi_on_motion_grid_for_other_mask_block_sizes():
    coarse = np.array([[True, False], [False, True]])  # 32 px blocks of a 64x64 frame
    assert np.array_equal(motion.roi_on_motion_grid(coarse, 32, 4, 4),
                          np.kron(coarse, np.ones((2, 2), bool)))
    fine = np.zeros((8, 8), bool)
    fine[1, 2] = True  # one 8 px block: its 16 px block holds ROI-stream pixels
    grid16 = motion.roi_on_motion_grid(fine, 8, 4, 4)
    assert grid16.sum() == 1 and grid16[0, 1]


def test_message_round_trip_and_bad_sizes():
    field = decode_fields(moving_frames(3, 2, 1))[2]
    msg = motion.fill_msg(SimpleNamespace(), field)
    assert (msg.rows, msg.cols, msg.block_size) == (H // 16, W // 16, 16)
    back = motion.field_from_msg(msg)
    for name in ("dx", "dy", "unreliable", "residual"):
        assert np.array_equal(getattr(back, name), getattr(field, name))
    msg.dx = msg.dx[:-1]
    with pytest.raises(ValueError):
        motion.field_from_msg(msg)
    msg = motion.fill_msg(SimpleNamespace(), field)
    msg.block_size = 8
    with pytest.raises(ValueError):
        motion.field_from_msg(msg)


def test_propagator_segments_at_key_frames_every_n_and_after_gaps():
    frames = moving_frames(8, 2, 0)
    fields = decode_fields(frames)
    for i, f in enumerate(fields):
        f.seq = i
    propagator = motion.ClassMapPropagator(segment_every=3)
    class_map = np.zeros((H, W), np.uint8)
    plans = []
    for i, field in enumerate(fields):
        if i == 5:
            field = None  # its motion never arrived
        plan = propagator.plan(field, (H, W))
        plans.append(plan)
        if plan == motion.PROPAGATED:
            propagator.propagate(field)
        else:
            propagator.segmented(class_map, field, plan)
    # Every 3rd frame in full (0, 3); frame 5's motion never came: segmented, but its seq
    # is unknown, so frame 6 cannot chain onto it (a gap); frame 7 chains onto 6.
    assert plans == ["first", motion.PROPAGATED, motion.PROPAGATED, "due", motion.PROPAGATED,
                     "no_motion", "gap", motion.PROPAGATED], plans
    assert propagator.counts[motion.PROPAGATED] == plans.count(motion.PROPAGATED)
    assert propagator.full == len(plans) - plans.count(motion.PROPAGATED)
    key = motion.MotionField.still(*motion.grid(W, H), key_frame=True)
    key.seq = 8
    assert propagator.plan(key, (H, W)) == "key_frame"


def test_propagator_re_segments_a_cut_the_vectors_cannot_explain():
    frames = moving_frames(3, 2, 0, seed=1) + moving_frames(2, 2, 0, seed=2)  # cut at 3
    fields = decode_fields(frames)
    propagator = motion.ClassMapPropagator(segment_every=100)  # the default share
    class_map = np.zeros((H, W), np.uint8)
    plans = []
    for i, field in enumerate(fields):
        field.seq = i
        plan = propagator.plan(field, (H, W))
        plans.append(plan)
        if plan == motion.PROPAGATED:
            propagator.propagate(field)
        else:
            propagator.segmented(class_map, field, plan)
    assert plans == ["first", motion.PROPAGATED, motion.PROPAGATED, "unreliable",
                     motion.PROPAGATED], plans


def test_segment_every_one_never_propagates():
    propagator = motion.ClassMapPropagator(segment_every=1)
    field = motion.MotionField.still(*motion.grid(W, H), key_frame=False)
    field.unreliable[:] = False
    propagator.segmented(np.zeros((H, W), np.uint8), None, "first")
    field.seq = 1
    assert propagator.plan(field, (H, W)) == "due"
    with pytest.raises(ValueError):
        motion.ClassMapPropagator(segment_every=0)


def test_propagator_carries_the_map_across_skipped_frames():
    """A busy node skips frames; with their motion it warps through them, no gap."""
    frames = moving_frames(5, 3, 0, seed=4)
    fields = decode_fields(frames)
    for i, f in enumerate(fields):
        f.seq = i
    maps = [(y > 128).astype(np.uint8) for y in frames]
    propagator = motion.ClassMapPropagator(segment_every=10)
    propagator.segmented(maps[1], fields[1], "due")
    assert propagator.plan(fields[4], (H, W)) == "gap"  # frames 2, 3 skipped, motion unknown
    between = fields[2:4]
    assert propagator.plan(fields[4], (H, W), between) == motion.PROPAGATED
    warped = propagator.propagate(fields[4], between)
    assert propagator.last_seq == 4
    inner = (slice(16, -16), slice(16, -16))
    assert (warped[inner] == maps[4][inner]).mean() > 0.97
    # Skipped frames count towards segment_every: drift grows per frame of video.
    short = motion.ClassMapPropagator(segment_every=3)
    short.segmented(maps[1], fields[1], "due")
    assert short.plan(fields[4], (H, W), between) == "due"


def test_vectors_beyond_the_frame_land_on_its_edge():
    rows, cols = motion.grid(W, H)
    image = np.tile(np.arange(W, dtype=np.uint8), (H, 1))
    field = motion.MotionField.still(rows, cols, key_frame=False)
    field.unreliable[:] = False
    field.dx[:] = motion.MAX_QUARTER_PEL  # 8192 px to the right: the right edge everywhere
    warped = motion.warp_class_map(image, field)
    assert (warped == W - 1).all()


def test_corrupt_packets_with_motion_export_cost_at_most_their_frame():
    """Damaged P-frames decoded with export_mvs: a frame or a drop, never an exception."""
    frames = rgb_clip(12, 2, 1)
    encoder = SacEncoder(W, H, 18.0, 24.0, EncoderSettings(gop=6, threads=1))
    packets = [encoder.encode(f) for f in frames]
    encoder.close()
    rng = np.random.default_rng(11)
    decoder = SacDecoder(export_motion=True)
    outcomes = []
    try:
        for _ in range(20):
            for packet in packets:
                if not packet.key_frame and rng.random() < 0.5:
                    data = bytearray(packet.roi.data)
                    for at in rng.integers(8, len(data), 4):
                        data[at] ^= int(rng.integers(1, 256))
                    packet = dataclasses.replace(
                        packet, roi=dataclasses.replace(packet.roi, data=bytes(data)))
                frame = decoder.decode(packet)
                outcomes.append(frame is not None)
                if frame is not None and frame.motion is not None:
                    assert frame.motion.dx.shape == motion.grid(W, H)
    finally:
        decoder.close()
    assert any(outcomes)
    assert decoder.motion_errors == 0, decoder.last_motion_error
