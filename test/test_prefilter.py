"""Non-ROI pre-filtering (issue 20 item 2): ROI blocks untouched, non-ROI bytes down."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from sac_ros.core import metrics
from sac_ros.core.codec import EncoderSettings
from sac_ros.core.errors import SacError
from sac_ros.core.frames import PlaneLayout
from sac_ros.core.io import load_clip
from sac_ros.core.mask import PolygonMaskSource, block_mask, expand_blocks
from sac_ros.core.prefilter import NONROI_FILTERS, Prefilter
from sac_ros.core.sac import SacDecoder, SacEncoder

FILTERS = [Prefilter("blur", 2.0), Prefilter("blur", 5.0), Prefilter("downscale", 2.0),
           Prefilter("downscale", 3.5)]


@pytest.fixture(scope="module")
def clip():
    return load_clip("sample:project_video01", 0, 8)


@pytest.fixture(scope="module")
def road_blocks(clip):
    polygon = [[0.0, 1.0], [0.0, 0.6], [0.44, 0.555], [0.54, 0.555], [1.0, 0.72], [1.0, 1.0]]
    return block_mask(PolygonMaskSource(polygon).roi_pixels(0, clip.frames[0]))


@pytest.mark.parametrize("prefilter", FILTERS, ids=str)
@pytest.mark.parametrize("size", [(960, 540), (250, 142)])
def test_roi_blocks_are_untouched_bit_for_bit(clip, prefilter, size):
    width, height = size
    rgb = np.asarray(Image.fromarray(clip.frames[0]).resize(size))
    layout = PlaneLayout(height, width)
    rng = np.random.default_rng(1)
    blocks = rng.random((layout.rows, layout.cols)) < 0.5  # any shape, edge blocks too
    original = layout.rgb_to_i420(rgb)
    filtered = original.copy()
    prefilter.apply(layout, filtered, blocks)
    keep = blocks[:, None, :, None]
    changed = 0
    for before, after in zip(layout.planes(original), layout.planes(filtered), strict=True):
        assert (np.broadcast_to(keep, before.shape) <= (before == after)).all()  # ROI exact
        changed += int((before != after).sum())
    assert changed > 0.2 * (~blocks).sum() * 256  # the non-ROI blocks did change


def test_the_filter_lowers_non_roi_detail(clip, road_blocks):
    layout = PlaneLayout(clip.height, clip.width)
    original = layout.rgb_to_i420(clip.frames[0])
    y_tiles = layout.planes(original)[0]
    non = ~road_blocks[:, None, :, None]

    def detail(i420):  # mean absolute horizontal gradient of the non-ROI luma
        grad = np.abs(np.diff(layout.planes(i420)[0].astype(np.int16), axis=3))
        return grad[np.broadcast_to(non, y_tiles.shape)[..., 1:]].mean()

    details = []
    for prefilter in (Prefilter("blur", 1.0), Prefilter("blur", 3.0)):
        filtered = original.copy()
        prefilter.apply(layout, filtered, road_blocks)
        details.append(detail(filtered))
    assert detail(original) > details[0] > details[1]


def test_none_and_all_roi_change_nothing(clip):
    layout = PlaneLayout(clip.height, clip.width)
    original = layout.rgb_to_i420(clip.frames[0])
    for prefilter, blocks in ((Prefilter("none"), np.zeros((layout.rows, layout.cols), bool)),
                              (Prefilter("blur", 4.0), np.ones((layout.rows, layout.cols), bool))):
        frame = original.copy()
        prefilter.apply(layout, frame, blocks)
        assert (frame == original).all()
    assert not Prefilter().active and Prefilter().describe() == "none"


@pytest.mark.parametrize("kind, strength, message", [
    ("median", 2.0, "unknown nonroi_filter 'median'"),
    ("blur", 0.0, "outside 0.1-32 for blur"),
    ("downscale", 0.5, "outside 1-16 for downscale"),
    ("downscale", "x", "must be a number"),
])
def test_bad_settings_are_one_line_errors(kind, strength, message):
    with pytest.raises(SacError, match=message):
        Prefilter(kind, strength)
    assert set(NONROI_FILTERS) == {"none", "blur", "downscale"}


def _code(clip, blocks, mode, prefilter):
    """(ROI payload bytes or all bytes, non-ROI stream bytes, ROI PSNR, non-ROI PSNR)."""
    encoder = SacEncoder(clip.width, clip.height, 24.0, 30.0, EncoderSettings(gop=8), mode,
                         prefilter=prefilter)
    decoder = SacDecoder(parallel=False)
    roi_px = expand_blocks(blocks, clip.height, clip.width)
    sizes, non_sizes, roi, non = 0, 0, [], []
    for rgb in clip.frames:
        packet = encoder.encode(rgb, blocks)
        sizes += packet.num_bytes
        non_sizes += len(packet.non_roi.data) if packet.non_roi else 0
        out = decoder.decode(packet).rgb
        roi.append(metrics.psnr(rgb, out, roi_px))
        non.append(metrics.psnr(rgb, out, ~roi_px))
    encoder.close()
    decoder.close()
    return sizes, non_sizes, float(np.mean(roi)), float(np.mean(non))


@pytest.mark.parametrize("mode", ["dual_crf", "roi_qp"])
def test_prefiltered_non_roi_costs_fewer_bytes_at_the_same_roi_quality(clip, road_blocks,
                                                                       mode):
    plain = _code(clip, road_blocks, mode, None)
    for prefilter in (Prefilter("blur", 2.0), Prefilter("downscale", 2.0)):
        filtered = _code(clip, road_blocks, mode, prefilter)
        assert filtered[0] < 0.95 * plain[0], (prefilter, filtered, plain)
        if mode == "dual_crf":  # the saving is the non-ROI stream's
            assert filtered[1] < 0.9 * plain[1]
        assert abs(filtered[2] - plain[2]) < 0.3  # ROI quality is the CRF's, not the filter's


def test_uniform_mode_has_no_non_roi_to_filter(clip):
    encoder = SacEncoder(clip.width, clip.height, 24.0, settings=EncoderSettings(),
                         mode="uniform", prefilter=Prefilter("blur", 3.0))
    assert encoder.prefilter is None
    encoder.close()


@pytest.mark.parametrize("section, message", [
    ({"nonroi_filter": "sharpen"}, "config prefilter: unknown nonroi_filter 'sharpen'"),
    ({"nonroi_filter": "downscale", "nonroi_filter_strength": 40}, "outside 1-16"),
    ({"strength": 2}, "unknown key.*prefilter.*strength"),
])
def test_bad_prefilter_config_is_a_one_line_error(tmp_path, section, message):
    import yaml

    from sac_ros.config import config_dir, load_core_config

    data = yaml.safe_load((config_dir() / "sac.yaml").read_text())
    data["prefilter"] = section
    path = tmp_path / "sac.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SacError, match=message):
        load_core_config(path)
    assert isinstance(load_core_config().prefilter, Prefilter)  # the shipped one loads


def test_sac_eval_adds_the_task_coding_rows_at_the_pairs_bytes(clip, road_blocks):
    """Issue 20 item 5, offline: beside dual_crf and roi_qp, `sac eval` codes dual_crf and
    roi_qp with the pre-filter and roi_qp with class offsets, each at the SAC pair's bytes."""
    from sac_ros.eval.coder import ClipCoder
    from sac_ros.eval.equal_bytes import EqualBytesPlan, _task_coding_rows

    frames = clip.frames[:4]
    coder = ClipCoder(frames, [road_blocks] * 4, EncoderSettings(gop=4))
    plan = EqualBytesPlan(codecs=("h264",), crf_sweep={"h264": [23, 27]}, delta_crfs=(9,),
                          roi_qp_offsets={"h264": [6.0]}, uniform_crf={"h264": 23.0},
                          pair={"h264": (22.0, 31.0)}, matched_roi_crf={"h264": 21.0},
                          tolerance=0.02, prefilter=Prefilter("blur", 2.0))
    pair = coder.run("h264", "dual_crf", 22.0, 31.0)
    offsets = [np.where(road_blocks, 0.0, 12.0).astype(np.float32)] * 4
    notes: list[str] = []
    runs = _task_coding_rows(coder, "h264", plan, pair, 0, notes, offsets)
    assert not notes, notes
    assert [r.method.split("[")[1] for r in runs] == [
        "blur sigma 2 px] (= size)", "blur sigma 2 px] (= size)", "classes] (= size)"]
    assert [r.mode for r in runs] == ["dual_crf", "roi_qp", "roi_qp"]
    for run in runs:
        assert abs(run.size_match_error_pct) <= 2.0
    # The pre-filtered dual_crf row spends what the background gave up on the ROI.
    assert runs[0].roi_psnr > pair.roi_psnr and runs[0].non_roi_psnr < pair.non_roi_psnr
    assert coder.prefilter is None and coder.class_offsets is None  # the sweeps run plain


def test_sac_eval_class_qp_needs_a_segmenter(run_sac):
    result = run_sac("eval", "sample", "--class-qp", "--frames", "2")
    assert result.returncode != 0
    assert "--class-qp goes with --model" in result.stderr
    assert "Traceback" not in result.stderr
