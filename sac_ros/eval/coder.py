"""Coding experiments on a clip: one run of a method, RD sweeps, BD-rate, size matching.

Shared by ``sac eval`` and ``sac reproduce``, so every figure comes from the same code the
nodes run (SacEncoder / SacDecoder), measured by ``quality.frame_quality``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from sac_ros.core import metrics
from sac_ros.core.codec import CODECS, EncoderSettings, Vbv
from sac_ros.core.mask import expand_blocks
from sac_ros.core.ratematch import MatchResult, match_crf
from sac_ros.core.sac import SacDecoder, SacEncoder
from sac_ros.eval.quality import frame_quality, sa_values

if TYPE_CHECKING:
    from sac_ros.core.ratecontrol import RateController

Progress = Callable[[int], None]


@dataclass
class RunResult:
    """One method on one clip: sizes and per-region quality (means over frames)."""

    method: str
    codec: str
    mode: str
    c_roi: float
    c_non: float
    frames: int
    width: int
    height: int
    total_bytes: int
    roi_share: float  # fraction of pixels in ROI blocks
    psnr: float = float("nan")
    roi_psnr: float = float("nan")
    non_roi_psnr: float = float("nan")
    ssim: float = float("nan")
    roi_ssim: float = float("nan")
    non_roi_ssim: float = float("nan")
    stream_roi_psnr: float = float("nan")
    stream_non_roi_psnr: float = float("nan")
    stream_roi_ssim: float = float("nan")
    stream_non_roi_ssim: float = float("nan")
    flash_fraction: float = float("nan")
    size_match_error_pct: float | None = None
    sample_frame: np.ndarray | None = field(default=None, repr=False)
    frame_bytes: list[int] = field(default_factory=list, repr=False)
    captured: dict[int, np.ndarray] = field(default_factory=dict, repr=False)

    @property
    def kb_per_frame(self) -> float:
        return self.total_bytes / self.frames / 1000.0

    @property
    def bpp(self) -> float:
        return metrics.bits_per_pixel(self.total_bytes / self.frames, self.width, self.height)

    @property
    def compression_ratio(self) -> float:
        return metrics.compression_ratio(self.total_bytes / self.frames, self.width, self.height)

    def record(self) -> dict:
        """The JSON/CSV record: Table II fields in snake_case plus rate figures."""
        keys = ("method", "codec", "mode", "c_roi", "c_non", "frames", "width", "height",
                "total_bytes", "roi_share", "psnr", "ssim", "roi_psnr", "non_roi_psnr",
                "roi_ssim", "non_roi_ssim", "flash_fraction", "size_match_error_pct")
        data = {k: v for k, v in vars(self).items() if k in keys}
        data.update(
            kb_per_frame=self.kb_per_frame, bpp=self.bpp,
            compression_ratio=self.compression_ratio,
            **sa_values(vars(self), self.c_roi, self.c_non),
        )
        return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in data.items()}


def method_name(codec: str, mode: str, c_roi: float, c_non: float) -> str:
    label = CODECS[codec][2]
    if mode == "uniform":
        return f"{'H.264' if codec == 'h264' else 'H.265'} crf {c_roi:g}"
    if mode == "roi_qp":
        return f"ROI-QP {label.upper()} {c_roi:g} {c_non - c_roi:+g}"
    return f"SA-{label.upper()} {c_roi:g}/{c_non:g}"


class ClipCoder:
    """Runs methods over one clip with fixed per-frame block masks."""

    def __init__(self, frames: Sequence[np.ndarray], blocks: Sequence[np.ndarray],
                 settings: EncoderSettings, progress: Progress | None = None,
                 block_size: int = 16):
        if len(frames) != len(blocks):
            raise ValueError("one block mask per frame is required")
        self.frames, self.blocks, self.settings = frames, blocks, settings
        self.height, self.width = frames[0].shape[:2]
        self.block_size = block_size
        self.progress = progress or (lambda n: None)
        self._pixel_masks: dict[int, np.ndarray] = {}
        self._bands: dict[int, np.ndarray] = {}

    def pixel_mask(self, index: int) -> np.ndarray:
        key = id(self.blocks[index])  # static masks share one array: compute once
        if key not in self._pixel_masks:
            self._pixel_masks[key] = expand_blocks(self.blocks[index], self.height, self.width,
                                                   self.block_size)
        return self._pixel_masks[key]

    def band(self, index: int) -> np.ndarray:
        key = id(self.blocks[index])
        if key not in self._bands:
            self._bands[key] = metrics.boundary_band(self.pixel_mask(index))
        return self._bands[key]

    def _encoder(self, codec: str, mode: str, c_roi: float, c_non: float) -> SacEncoder:
        settings = dataclasses.replace(self.settings, codec=codec)
        return SacEncoder(self.width, self.height, c_roi, c_non, settings, mode,
                          block_size=self.block_size)

    def total_bytes(self, codec: str, mode: str, c_roi: float, c_non: float,
                    vbv: Vbv | None = None) -> int:
        """Encode only (for size matching)."""
        encoder = self._encoder(codec, mode, c_roi, c_non)
        if vbv is not None:
            encoder.set_vbv(vbv)
        try:
            total = 0
            for frame, blocks in zip(self.frames, self.blocks, strict=False):
                total += encoder.encode(frame, blocks).num_bytes
                self.progress(1)
            return total
        finally:
            encoder.close()

    def run(self, codec: str, mode: str, c_roi: float, c_non: float | None = None,
            full: bool = False, keep_frame: int | None = None, vbv: Vbv | None = None,
            controller: RateController | None = None,
            capture: Collection[int] = ()) -> RunResult:
        """Encode, decode and measure (``quality.frame_quality``). ``full`` adds SSIM,
        stream readings and flash; the decoded frames of the ``capture`` indexes are kept
        in ``RunResult.captured``.

        ``vbv`` caps the (single) stream; ``controller`` sets the CRFs and caps from
        its first decision on, then after every GOP (``c_roi`` / ``c_non`` are ignored).
        """
        if controller is not None:
            c_roi, c_non = controller.decision.roi_crf, controller.decision.non_roi_crf
        c_non = c_roi if c_non is None or mode == "uniform" else c_non
        encoder = self._encoder(codec, mode, c_roi, c_non)
        if controller is not None:
            controller.decision.apply_to(encoder)
        elif vbv is not None:
            encoder.set_vbv(vbv)
        decoder = SacDecoder(keep_streams=full)
        sums: dict[str, list[float]] = {}
        total, roi_px = 0, 0
        result = RunResult(method_name(codec, mode, c_roi, c_non), codec, mode, c_roi, c_non,
                           len(self.frames), self.width, self.height, 0, 0.0)
        try:
            for index, (frame, blocks) in enumerate(zip(self.frames, self.blocks, strict=False)):
                packet = encoder.encode(frame, blocks)
                total += packet.num_bytes
                result.frame_bytes.append(packet.num_bytes)
                if controller is not None:
                    decision = controller.observe(packet)
                    if decision is not None:
                        decision.apply_to(encoder)
                decoded = decoder.decode(packet)
                if decoded is None:
                    raise RuntimeError(f"frame {index} did not decode: "
                                       f"{decoder.last_drop_reason}")
                mask = self.pixel_mask(index)
                roi_px += int(mask.sum())
                for key, value in frame_quality(
                        frame, decoded.rgb, mask, self.band(index) if full else None,
                        decoded.roi_stream_rgb, decoded.non_roi_stream_rgb, full).items():
                    sums.setdefault(key, []).append(value)
                if keep_frame == index:
                    result.sample_frame = decoded.rgb.copy()
                if index in capture:
                    result.captured[index] = decoded.rgb.copy()
                self.progress(1)
        finally:
            encoder.close()
            decoder.close()
        result.total_bytes = total
        result.roi_share = roi_px / (len(self.frames) * self.width * self.height)
        for key, values in sums.items():  # a reading no frame had stays NaN
            setattr(result, key, float(np.nanmean(values)) if not np.all(np.isnan(values))
                    else float("nan"))
        return result

    def match_uniform(self, codec: str, target_bytes: int, tolerance: float = 0.01,
                      guess: float | None = None, vbv: Vbv | None = None) -> MatchResult:
        """The fractional uniform CRF whose total bytes equal ``target_bytes`` (under ``vbv``)."""
        return match_crf(lambda crf: self.total_bytes(codec, "uniform", crf, crf, vbv),
                         target_bytes, tolerance, guess=guess)

    def match_roi_qp(self, codec: str, offset: float, target_bytes: int,
                     tolerance: float = 0.01, guess: float | None = None) -> MatchResult:
        """The base CRF that brings a roi_qp run with this non-ROI offset to ``target_bytes``."""
        return match_crf(lambda crf: self.total_bytes(codec, "roi_qp", crf, min(crf + offset, 51)),
                         target_bytes, tolerance, guess=guess)

    def match_non_roi(self, codec: str, roi_crf: float, target_bytes: int,
                      tolerance: float = 0.01, guess: float | None = None) -> MatchResult:
        """The non-ROI CRF that brings a dual-CRF run with ``roi_crf`` to ``target_bytes``."""
        return match_crf(lambda crf: self.total_bytes(codec, "dual_crf", roi_crf, crf),
                         target_bytes, tolerance, lo=roi_crf, guess=guess)


@dataclass
class SweepPoint:
    c_roi: float
    c_non: float
    kb_per_frame: float
    psnr: float
    roi_psnr: float
    non_roi_psnr: float


@dataclass
class BdResult:
    codec: str
    delta_crf: float
    roi_bd_rate_pct: float
    non_roi_bd_psnr_db: float
    roi_bd_psnr_db: float
    mode: str = "dual_crf"


def sweep(coder: ClipCoder, codec: str, crfs: Sequence[float],
          delta: float | None, mode: str = "dual_crf") -> list[SweepPoint]:
    """Uniform (delta None) or SAC (c, c + delta) over a CRF list.

    For ``roi_qp`` the delta is the non-ROI QP offset on a base CRF of c.
    """
    points = []
    for crf in crfs:
        mode = "uniform" if delta is None else mode
        c_non = crf if delta is None else min(crf + delta, 51.0)
        run = coder.run(codec, mode, crf, c_non)
        points.append(SweepPoint(crf, c_non, run.kb_per_frame, run.psnr, run.roi_psnr,
                                 run.non_roi_psnr))
    return points


def bd_against(anchor: Sequence[SweepPoint], test: Sequence[SweepPoint], codec: str,
               delta: float, mode: str = "dual_crf") -> BdResult:
    rate_a, rate_t = [p.kb_per_frame for p in anchor], [p.kb_per_frame for p in test]
    return BdResult(
        codec, delta,
        roi_bd_rate_pct=metrics.bd_rate(rate_a, [p.roi_psnr for p in anchor],
                                        rate_t, [p.roi_psnr for p in test]),
        non_roi_bd_psnr_db=metrics.bd_quality(rate_a, [p.non_roi_psnr for p in anchor],
                                              rate_t, [p.non_roi_psnr for p in test]),
        roi_bd_psnr_db=metrics.bd_quality(rate_a, [p.roi_psnr for p in anchor],
                                          rate_t, [p.roi_psnr for p in test]),
        mode=mode,
    )
