"""eval/quality.py: the one per-frame measurement (ClipCoder and the report both use it)."""

from __future__ import annotations

import numpy as np

from sac_ros.core import metrics
from sac_ros.eval.quality import REGION_KEYS, STREAM_KEYS, frame_quality, sa_values


def _frames(seed: int = 0):
    rng = np.random.default_rng(seed)
    original = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    noise = rng.integers(-6, 7, original.shape)
    test = np.clip(original.astype(int) + noise, 0, 255).astype(np.uint8)
    mask = np.zeros((48, 64), bool)
    mask[16:, :32] = True
    return original, test, mask


def test_psnr_only_and_full_readings():
    original, test, mask = _frames()
    quick = frame_quality(original, test, mask, full=False)
    assert list(quick) == ["psnr", "roi_psnr", "non_roi_psnr"]
    sq = np.square(original.astype(np.float32) - test.astype(np.float32)).mean(axis=2)
    assert quick["roi_psnr"] == metrics.psnr_from_mse(float(sq[mask].mean()))
    full = frame_quality(original, test, mask, metrics.boundary_band(mask))
    assert list(full) == [*REGION_KEYS, *STREAM_KEYS]
    assert {k: full[k] for k in quick} == quick
    # Uniform (no streams): the reconstruction masked to each region, against the masked
    # original over the whole frame.
    region = mask[:, :, None]
    assert full["stream_roi_psnr"] == metrics.psnr(original * region, test * region)


def test_an_empty_region_has_no_stream_reading():
    original, test, _ = _frames(1)
    everything = np.ones(original.shape[:2], bool)
    full = frame_quality(original, test, everything, metrics.boundary_band(everything))
    assert "stream_roi_psnr" in full and "stream_non_roi_psnr" not in full


def test_sa_values_are_the_four_readings():
    values = {"roi_psnr": 40.0, "non_roi_psnr": 30.0, "stream_roi_psnr": 41.0,
              "stream_non_roi_psnr": 35.0, "roi_ssim": 0.98, "non_roi_ssim": 0.9,
              "stream_roi_ssim": 0.99, "stream_non_roi_ssim": 0.95}
    sa = sa_values(values, 18, 27)
    assert list(sa) == ["sa_psnr_region", "sa_psnr_stream", "sa_ssim_region", "sa_ssim_stream"]
    assert sa["sa_psnr_stream"] == metrics.sa_metric(41.0, 35.0, 18, 27)
