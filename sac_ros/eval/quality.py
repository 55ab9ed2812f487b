"""THE per-frame measurement: one original against its reconstruction, per region.

Used by ``ClipCoder`` (``sac eval``, ``sac reproduce``, the benchmarks) and by the
recorded-run report alike. The conventions: PSNR on RGB, SSIM on luma, ROI / non-ROI
over the pixels of the ROI / non-ROI blocks; per-frame values are averaged over frames.
SA-PSNR / SA-SSIM come in two readings: ``region`` (the reconstruction's ROI and non-ROI
pixels) and ``stream`` (each decoded stream against the masked original over the whole
frame, black area included; a uniform run masks its one stream the same way).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from sac_ros.core import metrics

# The SA readings: (name, ROI value, non-ROI value), in record order.
SA_READINGS = (
    ("sa_psnr_region", "roi_psnr", "non_roi_psnr"),
    ("sa_psnr_stream", "stream_roi_psnr", "stream_non_roi_psnr"),
    ("sa_ssim_region", "roi_ssim", "non_roi_ssim"),
    ("sa_ssim_stream", "stream_roi_ssim", "stream_non_roi_ssim"),
)
# What ``frame_quality`` returns with ``full``: the region readings, then the stream ones.
REGION_KEYS = ("psnr", "roi_psnr", "non_roi_psnr", "ssim", "roi_ssim", "non_roi_ssim",
               "flash_fraction")
STREAM_KEYS = ("stream_roi_psnr", "stream_roi_ssim", "stream_non_roi_psnr",
               "stream_non_roi_ssim")


def frame_quality(original: np.ndarray, test: np.ndarray, mask: np.ndarray,
                  band: np.ndarray | None = None, roi_stream: np.ndarray | None = None,
                  non_roi_stream: np.ndarray | None = None, full: bool = True) -> dict[str, float]:
    """PSNR overall / ROI / non-ROI; with ``full`` also SSIM, flash and the stream reading.

    ``mask`` is the pixel mask of the ROI blocks, ``band`` the boundary band for the flash
    fraction (``metrics.boundary_band(mask)``; required with ``full``). The streams are the
    decoded ROI / non-ROI stream frames (None: ``test``, masked). A stream reading of an
    empty region is left out of the result.
    """
    sq = np.square(original.astype(np.float32) - test.astype(np.float32)).mean(axis=2)
    values = {
        "psnr": metrics.psnr_from_mse(float(sq.mean())),
        "roi_psnr": metrics.psnr_from_mse(metrics.masked_mean(sq, mask)),
        "non_roi_psnr": metrics.psnr_from_mse(metrics.masked_mean(sq, ~mask)),
    }
    if not full:
        return values
    smap = metrics.ssim_map(original, test)
    values.update(
        ssim=float(smap.mean()), roi_ssim=metrics.masked_mean(smap, mask),
        non_roi_ssim=metrics.masked_mean(smap, ~mask),
        flash_fraction=metrics.flash_fraction(original, test, band),
    )
    for key, region, stream in (("roi", mask, roi_stream), ("non_roi", ~mask, non_roi_stream)):
        if not region.any():
            continue
        reference = original * region[:, :, None]
        if stream is None:  # uniform: the one stream, masked the same way
            stream = test * region[:, :, None]
        values[f"stream_{key}_psnr"] = metrics.psnr(reference, stream)
        values[f"stream_{key}_ssim"] = float(metrics.ssim_map(reference, stream).mean())
    return values


def sa_values(values: Mapping[str, float], c_roi: float, c_non: float) -> dict[str, float]:
    """The four SA readings (``SA_READINGS``) of ROI / non-ROI values at this CRF pair."""
    return {name: metrics.sa_metric(values[roi], values[non], c_roi, c_non)
            for name, roi, non in SA_READINGS}
