"""Class-level QP offsets (issue 20 item 3): class map -> per-block offsets -> x264/x265."""

from __future__ import annotations

import numpy as np
import pytest

from sac_ros.core import metrics
from sac_ros.core.classes import CATEGORIES, CLASS_CATEGORIES, CLASS_MAPS, class_categories
from sac_ros.core.classqp import ClassQp, check_offsets
from sac_ros.core.codec import EncoderSettings, offset_regions
from sac_ros.core.errors import SacError
from sac_ros.core.io import load_clip
from sac_ros.core.mask import expand_blocks
from sac_ros.core.sac import SacDecoder, SacEncoder

OFFSETS = {"human": 0, "vehicle": 0, "object": 1, "void": 2, "flat": 3, "construction": 6,
           "nature": 9, "sky": 12}
# Cityscapes trainIds
ROAD, BUILDING, VEGETATION, SKY, PERSON, CAR = 0, 2, 8, 10, 11, 13


def test_each_category_is_a_known_one_and_the_papers_non_roi_sets_follow_them():
    for name, table in CLASS_CATEGORIES.items():
        assert name in CLASS_MAPS
        assert all(set(c) <= set(CATEGORIES) for c in table.values())
        background = {i for i, c in table.items() if set(c) <= {"construction", "nature", "sky"}}
        if name == "kitti_step":  # the authors keep wall, fence and terrain as ROI there
            assert CLASS_MAPS[name].non_roi_ids < background
        else:
            assert background == CLASS_MAPS[name].non_roi_ids
    assert class_categories("cityscapes_train_ids", 255) == ("void",)
    with pytest.raises(SacError, match="unknown class map"):
        class_categories("ade20k", 0)


def test_a_block_takes_the_smallest_offset_of_its_classes():
    qp = ClassQp(OFFSETS, "cityscapes_train_ids")
    ids = np.full((48, 64), SKY, np.uint8)
    ids[:16, 16:32] = VEGETATION
    ids[5, 20] = CAR              # one car pixel in a vegetation block
    ids[16:32, :16] = BUILDING
    ids[32:, :] = ROAD
    ids[40, 60] = PERSON
    offsets = qp.block_offsets(ids)
    assert offsets.dtype == np.float32 and offsets.shape == (3, 4)
    assert offsets.tolist() == [[12, 0, 12, 12], [6, 12, 12, 12], [3, 3, 3, 0]]
    assert qp.class_offset(255) == OFFSETS["void"]


def test_the_mask_decides_roi_or_not_and_the_classes_the_level_on_each_side():
    qp = ClassQp(OFFSETS, "cityscapes_train_ids")
    ids = np.full((32, 48), SKY, np.uint8)
    ids[16:, 16:32] = CAR
    ids[0, 40] = PERSON  # one person pixel in a block the mask leaves out
    held = np.array([[True, False, False], [True, True, False]])  # e.g. hysteresis
    assert qp.roi_cap == OFFSETS["flat"]  # the largest of road, people, vehicles, ...
    assert qp.background_floor == OFFSETS["construction"]  # the smallest of the rest
    assert ClassQp(OFFSETS, "four_class").roi_cap == 0  # its one ROI class: the smallest
    assert qp.block_offsets(ids, held).tolist() == [[3, 12, 6], [3, 0, 12]]
    assert qp.block_offsets(ids).tolist() == [[12, 12, 0], [12, 0, 12]]  # the classes alone
    with pytest.raises(SacError, match="ROI block mask is"):
        qp.block_offsets(ids, held[:1])


def test_partial_edge_blocks_count_only_their_real_pixels():
    qp = ClassQp(OFFSETS, "cityscapes_train_ids")
    ids = np.full((20, 37), SKY, np.uint8)  # 2 x 3 blocks, the last row and column partial
    ids[19, 36] = ROAD
    assert qp.block_offsets(ids).tolist() == [[12, 12, 12], [12, 12, 3]]


def test_merged_classes_take_the_smallest_offset_they_cover():
    qp = ClassQp(OFFSETS, "four_class")
    assert [qp.class_offset(i) for i in range(4)] == [0, 6, 9, 12]
    binary = ClassQp(OFFSETS, "binary")
    assert [binary.class_offset(i) for i in range(2)] == [6, 0]


@pytest.mark.parametrize("offsets, message", [
    ({**OFFSETS, "sky": 60}, "sky must be a QP offset in -51 to 51"),
    ({**OFFSETS, "sky": True}, "sky must be a QP offset"),
    ({k: v for k, v in OFFSETS.items() if k != "flat"}, "missing: flat"),
    ({**OFFSETS, "road": 3}, "unknown: road"),
    ([3, 4], "must map categories"),
])
def test_bad_offsets_are_one_line_errors(offsets, message):
    with pytest.raises(SacError, match=message):
        check_offsets(offsets)


def test_bad_class_map_and_block_size_are_refused():
    with pytest.raises(SacError, match="unknown class map"):
        ClassQp(OFFSETS, "pascal")
    with pytest.raises(SacError, match="block_size 16, 32 or 64"):
        ClassQp(OFFSETS, "four_class", block_size=8)
    with pytest.raises(SacError, match="H x W ids"):
        ClassQp(OFFSETS, "four_class").block_offsets(np.zeros((4, 4, 3), np.uint8))


def test_offset_regions_cover_each_level_exactly():
    offsets = np.array([[0, 3, 3], [9, 9, 3], [0, 0, 0]], np.float32)
    rects, milli = offset_regions(offsets, qp_offset=5.0)  # float: the block's own offsets
    painted = np.zeros(offsets.shape, np.float32)
    for (top, bottom, left, right), value in zip(rects, milli, strict=True):
        assert not painted[top:bottom, left:right].any()  # no overlaps
        painted[top:bottom, left:right] = value / 1000
    assert (painted == offsets).all()
    rects, milli = offset_regions(offsets > 0, qp_offset=5.0)  # bool: the binary mode
    assert set(milli.tolist()) == {5000}
    with pytest.raises(SacError, match="within -51 to"):
        offset_regions(np.full((2, 2), 60.0, np.float32), 0.0)


@pytest.fixture(scope="module")
def clip():
    return load_clip("sample:project_video01", 0, 6)


def _region_psnr(codec, clip, offsets):
    """Encode and decode with per-block offsets; (bytes, PSNR of rows 0-9, of rows 10+)."""
    height, width = clip.frames[0].shape[:2]
    encoder = SacEncoder(width, height, 26.0, 26.0, EncoderSettings(codec, gop=6), "roi_qp")
    decoder = SacDecoder(parallel=False)
    blocks = offsets == 0
    top = np.zeros(offsets.shape, bool)
    top[:10] = True
    top_px = expand_blocks(top, height, width)
    total, psnr_top, psnr_rest = 0, [], []
    for rgb in clip.frames:
        packet = encoder.encode(rgb, blocks, offsets)
        total += packet.num_bytes
        out = decoder.decode(packet).rgb
        psnr_top.append(metrics.psnr(rgb, out, top_px))
        psnr_rest.append(metrics.psnr(rgb, out, ~top_px))
    encoder.close()
    decoder.close()
    return total, float(np.mean(psnr_top)), float(np.mean(psnr_rest))


@pytest.mark.parametrize("codec", ["h264", "hevc"])
def test_the_encoder_honours_each_level(codec, clip):
    """Rows 0-9 at +3 or +12, the rest at 0 / +6: each region's quality follows its own
    offset, so the side data carries several levels, not one."""
    rows, cols = -(-clip.height // 16), -(-clip.width // 16)
    light = np.zeros((rows, cols), np.float32)
    light[:10], light[10:20] = 3.0, 6.0
    heavy = light.copy()
    heavy[:10] = 12.0
    bytes_light, top_light, rest_light = _region_psnr(codec, clip, light)
    bytes_heavy, top_heavy, rest_heavy = _region_psnr(codec, clip, heavy)
    assert bytes_heavy < 0.95 * bytes_light
    assert top_heavy < top_light - 1.5, (top_heavy, top_light)
    assert abs(rest_heavy - rest_light) < 0.5, (rest_heavy, rest_light)
    flat = _region_psnr(codec, clip, np.zeros((rows, cols), np.float32))
    assert flat[0] > bytes_light  # the +3 / +6 levels are not dropped either


def test_qp_offsets_must_fit_the_block_grid(clip):
    encoder = SacEncoder(clip.width, clip.height, 26.0, 30.0, EncoderSettings(), "roi_qp")
    with pytest.raises(SacError, match="QP offsets are"):
        encoder.encode(clip.frames[0], None, np.zeros((3, 3), np.float32))
    encoder.close()


def _config_with(tmp_path, **sections):
    import yaml

    from sac_ros.config import config_dir

    data = yaml.safe_load((config_dir() / "sac.yaml").read_text())
    data.update(sections)
    path = tmp_path / "sac.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_the_shipped_config_gives_every_category_an_offset():
    from sac_ros.config import load_core_config

    cfg = load_core_config()
    assert set(cfg.class_qp.offsets) == set(CATEGORIES)
    ClassQp(cfg.class_qp.offsets, "four_class")  # valid as shipped


@pytest.mark.parametrize("section, message", [
    ({"enabled": "yes", "offsets": OFFSETS}, "class_qp.enabled must be true or false"),
    ({"enabled": True}, "class_qp.enabled needs class_qp.offsets"),
    ({"offsets": {**OFFSETS, "sky": 99}}, "class_qp.offsets.sky must be a QP offset"),
    ({"offsets": OFFSETS, "levels": 3}, "unknown key.*class_qp.*levels"),
])
def test_bad_class_qp_config_is_a_one_line_error(tmp_path, section, message):
    from sac_ros.config import load_core_config

    with pytest.raises(SacError, match=message):
        load_core_config(_config_with(tmp_path, class_qp=section))
