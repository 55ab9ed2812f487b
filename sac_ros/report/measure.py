"""Per-frame measurements of a recorded run: ``sac_ros.eval.quality.frame_quality``, the
one per-frame measurement ``ClipCoder`` uses too, on each frame of the bag, plus its
sizes, timings and segmentation scores (an empty region's stream reading is NaN here).

Segmentation (when a segmenter is given) runs the same network on the original and the
reconstructed frame: mIoU over the model's classes and iIoU (IoU of the ROI) of the
reconstruction against the original's segmentation, and, on frames with ground-truth
labels, the ROI/non-ROI mIoU and iIoU of both against the labels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from sac_ros.bags.runbag import CameraTopics, Frame
from sac_ros.core import metrics
from sac_ros.core.classes import get_class_map
from sac_ros.core.mask import block_mask, expand_blocks, roi_pixels
from sac_ros.eval.coder import method_name
from sac_ros.eval.quality import REGION_KEYS, STREAM_KEYS, frame_quality, sa_values


@dataclass
class Confusions:
    """Accumulated confusion matrices of one method."""

    model: np.ndarray | None = None          # seg(original) vs seg(reconstructed), model classes
    roi: np.ndarray = field(default_factory=lambda: np.zeros((2, 2), np.int64))
    gt_reconstructed: np.ndarray = field(default_factory=lambda: np.zeros((2, 2), np.int64))
    gt_original: np.ndarray = field(default_factory=lambda: np.zeros((2, 2), np.int64))
    frames: int = 0
    gt_frames: int = 0


def _nan(value) -> float:
    return float("nan") if value is None else float(value)


@dataclass
class CameraResult:
    namespace: str
    frames: list[dict] = field(default_factory=list)
    confusions: dict[str, Confusions] = field(default_factory=dict)
    sample: dict | None = None


class RunEvaluator:
    """Callable handed to ``read_run``: measures each frame, keeps one sample frame, and
    hands every frame to ``frame_sink(camera, stamp_ns, original, reconstruction, ROI
    pixel mask)`` when given (the report's video)."""

    def __init__(self, segmenter=None, sample_index: int = 0, non_roi: dict | None = None,
                 frame_sink=None):
        self.segmenter = segmenter
        self.sample_index = sample_index
        self.non_roi = non_roi or {}
        self.frame_sink = frame_sink
        self.cameras: dict[str, CameraResult] = {}
        self._bands: dict[bytes, np.ndarray] = {}

    def __call__(self, cam: CameraTopics, frame: Frame) -> None:
        result = self.cameras.setdefault(cam.namespace, CameraResult(cam.namespace))
        record = self.measure(frame, result)
        mask, test = record.pop("_mask"), record.pop("_test")
        if self.frame_sink is not None:
            self.frame_sink(cam.namespace, frame.stamp_ns, frame.original, test, mask)
        if len(result.frames) <= self.sample_index or result.sample is None:
            result.sample = {"original": frame.original, "blocks_px": mask,
                             "reconstructed": test, "method": record["method"],
                             "kb": record["kb"], "stamp_ns": frame.stamp_ns,
                             "index": len(result.frames)}
        result.frames.append(record)

    def _band(self, mask: np.ndarray) -> np.ndarray:
        key = np.packbits(mask).tobytes() + bytes(str(mask.shape), "ascii")
        band = self._bands.get(key)
        if band is None:
            if len(self._bands) > 64:
                self._bands.clear()
            band = self._bands[key] = metrics.boundary_band(mask)
        return band

    def measure(self, frame: Frame, result: CameraResult) -> dict:
        packet, decoded = frame.packet, frame.decoded
        original = frame.original
        test = frame.reconstructed if frame.reconstructed is not None else decoded.rgb
        height, width = original.shape[:2]
        mask = expand_blocks(decoded.blocks, height, width, packet.block_size)
        c_roi = packet.roi.crf
        c_non = packet.non_roi.crf if packet.non_roi is not None else c_roi
        method = method_name(packet.roi.codec, packet.mode, c_roi, c_non)
        quality = frame_quality(original, test, mask, self._band(mask),
                                decoded.roi_stream_rgb, decoded.non_roi_stream_rgb)
        rec = {
            "stamp_ns": frame.stamp_ns, "seq": packet.seq, "method": method,
            "codec": packet.roi.codec, "mode": packet.mode, "c_roi": c_roi, "c_non": c_non,
            "key_frame": packet.key_frame, "bytes": packet.num_bytes,
            "roi_bytes": len(packet.roi.data),
            "non_roi_bytes": len(packet.non_roi.data) if packet.non_roi is not None else 0,
            "kb": packet.num_bytes / 1000.0, "roi_share": float(mask.mean()),
            "width": width, "height": height,
            **{k: quality[k] for k in REGION_KEYS},
            "original_recv_ns": frame.original_recv_ns, "packet_recv_ns": frame.packet_recv_ns,
            "reconstructed_recv_ns": frame.reconstructed_recv_ns,
            "encode_ms": packet.encode_ms, "segmentation_ms": packet.segmentation_ms,
            "live": frame.reconstructed is not None,
            **{k: quality.get(k, float("nan")) for k in STREAM_KEYS},
        }
        rec.update(sa_values(rec, c_roi, c_non))
        conf = result.confusions.setdefault(method, Confusions())
        conf.frames += 1
        if frame.label is not None:
            class_map = get_class_map(frame.label_map)
            gt_roi = roi_pixels(frame.label, class_map, _ids(self.non_roi.get(frame.label_map)))
            rec["mask_block_iou_vs_labels"] = metrics.binary_iou(
                block_mask(gt_roi, packet.block_size), decoded.blocks)
        if self.segmenter is not None:
            self._segment(frame, original, test, rec, conf)
        rec["_mask"], rec["_test"] = mask, test
        return rec

    def _segment(self, frame: Frame, original, test, rec: dict, conf: Confusions) -> None:
        seg = self.segmenter
        p_orig, p_rec = seg.predict(original), seg.predict(test)
        classes = max(2, seg.class_adapter.num_classes)
        if conf.model is None:
            conf.model = np.zeros((classes, classes), np.int64)
        conf.model += metrics.confusion(p_orig.class_map, p_rec.class_map, classes)
        conf.roi += metrics.confusion(p_orig.roi.astype(np.uint8), p_rec.roi.astype(np.uint8), 2)
        rec["seg_roi_iou"] = metrics.binary_iou(p_orig.roi, p_rec.roi)
        if frame.label is not None:
            class_map = get_class_map(frame.label_map)
            gt = roi_pixels(frame.label, class_map,
                            _ids(self.non_roi.get(frame.label_map))).astype(np.uint8)
            conf.gt_reconstructed += metrics.confusion(gt, p_rec.roi.astype(np.uint8), 2)
            conf.gt_original += metrics.confusion(gt, p_orig.roi.astype(np.uint8), 2)
            conf.gt_frames += 1
            rec["gt_roi_iou_reconstructed"] = metrics.binary_iou(gt.astype(bool), p_rec.roi)
            rec["gt_roi_iou_original"] = metrics.binary_iou(gt.astype(bool), p_orig.roi)


def _ids(values) -> frozenset[int] | None:
    return frozenset(int(v) for v in values) if values is not None else None


def segmentation_scores(conf: Confusions) -> dict:
    """mIoU / iIoU (fractions) of one method; None where nothing was compared."""
    def pair(matrix: np.ndarray, roi_class: int = 1) -> tuple[float | None, float | None]:
        if matrix is None or matrix.sum() == 0:
            return None, None
        return _none(metrics.miou(matrix)), _none(metrics.iiou(matrix, roi_class=roi_class))

    miou_model = _none(metrics.miou(conf.model)) if conf.model is not None and \
        conf.model.sum() else None
    _, iiou_model = pair(conf.roi)
    gt_rec = pair(conf.gt_reconstructed)
    gt_orig = pair(conf.gt_original)
    return {"miou_vs_original": miou_model, "iiou_vs_original": iiou_model,
            "miou_vs_labels": gt_rec[0], "iiou_vs_labels": gt_rec[1],
            "miou_original_vs_labels": gt_orig[0], "iiou_original_vs_labels": gt_orig[1],
            "frames_segmented": conf.frames if conf.model is not None else 0,
            "frames_with_labels": conf.gt_frames}


def _none(value: float) -> float | None:
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def summarise(frames: list[dict], key_filter=None) -> dict:
    """Means over frames of every numeric per-frame value (NaN-aware), per method."""
    rows: dict[str, dict] = {}
    for method in dict.fromkeys(f["method"] for f in frames):
        chosen = [f for f in frames if f["method"] == method]
        first = chosen[0]
        row = {"method": method, "codec": first["codec"], "mode": first["mode"],
               "c_roi": first["c_roi"], "c_non": first["c_non"], "frames": len(chosen),
               "width": first["width"], "height": first["height"]}
        for key in ("kb", "roi_share", "psnr", "roi_psnr", "non_roi_psnr", "ssim", "roi_ssim",
                    "non_roi_ssim", "flash_fraction", "sa_psnr_region", "sa_psnr_stream",
                    "sa_ssim_region", "sa_ssim_stream", "mask_block_iou_vs_labels"):
            values = [_nan(f.get(key)) for f in chosen if key in f]
            row[key] = (_none(float(np.nanmean(values)))
                        if values and not np.all(np.isnan(values)) else None)
        row["kb_per_frame"] = row.pop("kb")
        raw = 3.0 * first["width"] * first["height"]
        row["compression_ratio"] = raw / (row["kb_per_frame"] * 1000.0) if row[
            "kb_per_frame"] else None
        rows[method] = row
    return rows


def distribution(values: list[float]) -> dict:
    data = np.asarray([v for v in values if v is not None and not math.isnan(v)], np.float64)
    if data.size == 0:
        return {"count": 0}
    return {"count": int(data.size), "mean": float(data.mean()), "min": float(data.min()),
            "p50": float(np.percentile(data, 50)), "p90": float(np.percentile(data, 90)),
            "p99": float(np.percentile(data, 99)), "max": float(data.max())}
