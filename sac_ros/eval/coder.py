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
from sac_ros.core.prefilter import Prefilter
from sac_ros.core.ratematch import MatchResult, match_crf
from sac_ros.core.sac import SacDecoder, SacEncoder
from sac_ros.eval.quality import frame_quality, sa_values

if TYPE_CHECKING:
    from sac_ros.core.ratecontrol import RateController
    from sac_ros.eval.task import TaskMeter

Progress = Callable[[int], None]
FrameSink = Callable[[int, np.ndarray], None]  # (frame index, decoded RGB)

# Below this share of the frame's pixels the ROI is a handful of macroblocks (5% of a
# 960x540 frame = about 100 of its 2040 blocks): its PSNR follows a few blocks' content,
# and a BD-rate "saving" on it is bought with the whole frame's non-ROI quality while
# nothing the perception needs gets better. ``bd_against`` refuses the ROI BD-rate there.
MIN_ROI_SHARE = 0.05

MATCH_ENCODES = 5  # encodes of a clip that a size match takes, typically (progress totals)


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
    task_miou: float = float("nan")        # perception on the reconstruction (eval/task.py)
    task_roi_iiou: float = float("nan")
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
        """The JSON/CSV record: Table II fields in snake_case plus rate figures;
        ``roi_degenerate`` flags ROI figures over less than ``MIN_ROI_SHARE`` of the pixels."""
        keys = ("method", "codec", "mode", "c_roi", "c_non", "frames", "width", "height",
                "total_bytes", "roi_share", "psnr", "ssim", "roi_psnr", "non_roi_psnr",
                "roi_ssim", "non_roi_ssim", "flash_fraction", "size_match_error_pct",
                "task_miou", "task_roi_iiou")
        data = {k: v for k, v in vars(self).items() if k in keys}
        data.update(
            kb_per_frame=self.kb_per_frame, bpp=self.bpp,
            compression_ratio=self.compression_ratio,
            **sa_values(vars(self), self.c_roi, self.c_non),
            roi_degenerate=degenerate_roi(self.roi_share) is not None,
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
        self.task: TaskMeter | None = None  # when set, every run scores perception on it
        # Task-aware coding (issue 20): when set, every SAC run pre-filters its non-ROI
        # blocks, and roi_qp runs take these per-frame block QP offsets (core/classqp.py).
        self.prefilter: Prefilter | None = None
        self.class_offsets: Sequence[np.ndarray] | None = None

    def pixel_mask(self, index: int) -> np.ndarray:
        key = id(self.blocks[index])  # static masks share one array: compute once
        if key not in self._pixel_masks:
            self._pixel_masks[key] = expand_blocks(self.blocks[index], self.height, self.width,
                                                   self.block_size)
        return self._pixel_masks[key]

    def roi_share(self) -> float:
        """Fraction of the clip's pixels in ROI blocks."""
        roi = sum(int(self.pixel_mask(i).sum()) for i in range(len(self.frames)))
        return roi / (len(self.frames) * self.width * self.height)

    def band(self, index: int) -> np.ndarray:
        key = id(self.blocks[index])
        if key not in self._bands:
            self._bands[key] = metrics.boundary_band(self.pixel_mask(index))
        return self._bands[key]

    def _encoder(self, codec: str, mode: str, c_roi: float, c_non: float) -> SacEncoder:
        settings = dataclasses.replace(self.settings, codec=codec)
        return SacEncoder(self.width, self.height, c_roi, c_non, settings, mode,
                          block_size=self.block_size, prefilter=self.prefilter)

    def _qp_offsets(self, mode: str, index: int) -> np.ndarray | None:
        return self.class_offsets[index] if self.class_offsets and mode == "roi_qp" else None

    def variant(self, mode: str) -> str:
        """What the task-aware settings add to a run of ``mode`` ("" when nothing)."""
        parts = []
        if self.class_offsets and mode == "roi_qp":
            parts.append("classes")
        if self.prefilter is not None and self.prefilter.active and mode != "uniform":
            parts.append(self.prefilter.describe())
        return " + ".join(parts)

    def total_bytes(self, codec: str, mode: str, c_roi: float, c_non: float,
                    vbv: Vbv | None = None) -> int:
        """Encode only (for size matching)."""
        encoder = self._encoder(codec, mode, c_roi, c_non)
        if vbv is not None:
            encoder.set_vbv(vbv)
        try:
            total = 0
            for index, (frame, blocks) in enumerate(zip(self.frames, self.blocks, strict=False)):
                total += encoder.encode(frame, blocks, self._qp_offsets(mode, index)).num_bytes
                self.progress(1)
            return total
        finally:
            encoder.close()

    def run(self, codec: str, mode: str, c_roi: float, c_non: float | None = None,
            full: bool = False, keep_frame: int | None = None, vbv: Vbv | None = None,
            controller: RateController | None = None,
            capture: Collection[int] = (), on_frame: FrameSink | None = None) -> RunResult:
        """Encode, decode and measure (``quality.frame_quality``). ``full`` adds SSIM,
        stream readings and flash; the decoded frames of the ``capture`` indexes are kept
        in ``RunResult.captured``; ``on_frame`` sees every decoded frame (the video).

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
        result = RunResult(method_name(codec, mode, c_roi, c_non), codec, mode, c_roi, c_non,
                           len(self.frames), self.width, self.height, 0, 0.0)
        if self.variant(mode):
            result.method += f" [{self.variant(mode)}]"
        task = self.task.start() if self.task is not None else None
        try:
            for index, (frame, blocks) in enumerate(zip(self.frames, self.blocks, strict=False)):
                packet = encoder.encode(frame, blocks, self._qp_offsets(mode, index))
                result.frame_bytes.append(packet.num_bytes)
                if controller is not None:
                    decision = controller.observe(packet)
                    if decision is not None:
                        decision.apply_to(encoder)
                decoded = decoder.decode(packet)
                if decoded is None:
                    raise RuntimeError(f"frame {index} did not decode: "
                                       f"{decoder.last_drop_reason}")
                self._measure(index, decoded, full, sums)
                if keep_frame == index:
                    result.sample_frame = decoded.rgb.copy()
                if index in capture:
                    result.captured[index] = decoded.rgb.copy()
                if on_frame is not None:
                    on_frame(index, decoded.rgb)
                if task is not None:
                    task.add(index, decoded.rgb)
                self.progress(1)
        finally:
            encoder.close()
            decoder.close()
        result.total_bytes = sum(result.frame_bytes)
        result.roi_share = self.roi_share()
        if task is not None:
            result.task_miou, result.task_roi_iiou = task.accuracy()
        for key, values in sums.items():  # a reading no frame had stays NaN
            setattr(result, key, float(np.nanmean(values)) if not np.all(np.isnan(values))
                    else float("nan"))
        return result

    def _measure(self, index: int, decoded, full: bool, sums: dict[str, list[float]]) -> None:
        """Add frame ``index``'s quality readings to ``sums``."""
        for key, value in frame_quality(
                self.frames[index], decoded.rgb, self.pixel_mask(index),
                self.band(index) if full else None,
                decoded.roi_stream_rgb, decoded.non_roi_stream_rgb, full).items():
            sums.setdefault(key, []).append(value)

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
    task_miou: float = float("nan")
    task_roi_iiou: float = float("nan")


@dataclass
class BdResult:
    """BD figures of one curve against uniform. The ROI ones are None where refused
    (``refused`` says why: an ROI under ``MIN_ROI_SHARE`` of the frame)."""

    codec: str
    delta_crf: float
    roi_bd_rate_pct: float | None
    non_roi_bd_psnr_db: float | None
    roi_bd_psnr_db: float | None
    mode: str = "dual_crf"
    roi_share: float | None = None
    refused: str | None = None
    variant: str = ""    # task-aware settings of the curve (ClipCoder.variant), "" = none


def degenerate_roi(roi_share: float) -> str | None:
    """Why ROI figures over this share of the frame mean nothing, or None when they do."""
    if roi_share <= 0:
        return "no ROI block in any frame"
    if roi_share < MIN_ROI_SHARE:
        return f"the ROI is {roi_share:.1%} of the frame, under {MIN_ROI_SHARE:.0%}"
    return None


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
                                 run.non_roi_psnr, run.task_miou, run.task_roi_iiou))
    return points


def bd_against(anchor: Sequence[SweepPoint], test: Sequence[SweepPoint], codec: str,
               delta: float, roi_share: float, mode: str = "dual_crf") -> BdResult:
    """The test curve's BD figures against the anchor; the ROI ones refused (None) over a
    degenerate ROI (``degenerate_roi``). A curve that cannot be fitted gives None too."""
    rate_a, rate_t = [p.kb_per_frame for p in anchor], [p.kb_per_frame for p in test]

    def gap(measure, key: str) -> float | None:
        value = measure(rate_a, [getattr(p, key) for p in anchor],
                        rate_t, [getattr(p, key) for p in test])
        return None if np.isnan(value) else value

    refused = degenerate_roi(roi_share)
    return BdResult(
        codec, delta,
        roi_bd_rate_pct=None if refused else gap(metrics.bd_rate, "roi_psnr"),
        non_roi_bd_psnr_db=gap(metrics.bd_quality, "non_roi_psnr"),
        roi_bd_psnr_db=None if refused else gap(metrics.bd_quality, "roi_psnr"),
        mode=mode, roi_share=roi_share, refused=refused,
    )
