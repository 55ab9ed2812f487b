"""Size matching: the CRF search on a known curve, then +-1% on real footage."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sac_ros.config import load_core_config
from sac_ros.core.codec import EncoderSettings
from sac_ros.core.errors import SacError
from sac_ros.core.mask import PolygonMaskSource, block_mask
from sac_ros.core.ratematch import MatchResult, match_crf
from sac_ros.eval.coder import ClipCoder


class Curve:
    """bytes = 1e6 * 2 ** (-crf / 6), recording every CRF it is asked for."""

    def __init__(self, scale: float = 1e6):
        self.scale = scale
        self.calls: list[float] = []

    def __call__(self, crf: float) -> int:
        self.calls.append(crf)
        return int(self.scale * 2 ** (-crf / 6))

    def crf_for(self, num_bytes: float) -> float:
        return -6 * math.log2(num_bytes / self.scale)


@pytest.mark.parametrize("target_crf", [3.3, 17.0, 23.456, 37.9, 49.2])
@pytest.mark.parametrize("guess", [None, 23.0])
def test_match_synthetic_curve(target_crf, guess):
    curve = Curve()
    target = int(curve.scale * 2 ** (-target_crf / 6))
    result = match_crf(curve, target, guess=guess)
    assert isinstance(result, MatchResult)
    assert abs(result.num_bytes / target - 1) <= 0.01
    assert result.num_bytes == curve(result.crf)
    assert abs(result.error) <= 0.01
    assert result.target_bytes == target
    # 1% in size is about 0.09 CRF on this curve.
    assert result.crf == pytest.approx(target_crf, abs=0.1)
    # The reported count is the number of distinct encodes, and it is small.
    distinct = {round(c, 3) for c in curve.calls[:-1]}
    assert result.encodes == len(distinct)
    assert 1 <= result.encodes <= 8


def test_tighter_tolerance():
    curve = Curve()
    target = int(curve.scale * 2 ** (-29.123 / 6))
    result = match_crf(curve, target, tolerance=0.001)
    assert abs(result.error) <= 0.001


@pytest.mark.parametrize("target", [2_000_000, 1_000])
def test_out_of_reach_raises(target):
    curve = Curve()  # reaches 1e6 (CRF 0) down to about 2762 bytes (CRF 51)
    with pytest.raises(SacError, match="out of reach"):
        match_crf(curve, target)
    with pytest.raises(SacError, match="out of reach"):
        match_crf(curve, target, guess=25)


def test_respects_bounds_with_guess():
    """A guess must not walk the search outside [lo, hi] (match_non_roi uses lo=roi_crf)."""
    curve = Curve()
    target = int(curve.scale * 2 ** (-10 / 6))  # needs CRF 10
    with pytest.raises(SacError, match="out of reach for CRF 20-51"):
        match_crf(curve, target, lo=20, guess=26)
    assert min(curve.calls) >= 20
    curve = Curve()
    target = int(curve.scale * 2 ** (-45 / 6))  # needs CRF 45
    with pytest.raises(SacError, match="out of reach for CRF 0-30"):
        match_crf(curve, target, hi=30, guess=20)
    assert max(curve.calls) <= 30
    # Inside the bounds the guess path still converges.
    curve = Curve()
    target = int(curve.scale * 2 ** (-33 / 6))
    result = match_crf(curve, target, lo=21, guess=27)
    assert abs(result.error) <= 0.01 and min(curve.calls) >= 21


def test_non_positive_target():
    with pytest.raises(SacError, match="positive"):
        match_crf(Curve(), 0)


def test_step_curve_that_cannot_match_raises():
    # Sizes jump by 2x at CRF 25: no CRF gives the target within 1%.
    def steps(crf: float) -> int:
        return 20_000 if crf < 25 else 10_000

    with pytest.raises(SacError, match="could not match"):
        match_crf(steps, 14_000)


# ------------------------------------------------------------------ real footage

@pytest.fixture(scope="module")
def coder(sample_clip):
    cfg = load_core_config()
    source = PolygonMaskSource(cfg.mask.roi_polygon)
    blocks = block_mask(source.roi_pixels(0, sample_clip[0]))
    assert 0.2 < blocks.mean() < 0.8  # a real split, not all / nothing
    settings = EncoderSettings("h264", preset="veryfast", gop=30)
    return ClipCoder(sample_clip, [blocks] * len(sample_clip), settings)


# codec: (SAC ROI / non-ROI pair, uniform reference, ROI CRF of the reverse match)
PAIRS = {"h264": ((18, 27), 23, 21), "hevc": ((23, 32), 28, 26)}


@pytest.mark.parametrize("codec", sorted(PAIRS))
def test_uniform_matches_dual_crf_size(coder, codec):
    (c_roi, c_non), _, _ = PAIRS[codec]
    target = coder.total_bytes(codec, "dual_crf", c_roi, c_non)
    assert target > 0
    match = coder.match_uniform(codec, target, 0.01, guess=(c_roi + c_non) / 2)
    assert abs(match.num_bytes / target - 1) <= 0.01
    rerun = coder.total_bytes(codec, "uniform", match.crf, match.crf)
    assert abs(rerun / target - 1) <= 0.01
    assert c_roi < match.crf < c_non
    # Full runs agree with the encode-only size and the SAC run favours the ROI.
    uniform = coder.run(codec, "uniform", match.crf)
    sac = coder.run(codec, "dual_crf", c_roi, c_non)
    assert uniform.total_bytes == rerun and sac.total_bytes == target
    assert sac.roi_psnr > uniform.roi_psnr
    assert sac.non_roi_psnr < uniform.non_roi_psnr


@pytest.mark.parametrize("codec", sorted(PAIRS))
def test_non_roi_crf_matches_uniform_size(coder, codec):
    _, reference, roi_crf = PAIRS[codec]
    target = coder.total_bytes(codec, "uniform", reference, reference)
    match = coder.match_non_roi(codec, roi_crf, target, 0.01, guess=roi_crf + 6)
    assert match.crf >= roi_crf
    rerun = coder.total_bytes(codec, "dual_crf", roi_crf, match.crf)
    assert abs(rerun / target - 1) <= 0.01


def test_clip_coder_is_deterministic(coder):
    first = coder.total_bytes("h264", "dual_crf", 20.5, 29.25)
    assert coder.total_bytes("h264", "dual_crf", 20.5, 29.25) == first
    # Fractional CRFs matter: a small step changes the size (needed for a 1% match).
    assert coder.total_bytes("h264", "dual_crf", 20.5, 29.75) != first


def test_clip_coder_rejects_mismatched_masks(sample_clip):
    with pytest.raises(ValueError):
        ClipCoder(sample_clip, [np.ones((17, 30), bool)], EncoderSettings())
