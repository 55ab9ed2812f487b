"""The sensor's task-aware coding (issue 20): non-ROI pre-filtering and class-level QP offsets.

Parameters (read-only, defaults from config/sac.yaml ``prefilter`` / ``class_qp``):
``nonroi_filter`` (none | blur | downscale) and ``nonroi_filter_strength`` low-pass the
non-ROI blocks before they are coded (core/prefilter.py); ``class_qp`` (roi_qp with
mask_source model) codes each block at the QP offset of its classes (core/classqp.py,
offsets from sac.yaml ``class_qp.offsets``) instead of one non-ROI offset.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
from rclpy.node import Node

from sac_ros.config import CoreConfig
from sac_ros.core.classqp import ClassMapTap, ClassQp
from sac_ros.core.errors import SacError
from sac_ros.core.prefilter import NONROI_FILTERS, Prefilter
from sac_ros.nodes.common import declare


def declare_task_coding(node: Node, core: CoreConfig) -> SimpleNamespace:
    """Declare the parameters; returns their start-up values."""
    kind = declare(node, "nonroi_filter", core.prefilter.kind, "Low-pass the non-ROI blocks "
                   "before coding (ROI blocks stay bit-exact); default: config/sac.yaml "
                   "prefilter.nonroi_filter.", choices=NONROI_FILTERS, read_only=True)
    strength = declare(node, "nonroi_filter_strength", core.prefilter.strength, "blur: "
                       "Gaussian sigma in luma pixels (0.1-32); downscale: the resampling "
                       "factor (1-16).", low=0.0, high=64.0, read_only=True)
    class_qp = declare(node, "class_qp", core.class_qp.enabled, "roi_qp with mask_source "
                       "model: each block at the QP offset of its classes (config/sac.yaml "
                       "class_qp.offsets, above roi_crf; non_roi_crf is then unused) instead "
                       "of one non-ROI offset.", read_only=True)
    return SimpleNamespace(kind=kind, strength=strength, class_qp=class_qp,
                           offsets=core.class_qp.offsets)


class TaskCoding:
    """What the sensor adds per frame: the encoder's pre-filter and the block offsets."""

    def __init__(self, start: SimpleNamespace, mode: str, mask_source: str):
        self.prefilter = Prefilter(start.kind, start.strength)  # validated: SacError
        if self.prefilter.active and mode == "uniform":
            raise SacError("nonroi_filter needs mode dual_crf or roi_qp (uniform coding has "
                           "no non-ROI blocks)")
        self.enabled = bool(start.class_qp)
        if self.enabled and mode != "roi_qp":
            raise SacError(f"class_qp needs mode roi_qp, not {mode}")
        if self.enabled and mask_source != "model":
            raise SacError("class_qp needs mask_source model (the static polygon has no "
                           "classes)")
        self._offsets = start.offsets
        self._tap: ClassMapTap | None = None
        self.class_qp: ClassQp | None = None

    def tap(self, segmenter):
        """The segmenter to hand on: wrapped to keep its class map when class_qp is on."""
        if not self.enabled:
            return segmenter
        self._tap = ClassMapTap(segmenter)
        self.class_qp = ClassQp(self._offsets, segmenter.class_adapter.name)
        return self._tap

    def offsets(self, rgb: np.ndarray, blocks: np.ndarray) -> np.ndarray | None:
        """This frame's per-block QP offsets, or None (binary roi_qp; also until a class
        map of this frame size exists)."""
        if self._tap is None:
            return None
        class_map = self._tap.class_map
        if class_map is None or class_map.shape != rgb.shape[:2]:
            return None
        return self.class_qp.block_offsets(class_map, blocks)

    def describe(self) -> str:
        parts = []
        if self.prefilter.active:
            parts.append(f"non-ROI {self.prefilter.describe()}")
        if self.class_qp is not None:
            parts.append(f"class QP offsets ({self.class_qp.describe()})")
        return ", ".join(parts)
