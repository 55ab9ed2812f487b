"""Propagating sensor masks (issue 16 items 3, 4): block matching on real frames, the mask
carried along it, and the schedule of full segmentations (key frames, every N-th)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from sac_ros.cli.main import main
from sac_ros.config import load_core_config
from sac_ros.core.blockmatch import BlockMatcher, near_boundary
from sac_ros.core.errors import SacError
from sac_ros.core.io import load_clip
from sac_ros.core.mask import hold_blocks
from sac_ros.core.metrics import binary_iou
from sac_ros.eval.masks import clip_blocks
from sac_ros.segmentation import load_segmenter
from sac_ros.segmentation.propagation import PropagatingSegmenter, check_segment_every

REPO = Path(__file__).resolve().parent.parent
HEIGHT, WIDTH = 384, 640  # a window of the 960x540 footage, room to move it around


@pytest.fixture(scope="module")
def footage():
    return load_clip("sample:project_video01", 0, 6).frames


@pytest.fixture(scope="module")
def segmenter():
    seg = load_segmenter(model="default")
    yield seg
    seg.close()


def window(frame: np.ndarray, dy: int = 0, dx: int = 0) -> np.ndarray:
    """A HEIGHT x WIDTH view of a real frame moved by (dy, dx): the content at (y, x) of the
    result is at (y + dy, x + dx) of the unmoved window. A real translation, no wrap."""
    top, left = 100 + dy, 160 + dx
    return np.ascontiguousarray(frame[top:top + HEIGHT, left:left + WIDTH])


def textured_blocks(luma: np.ndarray, cell: int) -> np.ndarray:
    """Blocks with texture both ways, which match unambiguously: flat road and sky cannot,
    nor a straight edge along itself."""
    rows, cols = luma.shape[0] // cell, luma.shape[1] // cell

    def per_block(gradient):
        return np.abs(gradient).reshape(rows, cell, cols, cell).mean(axis=(1, 3))

    across = per_block(np.diff(luma, axis=1, append=luma[:, -1:]))
    down = per_block(np.diff(luma, axis=0, append=luma[-1:]))
    return np.minimum(across, down) > 6.0


@pytest.mark.parametrize("dy, dx", [(8, -12), (-4, 16), (12, 8), (0, -20)])
def test_block_matcher_recovers_a_known_shift_of_a_real_frame(footage, dy, dx):
    matcher = BlockMatcher()
    previous = matcher.luma(window(footage[0]))
    current = matcher.luma(window(footage[0], dy, dx))
    vectors = matcher.motion(current, previous)
    assert vectors.shape == (HEIGHT // 16, WIDTH // 16, 2)
    # backward vectors at 1/4 size: the block's content was (dy, dx) / 4 away
    inner = (slice(2, -2), slice(2, -2))  # content at the edges comes from outside
    textured = textured_blocks(previous, matcher.cell)[inner]
    assert textured.sum() > 100
    right = (vectors[inner] == (dy // 4, dx // 4)).all(axis=-1)
    assert right[textured].mean() > 0.85, right[textured].mean()
    # and a still frame is still
    assert not matcher.motion(previous, previous).any()


def test_block_matcher_refines_only_the_active_blocks(footage):
    matcher = BlockMatcher()
    previous = matcher.luma(window(footage[0]))
    current = matcher.luma(window(footage[0], 4, 4))  # 1 step at 1/4 size: the fine level
    active = np.zeros((HEIGHT // 16, WIDTH // 16), bool)
    active[10:14, 10:30] = True
    vectors = matcher.motion(current, previous, active)
    moved = (vectors == (1, 1)).all(axis=-1)
    assert moved[active].mean() > 0.9
    assert not moved[~active].any()  # the coarse level (8-pixel steps) cannot see 4 pixels


def test_near_boundary_is_the_band_a_move_can_change():
    blocks = np.zeros((10, 12), bool)
    blocks[5:, :] = True
    band = near_boundary(blocks, 2)
    assert band[3:7].all() and not band[:3].any() and not band[7:].any()
    assert not near_boundary(np.ones((4, 4), bool), 2).any()


@pytest.mark.parametrize("dy, dx", [(16, 16), (-16, 16), (0, -16), (16, 0)])
def test_propagated_mask_of_a_shifted_frame_is_the_shifted_mask(footage, segmenter, dy, dx):
    first = window(footage[0])
    moved = window(footage[0], dy, dx)
    propagating = PropagatingSegmenter(segmenter, 10)
    key = propagating.block_roi(first, key_frame=True)
    assert propagating.segmented
    assert np.array_equal(key, segmenter.block_roi(first))
    carried = propagating.block_roi(moved)
    assert not propagating.segmented
    # mask[b] of the moved frame = mask[b + (dy, dx) / 16] of the first
    by, bx = dy // 16, dx // 16
    rows, cols = key.shape
    expected = key[max(by, 0):rows + min(by, 0), max(bx, 0):cols + min(bx, 0)]
    got = carried[max(-by, 0):rows + min(-by, 0), max(-bx, 0):cols + min(-bx, 0)]
    assert binary_iou(expected, got) > 0.98, binary_iou(expected, got)
    # the mask moved: holding it still would not match (so this test can fail)
    held = key[max(-by, 0):rows + min(-by, 0), max(-bx, 0):cols + min(-bx, 0)]
    assert binary_iou(expected, held) < binary_iou(expected, got) - 0.01
    # and the segmenter on the moved frame agrees with the carried mask
    assert binary_iou(segmenter.block_roi(moved), carried) > 0.9


def test_key_frames_and_every_nth_frame_are_segmented(footage, segmenter):
    upright = footage[0]
    flipped = np.ascontiguousarray(upright[::-1])  # sky below: a very different mask
    gop, every = 4, 3
    propagating = PropagatingSegmenter(segmenter, every)
    segmented, masks = [], []
    for index in range(12):
        frame = flipped if index in (4, 8, 11) else upright
        masks.append(propagating.block_roi(frame, key_frame=index % gop == 0))
        segmented.append(propagating.segmented)
        if propagating.segmented:  # a full segmentation is exactly the segmenter's mask
            assert np.array_equal(masks[-1], segmenter.block_roi(frame))
    # key frames 0, 4, 8; 3, 7 and 11 are the 3rd frame after a full segmentation
    assert [i for i, s in enumerate(segmented) if s] == [0, 3, 4, 7, 8, 11]
    assert (propagating.segmented_frames, propagating.carried_frames) == (6, 6)
    # the flipped key frames' masks are not the upright ones carried on
    assert binary_iou(masks[4], masks[3]) < 0.7
    # a new frame size is segmented in full, whatever the schedule
    small = np.ascontiguousarray(upright[:256, :480])
    propagating.block_roi(small)
    assert propagating.segmented
    propagating.block_roi(small)
    assert not propagating.segmented
    propagating.reset()
    propagating.block_roi(small)
    assert propagating.segmented


def test_every_frame_is_the_segmenter_with_the_config_hysteresis(footage, segmenter):
    hold = load_core_config().mask.hysteresis_frames
    assert hold > 0
    propagating = PropagatingSegmenter(segmenter, 1, hold)
    got = [propagating.block_roi(frame) for frame in footage]
    expected = hold_blocks([segmenter.block_roi(frame) for frame in footage], hold)
    assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    assert propagating.carried_frames == 0
    assert "every frame" in propagating.name


def test_offline_masks_follow_the_sensor_schedule(footage):
    """sac eval --model --segment-every N: key frames every gop from frame 0 and every N-th
    frame are the segmenter's own masks; the rest are carried."""
    clip = load_clip("sample:project_video01", 0, 6)
    mask_cfg = dataclasses.replace(load_core_config().mask, hysteresis_frames=0)
    per_frame, description = clip_blocks(clip, mask_cfg, "default", segment_every=1, gop=30)
    assert "every frame" in description
    carried, description = clip_blocks(clip, mask_cfg, "default", segment_every=2, gop=4)
    assert "every 2 frames" in description
    for index in (0, 2, 4):  # key frames 0 and 4, the 2nd frame after one: 2
        assert np.array_equal(carried[index], per_frame[index])
    for index in (1, 3, 5):
        assert binary_iou(per_frame[index], carried[index]) > 0.9


@pytest.mark.parametrize("value", [0, -1, 1001, 2.5, True, "3"])
def test_segment_every_must_be_a_whole_number_of_frames(value):
    with pytest.raises(SacError, match="segment_every must be a whole number"):
        check_segment_every(value)


def test_matcher_refuses_bad_inputs():
    with pytest.raises(SacError, match="search range"):
        BlockMatcher(search=0)
    matcher = BlockMatcher()
    with pytest.raises(SacError, match="RGB uint8"):
        matcher.luma(np.zeros((64, 64), np.uint8))
    with pytest.raises(SacError, match="smaller than one block"):
        matcher.luma(np.zeros((8, 64, 3), np.uint8))
    # an odd size is padded to its block grid, partial edge blocks included
    assert matcher.luma(np.zeros((17, 33, 3), np.uint8)).shape == (2 * 4, 3 * 4)
    with pytest.raises(SacError, match="different sizes"):
        matcher.motion(np.zeros((16, 16), np.float32), np.zeros((32, 16), np.float32))


@pytest.mark.parametrize("args, fragment", [
    (["--segment-every", "3"], "--segment-every goes with --model"),
    (["--model", "default", "--segment-every", "0"], "--segment-every must be in 1-1000"),
])
def test_sac_eval_segment_every_errors_are_one_line(capsys, tmp_path, args, fragment):
    code = main(["eval", "sample", "--frames", "2", "--out", str(tmp_path / "out"), *args])
    err = capsys.readouterr().err
    assert code == 2 and fragment in err and "Traceback" not in err, err


def test_the_still_carry_holds_the_last_segmented_mask(footage, segmenter):
    """mask.carry still: between segmentations the last mask as it was (no matching), on
    the same schedule; the motion carry differs from it on a moving frame."""
    first, moved = window(footage[0]), window(footage[0], 16, 16)
    still = PropagatingSegmenter(segmenter, 3, carry="still")
    assert "held still" in still.name
    key = still.block_roi(first, key_frame=True)
    assert np.array_equal(still.block_roi(moved), key) and not still.segmented
    assert np.array_equal(still.block_roi(moved), key) and not still.segmented
    assert not np.array_equal(still.block_roi(moved), key) and still.segmented  # 3rd frame
    assert still.block_roi(window(footage[0], 0, 16)).shape == key.shape
    assert not still.segmented
    still.block_roi(np.ascontiguousarray(footage[0][:256, :480]))  # a new size: segmented
    assert still.segmented
    moving = PropagatingSegmenter(segmenter, 3)
    moving.block_roi(first, key_frame=True)
    assert not np.array_equal(moving.block_roi(moved), key)
    with pytest.raises(SacError, match="unknown mask carry 'flow'"):
        PropagatingSegmenter(segmenter, 3, carry="flow")


@pytest.mark.parametrize("key, value, fragment", [
    ("segment_every", 0, "mask.segment_every must be a whole number in 1-1000"),
    ("segment_every", 2.5, "mask.segment_every must be a whole number"),
    ("carry", "flow", "mask.carry must be motion or still"),
])
def test_config_mask_schedule_is_validated(tmp_path, key, value, fragment):
    import yaml

    data = yaml.safe_load((REPO / "config" / "sac.yaml").read_text())
    data["mask"][key] = value
    path = tmp_path / "sac.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SacError, match=fragment):
        load_core_config(path)
