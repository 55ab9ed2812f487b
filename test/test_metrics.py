"""Known-answer checks of the metrics module."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sac_ros.core import metrics
from sac_ros.eval.coder import RunResult

C1, C2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2


@pytest.fixture
def noisy():
    return np.random.default_rng(5).integers(0, 206, (24, 32, 3), dtype=np.uint8)


# ------------------------------------------------------------------ PSNR

def test_psnr_constant_offset(noisy):
    expected = 10 * math.log10(255 ** 2 / 100)
    assert metrics.psnr(noisy, noisy + 10) == pytest.approx(expected, abs=1e-9)
    assert metrics.psnr(noisy + 10, noisy) == pytest.approx(expected, abs=1e-9)
    assert metrics.mse(noisy, noisy + 10) == pytest.approx(100)


def test_psnr_averages_over_channels(noisy):
    test = noisy.copy()
    test[..., 0] += 30  # one channel off by 30: per-pixel MSE 900 / 3
    assert metrics.psnr(noisy, test) == pytest.approx(10 * math.log10(255 ** 2 / 300))


def test_masked_psnr_uses_only_region(noisy):
    test = noisy.copy()
    mask = np.zeros(noisy.shape[:2], bool)
    mask[:, :10] = True
    test[mask] += 10
    test[~mask] += 40
    assert metrics.psnr(noisy, test, mask) == pytest.approx(10 * math.log10(255 ** 2 / 100))
    assert metrics.psnr(noisy, test, ~mask) == pytest.approx(10 * math.log10(255 ** 2 / 1600))
    whole = (10 * 100 + 22 * 1600) / 32
    assert metrics.psnr(noisy, test) == pytest.approx(10 * math.log10(255 ** 2 / whole))


def test_identical_is_max_psnr(noisy):
    assert metrics.psnr(noisy, noisy) == metrics.MAX_PSNR == 100.0
    mask = np.ones(noisy.shape[:2], bool)
    assert metrics.psnr(noisy, noisy.copy(), mask) == 100.0
    assert metrics.psnr_from_mse(0.0) == 100.0
    # A single level of error somewhere is finite and below the cap.
    test = noisy.copy()
    test[0, 0, 0] += 1
    assert 60 < metrics.psnr(noisy, test) < 100


def test_psnr_no_uint8_wraparound():
    a = np.full((4, 4, 3), 250, np.uint8)
    b = np.full((4, 4, 3), 5, np.uint8)
    assert metrics.mse(a, b) == pytest.approx(245 ** 2)


# ------------------------------------------------------------------ SSIM

def test_ssim_identical_is_one(noisy):
    smap = metrics.ssim_map(noisy, noisy)
    assert smap.shape == noisy.shape[:2]
    np.testing.assert_allclose(smap, 1.0, atol=1e-5)
    other = np.random.default_rng(6).integers(0, 206, noisy.shape, dtype=np.uint8)
    assert metrics.ssim_map(noisy, other).mean() < 0.2


@pytest.mark.parametrize("a, b", [(100, 120), (30, 200), (128, 128)])
def test_ssim_flat_offset_is_luminance_term(a, b):
    x = np.full((40, 40, 3), a, np.uint8)
    y = np.full((40, 40, 3), b, np.uint8)
    expected = (2 * a * b + C1) / (a * a + b * b + C1)
    smap = metrics.ssim_map(x, y)
    np.testing.assert_allclose(smap[8:-8, 8:-8], expected, rtol=1e-4)
    # Grey (2-D) input takes the same path without the luma conversion.
    grey = metrics.ssim_map(x[..., 0], y[..., 0])
    np.testing.assert_allclose(grey[8:-8, 8:-8], expected, rtol=1e-4)


def test_ssim_uses_bt601_luma():
    rgb = np.zeros((20, 20, 3), np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 200, 100, 50
    luma = 0.299 * 200 + 0.587 * 100 + 0.114 * 50
    np.testing.assert_allclose(metrics.luma(rgb), luma, rtol=1e-6)
    grey = np.full((20, 20), 60, np.uint8)
    expected = (2 * luma * 60 + C1) / (luma ** 2 + 60 ** 2 + C1)
    other = np.repeat(grey[..., None], 3, 2)
    np.testing.assert_allclose(metrics.ssim_map(rgb, other)[6:-6, 6:-6], expected, rtol=1e-4)


def test_masked_mean():
    values = np.arange(12, dtype=float).reshape(3, 4)
    mask = values % 2 == 0
    assert metrics.masked_mean(values, mask) == pytest.approx(5.0)
    assert metrics.masked_mean(values, None) == pytest.approx(5.5)
    assert math.isnan(metrics.masked_mean(values, np.zeros_like(mask)))


@pytest.mark.parametrize("height, width", [(64, 96), (37, 50), (16, 32)])
def test_block_region_mse_equals_pixel_masked_mse(height, width):
    from sac_ros.core.mask import expand_blocks

    rng = np.random.default_rng(height)
    reference = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    test = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    blocks = rng.random((-(-height // 16), -(-width // 16))) < 0.5
    blocks.flat[0], blocks.flat[-1] = True, False  # both regions present
    pixels = expand_blocks(blocks, height, width, 16)
    roi, non_roi = metrics.block_region_mse(reference, test, blocks)
    assert roi == pytest.approx(metrics.mse(reference, test, pixels), rel=1e-6)
    assert non_roi == pytest.approx(metrics.mse(reference, test, ~pixels), rel=1e-6)
    # Extreme errors do not overflow the integer sums.
    black, white = np.zeros_like(reference), np.full_like(reference, 255)
    assert metrics.block_region_mse(black, white, blocks) == (255.0 ** 2, 255.0 ** 2)
    assert math.isnan(metrics.block_region_mse(black, white, np.zeros_like(blocks))[0])
    with pytest.raises(ValueError):
        metrics.block_region_mse(reference, test, blocks[1:])


# ------------------------------------------------------------------ SA metrics

def test_sa_metric_weights():
    p_roi, p_non = 40.0, 30.0
    assert metrics.sa_metric(p_roi, p_non, 18, 27) == pytest.approx(
        (27 / 45) * p_roi + (18 / 45) * p_non)
    assert metrics.sa_weights(18, 27) == pytest.approx((0.6, 0.4))
    # Equal CRFs weight both terms equally; zero CRFs do not divide by zero.
    assert metrics.sa_metric(40, 30, 23, 23) == pytest.approx(35)
    assert metrics.sa_weights(0, 0) == (0.5, 0.5)


def test_nan_handling():
    nan = float("nan")
    assert metrics.sa_metric(nan, 31.0, 18, 27) == 31.0
    assert metrics.sa_metric(42.0, nan, 18, 27) == 42.0
    assert math.isnan(metrics.sa_metric(nan, nan, 18, 27))
    assert math.isnan(metrics.psnr_from_mse(nan))
    img = np.zeros((4, 4, 3), np.uint8)
    empty = np.zeros((4, 4), bool)
    assert math.isnan(metrics.mse(img, img + 1, empty))
    assert math.isnan(metrics.psnr(img, img + 1, empty))
    assert math.isnan(metrics.binary_iou(empty, empty))


def test_run_record_turns_nan_into_none():
    result = RunResult("m", "h264", "dual_crf", 18, 27, frames=4, width=100, height=50,
                       total_bytes=8000, roi_share=0.5, roi_psnr=40.0)
    record = result.record()
    assert record["psnr"] is None and record["non_roi_psnr"] is None
    assert record["sa_psnr_region"] == 40.0  # NaN non-ROI term takes the ROI value
    assert record["kb_per_frame"] == pytest.approx(2.0)
    assert record["bpp"] == pytest.approx(8 * 2000 / 5000)
    assert record["compression_ratio"] == pytest.approx(3 * 5000 / 2000)


# ------------------------------------------------------------------ rate

def test_bits_per_pixel_and_compression_ratio():
    assert metrics.bits_per_pixel(1000, 100, 80) == pytest.approx(1.0)
    assert metrics.bits_per_pixel(64800, 960, 540) == pytest.approx(1.0)
    assert metrics.compression_ratio(1000, 100, 80) == pytest.approx(24.0)
    assert metrics.compression_ratio(15552, 960, 540) == pytest.approx(100.0)
    assert metrics.compression_ratio(0, 10, 10) == float("inf")


# ------------------------------------------------------------------ IoU family

def test_iou_two_classes():
    gt = np.array([0, 0, 1, 1, 1, 255])
    pred = np.array([0, 1, 1, 1, 0, 0])
    conf = metrics.confusion(gt, pred, 2)
    np.testing.assert_array_equal(conf, [[1, 1], [1, 2]])
    np.testing.assert_allclose(metrics.iou_per_class(conf), [1 / 3, 1 / 2])
    assert metrics.miou(conf) == pytest.approx(5 / 12)
    assert metrics.iiou(conf) == pytest.approx(1 / 3)
    assert metrics.iiou(conf, roi_class=1) == pytest.approx(1 / 2)
    assert metrics.binary_iou(gt[:5] == 0, pred[:5] == 0) == pytest.approx(1 / 3)


def test_iou_four_classes():
    gt = np.array([[0, 0, 0, 1], [1, 2, 2, 3]])
    pred = np.array([[0, 0, 1, 1], [1, 2, 0, 0]])
    conf = metrics.confusion(gt, pred, 4)
    np.testing.assert_array_equal(conf, [[2, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0]])
    np.testing.assert_allclose(metrics.iou_per_class(conf), [2 / 5, 2 / 3, 1 / 2, 0.0])
    assert metrics.miou(conf) == pytest.approx((2 / 5 + 2 / 3 + 1 / 2 + 0) / 4)
    assert metrics.iiou(conf) == pytest.approx(2 / 5)


def test_iou_absent_class_is_nan_and_skipped():
    gt = np.array([0, 0, 1, 2, 255, 255])
    pred = np.array([0, 1, 1, 2, 3, 3])  # class 3 only where gt is ignored
    conf = metrics.confusion(gt, pred, 4)
    assert conf.sum() == 4
    iou = metrics.iou_per_class(conf)
    np.testing.assert_allclose(iou[:3], [1 / 2, 1 / 2, 1.0])
    assert math.isnan(iou[3])
    assert metrics.miou(conf) == pytest.approx(2 / 3)


# ------------------------------------------------------------------ Bjontegaard

ANCHOR_RATE = [120.0, 210.0, 390.0, 800.0]
ANCHOR_Q = [31.2, 34.0, 36.9, 39.5]


def test_bd_rate_scaled_rates():
    test_rate = [0.8 * r for r in ANCHOR_RATE]
    assert metrics.bd_rate(ANCHOR_RATE, ANCHOR_Q, test_rate, ANCHOR_Q) == pytest.approx(
        -20.0, abs=0.01)
    test_rate = [1.25 * r for r in ANCHOR_RATE]
    assert metrics.bd_rate(ANCHOR_RATE, ANCHOR_Q, test_rate, ANCHOR_Q) == pytest.approx(
        25.0, abs=0.01)


def test_bd_identical_curves():
    assert metrics.bd_rate(ANCHOR_RATE, ANCHOR_Q, ANCHOR_RATE, ANCHOR_Q) == pytest.approx(
        0.0, abs=1e-9)
    assert metrics.bd_quality(ANCHOR_RATE, ANCHOR_Q, ANCHOR_RATE, ANCHOR_Q) == pytest.approx(
        0.0, abs=1e-9)


def test_bd_quality_shift():
    shifted = [q + 1.0 for q in ANCHOR_Q]
    assert metrics.bd_quality(ANCHOR_RATE, ANCHOR_Q, ANCHOR_RATE, shifted) == pytest.approx(
        1.0, abs=1e-6)
    lower = [q - 0.5 for q in ANCHOR_Q]
    assert metrics.bd_quality(ANCHOR_RATE, ANCHOR_Q, ANCHOR_RATE, lower) == pytest.approx(
        -0.5, abs=1e-6)


def test_bd_three_points_and_no_overlap():
    rate, q = ANCHOR_RATE[:3], ANCHOR_Q[:3]
    assert metrics.bd_rate(rate, q, [0.5 * r for r in rate], q) == pytest.approx(-50, abs=0.01)
    assert math.isnan(metrics.bd_rate(rate, q, rate, [x + 20 for x in q]))
    assert math.isnan(metrics.bd_quality(rate, q, [r * 100 for r in rate], q))


# ------------------------------------------------------------------ boundary flash

def test_boundary_band():
    blocks_px = np.zeros((6, 10), bool)
    blocks_px[:, :5] = True
    band = metrics.boundary_band(blocks_px, radius=1)
    expected = np.zeros((6, 10), bool)
    expected[:, 4:6] = True
    np.testing.assert_array_equal(band, expected)
    band2 = metrics.boundary_band(blocks_px, radius=2)
    expected[:, 3:7] = True
    np.testing.assert_array_equal(band2, expected)
    assert not metrics.boundary_band(np.ones((6, 10), bool), radius=1).any()


def test_flash_fraction():
    ref = np.full((4, 4, 3), 100, np.uint8)
    test = ref.copy()
    band = np.zeros((4, 4), bool)
    band[:, 1] = True  # 4 band pixels
    test[0, 1, 2] = 150  # error 50 in one channel: a flash
    test[1, 1, 0] = 140  # error exactly 40: not a flash
    test[2, 2] = 0  # outside the band: ignored
    assert metrics.flash_fraction(ref, test, band) == pytest.approx(0.25)
    assert metrics.flash_fraction(ref, test, band, threshold=39) == pytest.approx(0.5)
    test[3, 1, 1] = 45  # error downwards counts too (no uint8 wrap)
    assert metrics.flash_fraction(ref, test, band) == pytest.approx(0.5)
    assert metrics.flash_fraction(ref, test, np.zeros((4, 4), bool)) == 0.0
