"""Class maps, the 16x16 block mask, and the polygon / label mask sources."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sac_ros.core.classes import CLASS_MAPS, get_class_map
from sac_ros.core.errors import SacError
from sac_ros.core.mask import (
    BLOCK_SIZE,
    LabelMaskSource,
    PolygonMaskSource,
    block_grid,
    block_mask,
    expand_blocks,
    pack_blocks,
    roi_pixels,
    unpack_blocks,
)

# ------------------------------------------------------------------ class maps

DEFAULT_NON_ROI = {
    "cityscapes_label_ids": {11, 12, 13, 14, 15, 16, 21, 22, 23},
    "cityscapes_train_ids": {2, 3, 4, 8, 9, 10},
    "kitti_step": {2, 8, 10},
    "four_class": {1, 2, 3},
}


@pytest.mark.parametrize("name, expected", sorted(DEFAULT_NON_ROI.items()))
def test_default_non_roi_sets(name, expected):
    class_map = get_class_map(name)
    assert set(class_map.non_roi_ids) == expected
    # Every id 0-255 is ROI except exactly the non-ROI set (ignore 255 included).
    ids = np.arange(256, dtype=np.uint8).reshape(16, 16)
    roi = roi_pixels(ids, class_map)
    assert roi.dtype == bool and roi.shape == (16, 16)
    assert set(np.flatnonzero(~roi.ravel()).tolist()) == expected
    assert roi.ravel()[255]


def test_non_roi_override():
    class_map = get_class_map("cityscapes_label_ids")
    ids = np.array([[7, 11, 23], [26, 21, 255]], dtype=np.uint8)
    default = roi_pixels(ids, class_map)
    np.testing.assert_array_equal(default, [[True, False, False], [True, False, True]])
    # Override: only road (7) and sky (23) are non-ROI now; buildings become ROI.
    override = roi_pixels(ids, class_map, frozenset({7, 23}))
    np.testing.assert_array_equal(override, [[False, True, False], [True, True, True]])
    # The shared definition itself is unchanged by an override.
    assert set(class_map.non_roi_ids) == DEFAULT_NON_ROI["cityscapes_label_ids"]


def test_override_rejects_out_of_range_ids():
    with pytest.raises(SacError, match="outside 0-255"):
        roi_pixels(np.zeros((2, 2), np.uint8), get_class_map("four_class"), frozenset({256}))


def test_unknown_class_map():
    with pytest.raises(SacError, match="unknown class map 'ade20k'") as info:
        get_class_map("ade20k")
    for name in CLASS_MAPS:
        assert name in str(info.value)


def test_roi_pixels_needs_2d():
    with pytest.raises(SacError, match="2-D"):
        roi_pixels(np.zeros((4, 4, 3), np.uint8), get_class_map("four_class"))


# ------------------------------------------------------------------ block mask

def test_any_pixel_rule():
    roi = np.zeros((64, 96), bool)
    roi[17, 35] = True  # one pixel in block (1, 2)
    blocks = block_mask(roi)
    assert blocks.shape == (4, 6)
    expected = np.zeros((4, 6), bool)
    expected[1, 2] = True
    np.testing.assert_array_equal(blocks, expected)
    # Block corners: first and last pixel of a block both mark that block only.
    roi[:] = False
    roi[32, 80] = roi[47, 95] = True
    expected[:] = False
    expected[2, 5] = True
    np.testing.assert_array_equal(block_mask(roi), expected)


def test_partial_edge_blocks_odd_size():
    height, width = 541, 962
    assert block_grid(height, width) == (34, 61)
    roi = np.zeros((height, width), bool)
    roi[height - 1, width - 1] = True
    blocks = block_mask(roi)
    assert blocks.shape == (34, 61)
    assert blocks[33, 60] and blocks.sum() == 1
    roi[:] = False
    roi[height - 1, 0] = True  # last (partial, 13-row) block row
    roi[0, width - 1] = True  # last (partial, 2-column) block column
    blocks = block_mask(roi)
    assert blocks[33, 0] and blocks[0, 60] and blocks.sum() == 2


def test_960x540_grid_has_partial_row():
    assert block_grid(540, 960) == (34, 60)
    roi = np.zeros((540, 960), bool)
    roi[539, 480] = True
    assert block_mask(roi)[33, 30]


@pytest.mark.parametrize("fill", [True, False])
def test_all_and_no_roi(fill):
    roi = np.full((541, 962), fill)
    blocks = block_mask(roi)
    assert blocks.shape == (34, 61)
    assert blocks.all() if fill else not blocks.any()


def test_expand_blocks_crops_to_exact_size():
    rng = np.random.default_rng(3)
    blocks = rng.random((34, 61)) < 0.5
    pixels = expand_blocks(blocks, 541, 962)
    assert pixels.shape == (541, 962)
    assert pixels[540, 961] == blocks[33, 60]
    assert pixels[0, 0] == blocks[0, 0]
    assert pixels[16 * 5 + 7, 16 * 9 + 15] == blocks[5, 9]
    # Round trip: the block mask of the expanded mask is the block mask.
    np.testing.assert_array_equal(block_mask(pixels), blocks)
    # Each block's pixels (cropped) carry its value.
    np.testing.assert_array_equal(pixels[528:541, 960:962], blocks[33, 60])


@pytest.mark.parametrize("shape", [(1, 1), (3, 5), (4, 2), (34, 61), (34, 60)])
def test_pack_unpack_round_trip(shape):
    rng = np.random.default_rng(sum(shape))
    blocks = rng.random(shape) < 0.4
    data = pack_blocks(blocks)
    assert isinstance(data, bytes)
    assert len(data) == -(-blocks.size // 8)
    np.testing.assert_array_equal(unpack_blocks(data, *shape), blocks)


def test_pack_is_row_major_msb_first():
    blocks = np.zeros((2, 8), bool)
    blocks[0, 0] = blocks[1, 7] = True
    assert pack_blocks(blocks) == bytes([0b10000000, 0b00000001])


@pytest.mark.parametrize("delta", [-1, 1])
def test_unpack_wrong_length(delta):
    data = pack_blocks(np.ones((34, 61), bool))
    bad = data[:delta] if delta < 0 else data + b"\x00"
    with pytest.raises(SacError, match="34x61"):
        unpack_blocks(bad, 34, 61)


# ------------------------------------------------------------------ polygon source

def test_polygon_lower_half():
    source = PolygonMaskSource([[0, 0.5], [1, 0.5], [1, 1], [0, 1]])
    frame = np.zeros((40, 64, 3), np.uint8)
    roi = source.roi_pixels(0, frame)
    assert roi.shape == (40, 64) and roi.dtype == bool
    assert not roi[:20].any()
    assert roi[20:].all()
    blocks = block_mask(roi)
    np.testing.assert_array_equal(blocks[:, 0], [False, True, True])
    # A frame of another size gets its own raster.
    other = source.roi_pixels(1, np.zeros((33, 17, 3), np.uint8))
    assert other.shape == (33, 17)
    assert not other[:15].any() and other[18:].all()


def test_polygon_triangle_is_not_rectangle():
    source = PolygonMaskSource([[0, 0], [1, 0], [0, 1]])
    roi = source.roi_pixels(0, np.zeros((100, 100, 3), np.uint8))
    assert roi[2, 2] and not roi[97, 97]
    assert 0.4 < roi.mean() < 0.6


@pytest.mark.parametrize("polygon, message", [
    ([[0, 0], [1, 1]], "at least three"),
    ([], "at least three"),
    ([[0, 0], [1, 0], [1]], "at least three"),
    ([[0, 0], [1.5, 0], [1, 1]], r"normalised to \[0, 1\]"),
    ([[0, -0.1], [1, 0], [1, 1]], r"normalised to \[0, 1\]"),
])
def test_polygon_rejects_bad_points(polygon, message):
    with pytest.raises(SacError, match=message):
        PolygonMaskSource(polygon)


# ------------------------------------------------------------------ label sources

H, W = 32, 48


def cityscapes_label_ids() -> np.ndarray:
    labels = np.full((H, W), 7, np.uint8)  # road
    labels[:8] = 23  # sky
    labels[8:16, :24] = 11  # building
    labels[8:16, 24:] = 21  # vegetation
    labels[20:26, 10:20] = 26  # car
    labels[0, 0] = 255  # ignore label counts as ROI
    return labels


def expected_cityscapes_roi() -> np.ndarray:
    roi = np.ones((H, W), bool)
    roi[:16] = False
    roi[0, 0] = True
    return roi


@pytest.fixture
def cityscapes_tree(tmp_path):
    label_dir = tmp_path / "gtFine" / "train" / "aachen"
    label_dir.mkdir(parents=True)
    path = label_dir / "aachen_000000_000019_gtFine_labelIds.png"
    Image.fromarray(cityscapes_label_ids(), mode="L").save(path)
    # gtFine also holds color and instance PNGs; they must not be mistaken for labelIds.
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(
        label_dir / "aachen_000000_000019_gtFine_color.png")
    return tmp_path / "gtFine", path


FRAME_NAME = "leftImg8bit/train/aachen/aachen_000000_000019_leftImg8bit.png"


def test_cityscapes_label_folder(cityscapes_tree):
    folder, _ = cityscapes_tree
    source = LabelMaskSource(folder, "cityscapes")
    frame = np.zeros((H, W, 3), np.uint8)
    roi = source.roi_pixels(0, frame, FRAME_NAME)
    np.testing.assert_array_equal(roi, expected_cityscapes_roi())
    blocks = block_mask(roi)
    np.testing.assert_array_equal(blocks, [[True, False, False], [True, True, True]])


def test_cityscapes_single_label_file_is_static(cityscapes_tree):
    _, path = cityscapes_tree
    source = LabelMaskSource(str(path), "cityscapes")
    frame = np.zeros((H, W, 3), np.uint8)
    for index in range(2):
        np.testing.assert_array_equal(source.roi_pixels(index, frame, None),
                                      expected_cityscapes_roi())


def test_cityscapes_override_ids(cityscapes_tree):
    folder, _ = cityscapes_tree
    source = LabelMaskSource(folder, "cityscapes", non_roi_ids=[7])  # only road is non-ROI
    roi = source.roi_pixels(0, np.zeros((H, W, 3), np.uint8), FRAME_NAME)
    labels = cityscapes_label_ids()
    np.testing.assert_array_equal(roi, labels != 7)


def test_kitti_step_panoptic(tmp_path):
    semantic = np.full((H, W), 0, np.uint8)  # road
    semantic[:6] = 10  # sky
    semantic[6:12] = 2  # building
    semantic[12:16, :20] = 8  # vegetation
    semantic[20:30, 30:40] = 13  # car
    panoptic = np.zeros((H, W, 3), np.uint8)
    panoptic[..., 0] = semantic
    panoptic[20:30, 30:40, 1] = 7  # instance ids in G/B must be ignored
    panoptic[..., 2] = 10
    folder = tmp_path / "panoptic_maps"
    label_dir = folder / "train" / "0000"
    label_dir.mkdir(parents=True)
    Image.fromarray(panoptic, mode="RGB").save(label_dir / "000000.png")
    Image.fromarray(np.zeros_like(panoptic)).save(label_dir / "000001.png")
    source = LabelMaskSource(folder, "kitti_step")
    frame = np.zeros((H, W, 3), np.uint8)
    roi = source.roi_pixels(0, frame, "0000/000000.png")
    expected = np.ones((H, W), bool)
    expected[:12] = False
    expected[12:16, :20] = False
    np.testing.assert_array_equal(roi, expected)
    # The next frame finds its own label (all road -> all ROI).
    assert source.roi_pixels(1, frame, "0000/000001.png").all()


def test_label_size_mismatch(cityscapes_tree):
    folder, _ = cityscapes_tree
    source = LabelMaskSource(folder, "cityscapes")
    with pytest.raises(SacError) as info:
        source.roi_pixels(0, np.zeros((H + 2, W + 4, 3), np.uint8), FRAME_NAME)
    message = str(info.value)
    assert f"{W}x{H}" in message and f"{W + 4}x{H + 2}" in message
    assert "aachen_000000_000019_gtFine_labelIds.png" in message


def test_missing_label(cityscapes_tree):
    folder, _ = cityscapes_tree
    source = LabelMaskSource(folder, "cityscapes")
    with pytest.raises(SacError, match="no label for frame .*aachen_000000_000020"):
        source.roi_pixels(0, np.zeros((H, W, 3), np.uint8),
                          "leftImg8bit/train/aachen/aachen_000000_000020_leftImg8bit.png")
    with pytest.raises(SacError, match="image-folder input"):
        source.roi_pixels(0, np.zeros((H, W, 3), np.uint8), None)


def test_missing_label_path_and_empty_folder(tmp_path):
    with pytest.raises(SacError, match="does not exist"):
        LabelMaskSource(tmp_path / "nope", "cityscapes")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SacError, match="no label PNGs"):
        LabelMaskSource(tmp_path / "empty", "cityscapes")
    with pytest.raises(SacError, match="unknown label layout"):
        LabelMaskSource(tmp_path, "mapillary")


def test_label_channel_checks(tmp_path):
    rgb = tmp_path / "rgb.png"
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(rgb)
    grey = tmp_path / "grey.png"
    Image.fromarray(np.zeros((H, W), np.uint8)).save(grey)
    frame = np.zeros((H, W, 3), np.uint8)
    with pytest.raises(SacError, match="one channel"):
        LabelMaskSource(rgb, "cityscapes").roi_pixels(0, frame)
    with pytest.raises(SacError, match="RGB PNG"):
        LabelMaskSource(grey, "kitti_step").roi_pixels(0, frame)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    with pytest.raises(SacError, match="cannot read label image"):
        LabelMaskSource(broken, "cityscapes").roi_pixels(0, frame)


def test_block_size_constant():
    assert BLOCK_SIZE == 16
