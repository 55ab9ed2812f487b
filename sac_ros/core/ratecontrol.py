"""Bandwidth-budget rate control: hold one camera to a target bitrate, ROI first.

CRFs change only at key frames, so the controller acts between GOPs. After each
GOP it fits a rate model to the bytes it observed (per region when the packet has
two streams), then picks the CRFs of the next GOP:

- ``dual_crf``: the ROI and non-ROI CRFs; ``roi_qp``: the base CRF and the non-ROI
  QP offset (as ``non_roi_crf - roi_crf``); ``uniform``: one CRF.
- Normal regime: the lowest ROI CRF (best ROI quality) whose predicted GOP fits the
  budget, with the non-ROI ``spread`` CRF/QP above it (the ROI preference).
- When the ROI CRF would pass ``roi_crf_max`` (the minimum ROI quality), the ROI
  holds there and the non-ROI CRF rises alone, up to ``non_roi_crf_max``: non-ROI
  quality is shed first. Below even that floor the controller warns, states the
  floor, and lets the ROI go too rather than break the cap.
- Within a GOP a VBV cap on the encoder(s) (x264/x265 capped CRF: ``vbv-maxrate``
  = the cap, ``vbv-bufsize`` = ``vbv_buffer_s`` of it) is the hard ceiling: no window
  of T seconds carries more than ``cap * (T + vbv_buffer_s)`` bits, so the long-run
  rate never exceeds the cap (the encoder keeps the bucket's level across its reopens).
  In dual_crf the two streams' caps add up to the cap: the non-ROI stream gets its
  predicted share, so a surge there is clipped on the non-ROI side.

Rate model: bytes of a region over a GOP = ``a * blocks * 2 ** (-crf / halving)``,
where ``a`` (bytes per block at CRF 0) is re-fitted after every GOP and ``halving``
is the CRF step that halves the bytes (4.7-5.7 for x264 and x265 on road footage).
A GOP that ran into its VBV cap is counted as having needed more than it got.
ROS-free: the sensor node and ``sac eval --target-mbps`` drive the same object.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from dataclasses import dataclass

from sac_ros.core.codec import Vbv, check_crf
from sac_ros.core.errors import SacError
from sac_ros.core.sac import SacEncoder, SacPacket

RATE_MODES = ("dual_crf", "roi_qp", "uniform")
DEFAULT_CAP_RATIO = 1.1
# A GOP that spent this share of its VBV allowance was clipped by the VBV: its bytes
# understate the content, so the fit assumes it needed CENSORED_BOOST times more.
CENSORED_LEVEL = 0.97
CENSORED_BOOST = 1.15
HISTORY_GOPS = 512  # per-GOP records kept (bounded: the nodes run for days)
LOG = logging.getLogger("sac_ros.ratecontrol")


@dataclass(frozen=True)
class RateDecision:
    """What to code the next GOP with. ``non_roi_crf - roi_crf`` is the roi_qp offset."""

    roi_crf: float
    non_roi_crf: float
    roi_vbv: Vbv
    non_roi_vbv: Vbv | None
    predicted_bps: float

    @property
    def qp_offset(self) -> float:
        return self.non_roi_crf - self.roi_crf

    def apply_to(self, encoder: SacEncoder) -> None:
        """Hand the CRFs and VBV caps to the encoder; they apply at its next key frame."""
        encoder.set_crfs(self.roi_crf, self.non_roi_crf)
        encoder.set_vbv(self.roi_vbv, self.non_roi_vbv)


def _number(value: float, what: str, low: float = 0.0, high: float = math.inf,
            low_open: bool = True) -> float:
    """``value`` as a float in (low, high] (or [low, high]), else a one-line SacError."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SacError(f"{what} must be a number, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number) or number > high or (
            number <= low if low_open else number < low):
        bounds = f"{'(' if low_open else '['}{low:g}, {high:g}]"
        raise SacError(f"{what} must be in {bounds}, got {value!r}")
    return number


class RateController:
    """Per-camera rate controller; see the module docstring for the policy.

    Use: code the first GOP with ``decision``; pass every packet to ``observe``; when
    it returns a new decision (after the last frame of a GOP), ``apply_to`` the
    encoder, which switches at the next key frame.
    """

    def __init__(self, target_bps: float, fps: float, gop: int, mode: str = "roi_qp", *,
                 spread: float = 9.0, cap_bps: float | None = None, vbv_buffer_s: float = 0.3,
                 margin: float = 0.03, roi_crf_min: float = 10.0, roi_crf_max: float = 36.0,
                 non_roi_crf_max: float = 51.0, halving_crf: float = 5.0,
                 prior_bpp: float = 0.25, prior_crf: float = 23.0, max_step: float = 8.0,
                 width: int | None = None, height: int | None = None, block_size: int = 16,
                 roi_share: float | None = None):
        if mode not in RATE_MODES:
            raise SacError(f"unknown rate-control mode '{mode}'; choose one of "
                           f"{', '.join(RATE_MODES)}")
        self.target_bps = _number(target_bps, "target bitrate")
        self.fps = _number(fps, "fps")
        if isinstance(gop, bool) or not isinstance(gop, int) or gop < 1:
            raise SacError(f"gop must be a whole number of frames >= 1, got {gop!r}")
        self.gop, self.mode = int(gop), mode
        self.cap_bps = (DEFAULT_CAP_RATIO * self.target_bps if cap_bps is None
                        else _number(cap_bps, "cap bitrate"))
        if self.cap_bps < self.target_bps:
            raise SacError(f"the cap ({self.cap_bps / 1e6:g} Mbit/s) is below the target "
                           f"({self.target_bps / 1e6:g} Mbit/s)")
        self.vbv_buffer_s = _number(vbv_buffer_s, "vbv_buffer_s")
        self.margin = _number(margin, "margin", 0.0, 0.45, low_open=False)
        self.roi_crf_min = check_crf(roi_crf_min, "roi_crf_min")
        self.roi_crf_max = check_crf(roi_crf_max, "roi_crf_max")
        self.non_roi_crf_max = check_crf(non_roi_crf_max, "non_roi_crf_max")
        if self.roi_crf_min > self.roi_crf_max:
            raise SacError(f"roi_crf_min {roi_crf_min:g} is above roi_crf_max {roi_crf_max:g}")
        spread = _number(spread, "spread (non-ROI minus ROI CRF/QP)", 0.0, 51.0, low_open=False)
        self.spread = 0.0 if mode == "uniform" else spread
        if self.non_roi_crf_max < self.roi_crf_max:
            raise SacError("non_roi_crf_max must not be below roi_crf_max")
        self.halving = _number(halving_crf, "halving_crf")
        self.max_step = _number(max_step, "max_step")
        # Prior complexity (bytes per block per GOP at CRF 0) until the first GOP is seen:
        # pessimistic on purpose (road footage measured 0.13 bit/pixel at CRF 23), since a
        # first GOP that ran into the VBV cap would say little about the content.
        block_bytes = _number(prior_bpp, "prior_bpp") * block_size * block_size / 8.0
        self._a = [block_bytes * self.gop * 2 ** (prior_crf / self.halving)] * 2
        # ROI / non-ROI blocks per frame, from the packets; until then from ``roi_share``
        # (the first mask's ROI fraction; half if not known), so that the first dual_crf
        # caps give each stream its part.
        total = 2.0
        if width and height:
            total = float(-(-width // block_size) * -(-height // block_size))
        share = 0.5 if roi_share is None else _number(roi_share, "roi_share", 0.0, 1.0,
                                                      low_open=False)
        self._blocks = [total, 0.0] if mode == "uniform" else [total * share,
                                                                total * (1.0 - share)]
        self._gop_bytes = [0, 0]
        self._key_bytes = [0, 0]  # dual_crf: each stream's last key frame
        self._gop_blocks = [0, 0]
        self._gop_frames = 0
        self._gop_crfs: tuple[float, float] | None = None
        self.gops_observed = 0
        self.floor_bps: float | None = None
        self.warning: str | None = None
        self.history: deque[dict] = deque(maxlen=HISTORY_GOPS)
        self.decision = self._decide()

    # ------------------------------------------------------------ the model
    @property
    def budget_bytes(self) -> float:
        """Bytes the next GOP may spend: the target, less the safety margin."""
        return self.target_bps * (1.0 - self.margin) * self.gop / self.fps / 8.0

    def _region_bytes(self, region: int, crf: float) -> float:
        return self._a[region] * self._blocks[region] * 2 ** (-crf / self.halving)

    def predict_bytes(self, roi_crf: float, non_roi_crf: float) -> float:
        """Predicted bytes of one GOP at these CRFs, for the last GOP's mask and content."""
        return self._region_bytes(0, roi_crf) + self._region_bytes(1, non_roi_crf)

    def _bps(self, gop_bytes: float) -> float:
        return gop_bytes * 8.0 * self.fps / self.gop

    def _lowest_crf(self, bytes_at, lo: float, hi: float, budget: float) -> float:
        """The lowest CRF in [lo, hi] whose predicted bytes fit (bytes fall with CRF)."""
        if bytes_at(lo) <= budget:
            return lo
        if bytes_at(hi) > budget:
            return hi
        for _ in range(40):  # bisection to ~1e-11 CRF
            mid = 0.5 * (lo + hi)
            if bytes_at(mid) > budget:
                lo = mid
            else:
                hi = mid
        return hi

    def _solve(self, budget: float) -> tuple[float, float]:
        top = self.non_roi_crf_max if self.mode != "uniform" else 51.0

        def paired(crf: float) -> float:
            return self.predict_bytes(crf, min(crf + self.spread, top))

        roi = self._lowest_crf(paired, self.roi_crf_min, self.roi_crf_max, budget)
        if paired(roi) <= budget:
            return roi, min(roi + self.spread, top)
        if self.mode != "uniform":
            # The ROI is at its quality floor: shed non-ROI quality first ...
            non = self._lowest_crf(lambda c: self.predict_bytes(roi, c),
                                   min(roi + self.spread, top), top, budget)
            if self.predict_bytes(roi, non) <= budget:
                return roi, non
        # ... and only then let the ROI go below its floor, to hold the cap.
        roi = self._lowest_crf(paired, roi, 51.0, budget)
        return roi, min(roi + self.spread, top)

    def _decide(self) -> RateDecision:
        budget = self.budget_bytes
        roi, non = self._solve(budget)
        if self._gop_crfs is not None:
            # Bound the step: the model is only locally right (halving varies with CRF).
            last_roi, last_non = self._gop_crfs
            roi = min(max(roi, last_roi - self.max_step), last_roi + self.max_step)
            non = min(max(non, last_non - self.max_step), last_non + self.max_step)
            if self.mode == "uniform":
                non = roi
        roi, non = round(roi, 3), round(non, 3)
        predicted = self.predict_bytes(roi, non)
        cap_kbps = self.cap_bps / 1000.0
        buffer_kbit = cap_kbps * self.vbv_buffer_s
        if self.mode == "dual_crf":
            # The two caps add up to the cap. Rates split as predicted (a non-ROI surge is
            # clipped on the non-ROI side); buffers as the last key frames did, since the
            # buffer is there to absorb key frames and the non-ROI one is relatively big.
            rate_share = self._region_bytes(1, non) / max(predicted, 1.0)
            key_share = (self._key_bytes[1] / sum(self._key_bytes) if sum(self._key_bytes)
                         else rate_share)
            rate_share, key_share = (min(max(x, 0.02), 0.98) for x in (rate_share, key_share))
            roi_vbv = self._vbv(cap_kbps * (1.0 - rate_share), buffer_kbit * (1.0 - key_share))
            non_vbv = self._vbv(cap_kbps * rate_share, buffer_kbit * key_share)
        else:
            roi_vbv, non_vbv = self._vbv(cap_kbps, buffer_kbit), None
        return RateDecision(roi, non, roi_vbv, non_vbv, self._bps(predicted))

    @staticmethod
    def _vbv(maxrate_kbps: float, bufsize_kbit: float) -> Vbv:
        return Vbv(max(1, int(maxrate_kbps)), max(1, int(bufsize_kbit)))

    # ------------------------------------------------------------ feedback
    def observe(self, packet: SacPacket) -> RateDecision | None:
        """Account one packet; after the last frame of a GOP, return the next decision."""
        if packet.mode != self.mode:
            raise SacError(f"rate controller is for {self.mode} but the packet is {packet.mode}")
        if packet.key_frame:
            self._gop_bytes, self._gop_blocks, self._gop_frames = [0, 0], [0, 0], 0
            if packet.non_roi is not None:
                self._key_bytes = [len(packet.roi.data), len(packet.non_roi.data)]
            non_crf = packet.non_roi.crf if packet.non_roi is not None else (
                packet.roi.crf + packet.qp_offset)
            self._gop_crfs = (packet.roi.crf, non_crf)
        elif self._gop_crfs is None:
            return None  # joined mid-GOP: wait for a key frame
        roi_blocks = int.from_bytes(packet.roi_mask, "big").bit_count()
        total_blocks = packet.block_rows * packet.block_cols
        self._gop_blocks[0] += roi_blocks
        self._gop_blocks[1] += total_blocks - roi_blocks
        self._gop_bytes[0] += len(packet.roi.data)  # one stream: all of it, in [0]
        if packet.non_roi is not None:
            self._gop_bytes[1] += len(packet.non_roi.data)
        self._gop_frames += 1
        if self._gop_frames < self.gop:
            return None
        self._fit(self._uncensored())
        self.decision = self._decide()
        self.history.append({
            "gop": self.gops_observed - 1, "bps": self._bps(sum(self._gop_bytes)),
            "roi_crf": self._gop_crfs[0], "non_roi_crf": self._gop_crfs[1],
            "next_roi_crf": self.decision.roi_crf, "next_non_roi_crf": self.decision.non_roi_crf,
            "predicted_bps": self.decision.predicted_bps, "floor_bps": self.floor_bps})
        self._gop_frames = 0
        self._gop_crfs = None  # the next GOP starts at the next key frame
        return self.decision

    def _uncensored(self) -> list[float]:
        """The GOP's bytes per region, raised where the VBV visibly clipped them.

        Only when the cap sits clearly above the aim, or normal drift would look clipped.
        """
        spent = [float(b) for b in self._gop_bytes]
        if self.cap_bps < 1.06 * self.target_bps * (1.0 - self.margin):
            return spent
        caps = [self.decision.roi_vbv, self.decision.non_roi_vbv]
        for region, vbv in enumerate(caps):
            if vbv is None:
                continue
            allowance = vbv.maxrate_kbps * 1000.0 / 8.0 * self.gop / self.fps
            if spent[region] >= CENSORED_LEVEL * allowance:
                spent[region] *= CENSORED_BOOST
        return spent

    def _fit(self, spent: list[float]) -> None:
        """Re-fit the per-block complexities to the GOP just observed (bytes ``spent``)."""
        roi_crf, non_crf = self._gop_crfs
        frames = self._gop_frames
        blocks = [self._gop_blocks[0] / frames, self._gop_blocks[1] / frames]
        if self.mode == "uniform":
            blocks = [blocks[0] + blocks[1], 0.0]  # one region: the whole frame
        self._blocks = blocks
        if self.mode == "dual_crf":
            # Two streams: each region's bytes are measured directly.
            for region, crf in ((0, roi_crf), (1, non_crf)):
                if blocks[region] >= 1:
                    self._a[region] = spent[region] * 2 ** (crf / self.halving) / blocks[region]
        else:
            # One stream: keep the ROI / non-ROI complexity ratio, scale both to the total.
            predicted = self.predict_bytes(roi_crf, non_crf)
            if predicted > 0:
                factor = sum(spent) / predicted
                self._a = [a * factor for a in self._a]
        self.gops_observed += 1
        self._check_floor()

    def _check_floor(self) -> None:
        """Warn (once per episode) when the target is below what minimum quality costs."""
        non_max = self.roi_crf_max if self.mode == "uniform" else self.non_roi_crf_max
        floor = self._bps(self.predict_bytes(self.roi_crf_max, non_max))
        self.floor_bps = floor
        if floor <= self.target_bps * (1.0 - self.margin):
            self.warning = None
            return
        first = self.warning is None
        self.warning = (
            f"target {self.target_bps / 1e6:g} Mbit/s is below the floor of "
            f"{floor / 1e6:.3g} Mbit/s that minimum quality needs here (ROI CRF "
            f"{self.roi_crf_max:g}, non-ROI CRF {self.non_roi_crf_max:g}); the ROI "
            "is coded below its minimum quality to hold the cap")
        if first:
            LOG.warning(self.warning)  # once per episode, not every GOP
