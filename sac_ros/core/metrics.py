"""The one metrics module: PSNR/SSIM per region, SA-PSNR/SA-SSIM, rate, IoU, BD-rate.

Conventions
- PSNR is over RGB, 8-bit peak 255, all three channels; per-region PSNR uses only
  the pixels of that region.
- SSIM is Wang et al.'s (Gaussian window sigma 1.5, K1 0.01, K2 0.03) on BT.601 luma;
  per-region SSIM is the mean of the SSIM map over the region.
- SA-PSNR / SA-SSIM follow seed 001 eqs 11-14 with r = CRF share:
  ``SA = r_non * P_roi + r_roi * P_non``; two readings of P (see ``sa_metric``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from scipy.ndimage import binary_dilation, gaussian_filter

from sac_ros.core.mask import block_grid

PEAK = 255.0
MAX_PSNR = 100.0  # reported for identical pixels instead of infinity


def mse(reference: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None) -> float:
    """Mean squared error, over the pixels where ``mask`` (H x W) is True."""
    diff = reference.astype(np.float32) - test.astype(np.float32)
    sq = diff * diff
    if sq.ndim == 3:
        sq = sq.mean(axis=2)
    if mask is None:
        return float(sq.mean())
    if not mask.any():
        return float("nan")
    return float(sq[mask].mean())


def block_region_mse(reference: np.ndarray, test: np.ndarray, blocks: np.ndarray,
                     block_size: int = 16) -> tuple[float, float]:
    """(ROI, non-ROI) mean squared error where the regions are whole blocks of ``blocks``.

    Equals ``mse`` with the block mask expanded to pixels (partial edge blocks
    included), computed from integer per-block sums: a fraction of the cost, for
    live measurement next to a running pipeline.
    """
    height, width = reference.shape[:2]
    channels = reference.shape[2] if reference.ndim == 3 else 1
    rows, cols = block_grid(height, width, block_size)
    if blocks.shape != (rows, cols):
        raise ValueError(f"{blocks.shape} blocks for a {width}x{height} image")
    diff = np.subtract(reference, test, dtype=np.int16).reshape(height, width, channels)
    if (rows * block_size, cols * block_size) != (height, width):  # zeros add nothing
        diff = np.pad(diff, ((0, rows * block_size - height), (0, cols * block_size - width),
                             (0, 0)))
    sq = np.multiply(diff, diff, dtype=np.int32)  # a 16x16x3 block sum stays below 2**31
    sums = (sq.reshape(rows, block_size, cols * block_size * channels).sum(axis=1)
            .reshape(rows, cols, block_size * channels).sum(axis=2))
    block_h = np.minimum(block_size, height - np.arange(0, height, block_size))
    block_w = np.minimum(block_size, width - np.arange(0, width, block_size))
    counts = np.outer(block_h, block_w) * channels

    def region(mask):
        n = counts[mask].sum()
        return float(sums[mask].sum() / n) if n else float("nan")

    return region(blocks), region(~blocks)


def psnr_from_mse(value: float) -> float:
    if math.isnan(value):
        return float("nan")
    if value <= PEAK * PEAK * 10 ** (-MAX_PSNR / 10):
        return MAX_PSNR
    return 10.0 * math.log10(PEAK * PEAK / value)


def psnr(reference: np.ndarray, test: np.ndarray, mask: np.ndarray | None = None) -> float:
    return psnr_from_mse(mse(reference, test, mask))


def luma(rgb: np.ndarray) -> np.ndarray:
    rgb = rgb.astype(np.float32)
    return 0.299 * rgb[..., 0] + 0.587 * rgb[..., 1] + 0.114 * rgb[..., 2]


def ssim_map(reference: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Per-pixel SSIM of the luma of two RGB (or grey) images."""
    x = luma(reference) if reference.ndim == 3 else reference.astype(np.float32)
    y = luma(test) if test.ndim == 3 else test.astype(np.float32)
    c1, c2 = (0.01 * PEAK) ** 2, (0.03 * PEAK) ** 2
    blur = lambda a: gaussian_filter(a, sigma=1.5, truncate=3.5)  # noqa: E731  11x11 window
    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x * mu_x
    var_y = blur(y * y) - mu_y * mu_y
    cov = blur(x * y) - mu_x * mu_y
    return ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / (
        (mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2))


def masked_mean(values: np.ndarray, mask: np.ndarray | None) -> float:
    if mask is None:
        return float(values.mean())
    return float(values[mask].mean()) if mask.any() else float("nan")


def sa_weights(roi_crf: float, non_roi_crf: float) -> tuple[float, float]:
    """(weight of the ROI term, weight of the non-ROI term) = (r_non, r_roi)."""
    total = roi_crf + non_roi_crf
    if total <= 0:
        return 0.5, 0.5
    return non_roi_crf / total, roi_crf / total


def sa_metric(roi_value: float, non_roi_value: float, roi_crf: float, non_roi_crf: float) -> float:
    """Seed 001 eqs 11-14: SA = r_non * P_roi + r_roi * P_non (r = CRF share).

    Two readings of P_roi / P_non are used by callers:
    ``region`` - measured over the ROI (non-ROI) pixels of the reconstruction;
    ``stream`` - measured over the whole masked stream frame (black area included).
    An empty region (NaN) takes the other term's value.
    """
    w_roi, w_non = sa_weights(roi_crf, non_roi_crf)
    if math.isnan(roi_value):
        return non_roi_value
    if math.isnan(non_roi_value):
        return roi_value
    return w_roi * roi_value + w_non * non_roi_value


def bits_per_pixel(num_bytes: float, width: int, height: int) -> float:
    return 8.0 * num_bytes / (width * height)


def compression_ratio(num_bytes: float, width: int, height: int) -> float:
    """Raw RGB24 size over coded size (the papers' 1:N)."""
    return (3.0 * width * height) / num_bytes if num_bytes else float("inf")


def window_bitrates(frame_bytes: Sequence[int], fps: float, window_s: float = 1.0) -> np.ndarray:
    """Bit/s over every sliding window of ``window_s`` seconds (rounded to whole frames)."""
    frames = max(1, round(fps * window_s))
    sizes = np.asarray(frame_bytes, np.float64)
    if len(sizes) < frames:
        return np.empty(0)
    sums = np.convolve(sizes, np.ones(frames), "valid")
    return sums * 8.0 * fps / frames


def boundary_band(blocks_px: np.ndarray, radius: int = 8) -> np.ndarray:
    """Pixels within ``radius`` px of the ROI / non-ROI boundary."""
    structure = np.ones((2 * radius + 1, 2 * radius + 1), bool)
    return binary_dilation(blocks_px, structure) & binary_dilation(~blocks_px, structure)


def flash_fraction(reference: np.ndarray, test: np.ndarray, band: np.ndarray,
                   threshold: int = 40) -> float:
    """Share of band pixels whose largest channel error exceeds ``threshold`` levels."""
    if not band.any():
        return 0.0
    err = np.abs(reference.astype(np.int16) - test.astype(np.int16)).max(axis=2)
    return float((err[band] > threshold).mean())


# ------------------------------------------------------------------ IoU family

def confusion(gt: np.ndarray, pred: np.ndarray, num_classes: int,
              ignore_index: int = 255) -> np.ndarray:
    valid = gt != ignore_index
    idx = gt[valid].astype(np.int64) * num_classes + pred[valid].astype(np.int64)
    return np.bincount(idx, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


def iou_per_class(conf: np.ndarray) -> np.ndarray:
    """IoU = |GT & Pred| / |GT | Pred| per class; NaN for classes absent from both."""
    tp = np.diag(conf).astype(np.float64)
    union = conf.sum(0) + conf.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / union, np.nan)


def miou(conf: np.ndarray) -> float:
    return float(np.nanmean(iou_per_class(conf)))


def iiou(conf: np.ndarray, roi_class: int = 0) -> float:
    """The papers' iIoU: the IoU of the ROI class alone."""
    return float(iou_per_class(conf)[roi_class])


def binary_iou(gt: np.ndarray, pred: np.ndarray) -> float:
    union = np.logical_or(gt, pred).sum()
    return float(np.logical_and(gt, pred).sum() / union) if union else float("nan")


# ------------------------------------------------------------------ BD-rate

def _mean_gap(anchor_x: np.ndarray, anchor_y: np.ndarray,
              test_x: np.ndarray, test_y: np.ndarray, interpolation: str = "cubic") -> float:
    """Mean of test_y(x) - anchor_y(x) over the shared x range, each a cubic fit (VCEG-M33),
    or with ``interpolation="pchip"`` a piecewise cubic Hermite interpolant (the JVET
    variant: it cannot overshoot between points, so it holds on curves that flatten out,
    such as a segmenter's accuracy; x must rise strictly along each curve).

    NaN when a curve has a non-finite point (e.g. the PSNR of an empty region) or fewer
    than two points: there is no curve to fit, and lstsq would fail to converge.
    """
    curves = (anchor_x, anchor_y, test_x, test_y)
    if min(len(anchor_x), len(test_x)) < 2 or not all(np.isfinite(c).all() for c in curves):
        return float("nan")
    if interpolation == "pchip":
        return _pchip_gap(anchor_x, anchor_y, test_x, test_y)
    deg = min(3, len(anchor_x) - 1, len(test_x) - 1)
    ia = np.polyint(np.polyfit(anchor_x, anchor_y, deg))
    it = np.polyint(np.polyfit(test_x, test_y, deg))
    lo, hi = max(anchor_x.min(), test_x.min()), min(anchor_x.max(), test_x.max())
    if hi <= lo:
        return float("nan")
    return float(((np.polyval(it, hi) - np.polyval(it, lo))
                  - (np.polyval(ia, hi) - np.polyval(ia, lo))) / (hi - lo))


def _pchip_gap(anchor_x, anchor_y, test_x, test_y) -> float:
    from scipy.interpolate import PchipInterpolator

    fits = []
    for x, y in ((anchor_x, anchor_y), (test_x, test_y)):
        order = np.argsort(x)
        x, y = x[order], y[order]
        if np.any(np.diff(x) <= 0):
            return float("nan")  # two points at one x: not a function of x
        fits.append(PchipInterpolator(x, y))
    lo, hi = max(anchor_x.min(), test_x.min()), min(anchor_x.max(), test_x.max())
    if hi <= lo:
        return float("nan")
    return float((fits[1].integrate(lo, hi) - fits[0].integrate(lo, hi)) / (hi - lo))


def _bd_inputs(anchor_rate, anchor_quality, test_rate, test_quality):
    return (np.log(np.asarray(anchor_rate, float)), np.asarray(anchor_quality, float),
            np.log(np.asarray(test_rate, float)), np.asarray(test_quality, float))


def bd_rate(anchor_rate: Sequence[float], anchor_quality: Sequence[float],
            test_rate: Sequence[float], test_quality: Sequence[float],
            interpolation: str = "cubic") -> float:
    """Bjontegaard delta rate in percent (VCEG-M33: cubic fit of log-rate vs quality;
    ``interpolation="pchip"``: piecewise cubic Hermite, see ``_mean_gap``).

    Negative = the test needs fewer bytes than the anchor for the same quality. NaN
    where the curves cannot be fitted (see ``_mean_gap``).
    """
    la, qa, lt, qt = _bd_inputs(anchor_rate, anchor_quality, test_rate, test_quality)
    return (math.exp(_mean_gap(qa, la, qt, lt, interpolation)) - 1.0) * 100.0


def bd_quality(anchor_rate: Sequence[float], anchor_quality: Sequence[float],
               test_rate: Sequence[float], test_quality: Sequence[float],
               interpolation: str = "cubic") -> float:
    """Bjontegaard delta quality (dB): mean quality change at equal rate."""
    la, qa, lt, qt = _bd_inputs(anchor_rate, anchor_quality, test_rate, test_quality)
    return _mean_gap(la, qa, lt, qt, interpolation)
