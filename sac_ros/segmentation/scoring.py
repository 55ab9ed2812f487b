"""Scores of a segmenter against 4-class ground truth: pixel and block iIoU / mIoU.

- pixel iIoU: IoU of the ROI pixels (the papers' iIoU);
- pixel mIoU: mean IoU over the 4 classes (ROI, construction, nature, sky) when the
  model's classes fold into them, else over ROI / non-ROI;
- block iIoU / mIoU: the same on the 16x16 macroblock masks (a block is ROI if any of
  its pixels is), i.e. on what the encoder actually uses;
- a bootstrap interval of the block iIoU over frames: how far the score of a set of a
  few dozen frames can be trusted.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from sac_ros.core.classes import FOUR_CLASS_NAMES
from sac_ros.core.errors import SacError
from sac_ros.core.mask import block_mask
from sac_ros.core.metrics import confusion, iiou, iou_per_class, miou


@dataclass
class Scores:
    four_class: bool
    pixel_roi: np.ndarray = field(default_factory=lambda: np.zeros((2, 2), np.int64))
    pixel_classes: np.ndarray = field(default_factory=lambda: np.zeros((4, 4), np.int64))
    frame_blocks: list[np.ndarray] = field(default_factory=list)  # 2 x 2 per frame

    def add(self, truth: np.ndarray, roi: np.ndarray, blocks: np.ndarray,
            classes: np.ndarray | None = None) -> None:
        """``truth``: 4-class ids (255 ignored); ``roi``/``blocks``: predictions."""
        truth_roi = truth == 0
        valid = truth != 255
        # index 0 = ROI, 1 = non-ROI, so iiou(conf, 0) is the ROI IoU
        gt_pixels = np.where(valid, (~truth_roi).astype(np.uint8), 255)
        self.pixel_roi += confusion(gt_pixels, (~roi).astype(np.uint8), 2)
        truth_blocks = block_mask(truth_roi)
        if truth_blocks.shape != blocks.shape:
            raise SacError(f"block mask is {blocks.shape}, expected {truth_blocks.shape}")
        self.frame_blocks.append(
            confusion((~truth_blocks).astype(np.uint8), (~blocks).astype(np.uint8), 2))
        if self.four_class and classes is not None:
            self.pixel_classes += confusion(truth, classes, 4)

    @property
    def blocks(self) -> np.ndarray:
        """The block confusion matrix over all frames."""
        return sum(self.frame_blocks, np.zeros((2, 2), np.int64))

    @property
    def frame_block_iiou(self) -> list[float]:
        return [iiou(frame, 0) for frame in self.frame_blocks]

    def block_iiou_interval(self, level: float = 0.95, resamples: int = 2000,
                            seed: int = 0) -> tuple[float, float]:
        """Percentile bootstrap interval of the pooled block iIoU, resampling frames.

        Frames, not blocks, are resampled: blocks of one frame are far from independent,
        and the frames are what a different evaluation set would change.
        """
        if not 0 < level < 1:
            raise SacError(f"interval level must be between 0 and 1, not {level}")
        if not self.frame_blocks:
            return float("nan"), float("nan")
        # per frame: ROI blocks in both, and in either (the iIoU's numerator, denominator)
        stack = np.stack(self.frame_blocks).astype(np.float64)
        inter = stack[:, 0, 0]
        union = stack[:, 0, 0] + stack[:, 0, 1] + stack[:, 1, 0]
        picks = np.random.default_rng(seed).integers(0, len(inter), (resamples, len(inter)))
        with np.errstate(invalid="ignore", divide="ignore"):
            values = inter[picks].sum(1) / union[picks].sum(1)
        values = values[np.isfinite(values)]
        tail = 100 * (1 - level) / 2
        return float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))

    def summary(self) -> dict[str, float]:
        blocks, per_frame = self.blocks, self.frame_block_iiou
        result = {
            "pixel_iiou": iiou(self.pixel_roi, 0),
            "pixel_miou_roi_vs_non_roi": miou(self.pixel_roi),
            "block_iiou": iiou(blocks, 0),
            "block_miou": miou(blocks),
            "worst_frame_block_iiou": float(np.nanmin(per_frame)) if per_frame else float("nan"),
        }
        if self.four_class:
            result["pixel_miou"] = miou(self.pixel_classes)
            per_class = iou_per_class(self.pixel_classes)
            for name, value in zip(FOUR_CLASS_NAMES, per_class, strict=True):
                result[f"pixel_iou_{name}"] = float(value)
        else:
            result["pixel_miou"] = result["pixel_miou_roi_vs_non_roi"]
        return result


def score_segmenter(segmenter, rgbs: list[np.ndarray], truths: list[np.ndarray],
                    four_class_table: np.ndarray | None = None,
                    time_runs: int = 3) -> tuple[Scores, list[float]]:
    """Score a Segmenter; also time ``block_roi`` (the encoder's path) per frame.

    ``four_class_table`` folds the model's class ids into the 4 classes (None: the
    model's classes do not fold, so mIoU is ROI vs non-ROI). Latency is the median of
    ``time_runs`` timed calls per frame (0: no timing), after one warm-up call.
    """
    scores = Scores(four_class=four_class_table is not None)
    latencies = []
    if rgbs:
        segmenter.block_roi(rgbs[0])  # warm-up: buffers, geometry, lazy provider init
    for rgb, truth in zip(rgbs, truths, strict=True):
        runs = []
        for _ in range(time_runs):
            start = time.perf_counter()
            segmenter.block_roi(rgb)
            runs.append(time.perf_counter() - start)
        if runs:
            latencies.append(float(np.median(runs)))
        prediction = segmenter.predict(rgb)
        classes = (four_class_table[prediction.class_map] if four_class_table is not None
                   else None)
        scores.add(truth, prediction.roi, prediction.block_roi, classes)
    return scores, latencies
