"""Task accuracy of reconstructions: does perception still work on what arrives?

A segmenter (any drop-in model, as for the mask) runs on the reconstructed frames of a
run and is scored against a reference:

- ``labels``: ground truth (``sac eval --labels``, ``sac reproduce``): the ROI / non-ROI
  map of the labels; mIoU is then over ROI and non-ROI;
- ``original``: the same segmenter on the original frames (segmented once, cached):
  mIoU over the model's classes.

The ROI iIoU is the papers' iIoU: the IoU of the ROI (the union of the ROI classes).
Confusions are accumulated over the scored frames of a run (``TaskScore``); a run's
accuracy rides on ``RunResult.task_miou`` / ``task_roi_iiou`` and the sweep points, and
``task_bd`` gives the Bjontegaard rate at equal accuracy (bytes vs mIoU, bytes vs ROI
iIoU) of a curve against the uniform anchor. The metrics are ``core/metrics.py``'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from sac_ros.core import metrics

ROI_CLASS = 1  # binary maps here: 1 = ROI, 0 = non-ROI (as sac reproduce and sac report)
REFERENCES = ("labels", "original")


def scored_indexes(frames: int, wanted: int | None) -> list[int]:
    """The frames a run scores: ``wanted`` of ``frames``, evenly spread (first and last
    included); None or 0 = every frame."""
    if not wanted or wanted >= frames:
        return list(range(frames))
    return sorted({int(round(i)) for i in np.linspace(0, frames - 1, wanted)})


class TaskMeter:
    """The task measurement of one clip: the reference of each scored frame, computed
    once, and a fresh ``TaskScore`` per run (``start``)."""

    def __init__(self, segmenter, frames: Sequence[np.ndarray], indexes: Sequence[int],
                 labels: Mapping[int, np.ndarray] | None = None):
        """``labels``: frame index -> bool ROI pixel map of the ground truth; frames
        without one are not scored. Without ``labels`` the reference is the segmenter on
        the original frames."""
        self.segmenter = segmenter
        self.classes = max(2, segmenter.class_adapter.num_classes)
        self.reference = "labels" if labels else "original"
        self._roi: dict[int, np.ndarray] = {}
        self._class_map: dict[int, np.ndarray] = {}
        for index in indexes:
            if labels:
                if index in labels:
                    self._roi[index] = np.asarray(labels[index], bool).astype(np.uint8)
                continue
            prediction = segmenter.predict(frames[index])
            self._roi[index] = prediction.roi.astype(np.uint8)
            self._class_map[index] = prediction.class_map
        if not self._roi:
            raise ValueError("no frame to score: no label matches a scored frame")

    @property
    def indexes(self) -> list[int]:
        return sorted(self._roi)

    @property
    def model(self) -> str:
        return self.segmenter.name

    def start(self) -> TaskScore:
        return TaskScore(self)

    def describe(self) -> dict:
        """The JSON's ``task`` entry."""
        return {"perception_model": self.model, "reference": self.reference,
                "frames_scored": len(self._roi), "scored_indexes": self.indexes,
                "miou_over": ("ROI / non-ROI" if self.reference == "labels"
                              else f"the model's {self.classes} classes")}


class TaskScore:
    """Confusions of one run's reconstructions against the meter's reference."""

    def __init__(self, meter: TaskMeter):
        self.meter = meter
        self.roi = np.zeros((2, 2), np.int64)
        self.classes = np.zeros((meter.classes, meter.classes), np.int64)
        self.frames = 0

    def add(self, index: int, rgb: np.ndarray) -> None:
        """Score reconstruction ``index`` (ignored when it is not a scored frame)."""
        meter = self.meter
        reference = meter._roi.get(index)
        if reference is None:
            return
        prediction = meter.segmenter.predict(rgb)
        self.roi += metrics.confusion(reference, prediction.roi.astype(np.uint8), 2)
        if meter.reference == "original":
            self.classes += metrics.confusion(meter._class_map[index], prediction.class_map,
                                              meter.classes)
        self.frames += 1

    def accuracy(self) -> tuple[float, float]:
        """(mIoU, ROI iIoU) over the frames added; NaN before any."""
        if not self.frames:
            return float("nan"), float("nan")
        matrix = self.roi if self.meter.reference == "labels" else self.classes
        return metrics.miou(matrix), metrics.iiou(self.roi, roi_class=ROI_CLASS)


@dataclass
class TaskBd:
    """A curve's task figures against the uniform anchor. BD-rates in percent, negative =
    fewer bytes for the same accuracy; ``bd_*`` = the mean accuracy change at equal bytes
    (negative = a loss). None where the curves cannot be fitted (fewer than two points
    left, no shared accuracy range). ``points_*``: (anchor, test) points used of each
    curve (``pareto``)."""

    codec: str
    mode: str
    delta: float                       # dual_crf: dCRF; roi_qp: non-ROI QP offset
    reference: str
    task_bd_rate_miou_pct: float | None
    task_bd_rate_roi_iiou_pct: float | None
    bd_miou: float | None
    bd_roi_iiou: float | None
    frames_scored: int = 0
    points_miou: tuple[int, int] = (0, 0)
    points_roi_iiou: tuple[int, int] = (0, 0)
    notes: list[str] = field(default_factory=list)   # why a figure is None
    variant: str = ""          # task-aware settings of the curve (ClipCoder.variant)


def _finite(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def pareto(rates: Sequence[float], accuracy: Sequence[float]) -> tuple[list[float], list[float]]:
    """The points no cheaper point of the curve matches in accuracy, by rate: more bytes
    for no more accuracy is the segmenter's noise, and an accuracy curve that turns back
    cannot be integrated. What is left rises strictly in both."""
    kept_r, kept_a = [], []
    for rate, acc in sorted(zip(rates, accuracy, strict=True)):
        if np.isfinite(acc) and (not kept_a or acc > kept_a[-1]):
            kept_r.append(rate)
            kept_a.append(acc)
    return kept_r, kept_a


def task_bd(anchor: Sequence, test: Sequence, codec: str, delta: float, mode: str,
            reference: str, frames_scored: int = 0, variant: str = "") -> TaskBd:
    """Task BD figures of the ``test`` sweep points against the ``anchor``'s (each with
    ``kb_per_frame``, ``task_miou``, ``task_roi_iiou``; ``coder.SweepPoint``): on each
    curve's ``pareto`` points, with the piecewise cubic Hermite Bjontegaard integral
    (``metrics.bd_rate(..., interpolation="pchip")``), which a cubic fit's overshoot on
    flat accuracy curves would swamp."""

    notes: list[str] = []

    def figures(key: str, name: str) -> tuple[float | None, float | None, tuple[int, int]]:
        ra, qa = pareto([p.kb_per_frame for p in anchor], [getattr(p, key) for p in anchor])
        rt, qt = pareto([p.kb_per_frame for p in test], [getattr(p, key) for p in test])
        rate = _finite(metrics.bd_rate(ra, qa, rt, qt, "pchip"))
        if rate is None:
            notes.append(f"{name}: fewer than two points rise in accuracy" if min(
                len(ra), len(rt)) < 2 else f"{name}: the curves share no accuracy range")
        return rate, _finite(metrics.bd_quality(ra, qa, rt, qt, "pchip")), (len(ra), len(rt))

    miou_rate, miou_gap, miou_points = figures("task_miou", "mIoU")
    iiou_rate, iiou_gap, iiou_points = figures("task_roi_iiou", "ROI iIoU")
    return TaskBd(codec, mode, float(delta), reference, miou_rate, iiou_rate, miou_gap,
                  iiou_gap, frames_scored, miou_points, iiou_points, notes, variant)


def open_meter(model: str, frames: Sequence[np.ndarray], wanted: int | None,
               non_roi_classes: Mapping | None = None,
               labels: Mapping[int, np.ndarray] | None = None) -> TaskMeter:
    """A meter with the segmenter ``model`` ('default' or a path; settings from the
    segmentation config, ``non_roi_classes`` = sac.yaml's overrides as for the mask)."""
    from sac_ros.segmentation.loader import load_segmenter

    segmenter = load_segmenter(model=model)
    overrides = (non_roi_classes or {}).get(segmenter.class_adapter.name)
    if overrides is not None:
        segmenter.set_non_roi_ids(overrides)
    try:
        return TaskMeter(segmenter, frames, scored_indexes(len(frames), wanted), labels)
    except BaseException:
        segmenter.close()
        raise


def clip_meter(clip, model: str, wanted: int | None, mask_cfg, labels: str | None = None,
               label_layout: str = "cityscapes") -> TaskMeter:
    """The meter of ``sac eval``: ``model`` on ``wanted`` frames of ``clip``, against the
    ``labels`` (a folder or one PNG, matched by frame name as the mask's) when given."""
    from sac_ros.core.mask import LABEL_LAYOUTS, LabelMaskSource

    references = None
    if labels:
        source = LabelMaskSource(labels, label_layout,
                                 mask_cfg.non_roi_classes.get(LABEL_LAYOUTS[label_layout]))
        references = {i: source.roi_pixels(i, clip.frames[i], clip.names[i])
                      for i in scored_indexes(len(clip.frames), wanted)}
    return open_meter(model, clip.frames, wanted, mask_cfg.non_roi_classes, references)


@dataclass
class TaskPoint:
    """One RD point of task accuracy (``task_bd`` reads these three)."""

    kb_per_frame: float
    task_miou: float
    task_roi_iiou: float


@dataclass
class _PointSums:
    total_bytes: int = 0
    frames: int = 0
    score: TaskScore | None = None     # confusions summed over sequences


class TaskCurves:
    """Task RD curves summed over sequences (``sac reproduce``): per codec the uniform
    anchor at ``crfs``, dual_crf at each dCRF and roi_qp at each offset over the same
    CRFs; bytes are totals, accuracies come from the summed confusions."""

    def __init__(self, crfs: Mapping[str, Sequence[float]], deltas: Sequence[float],
                 offsets: Mapping[str, Sequence[float]]):
        self.crfs = {codec: [float(c) for c in values] for codec, values in crfs.items()}
        self.curves = [(codec, "uniform", 0.0) for codec in self.crfs]
        self.curves += [(codec, "dual_crf", float(d)) for codec in self.crfs for d in deltas]
        self.curves += [(codec, "roi_qp", float(o)) for codec in self.crfs
                        for o in offsets.get(codec, [])]
        self._sums: dict[tuple, _PointSums] = {}
        self.reference = "labels"

    def runs(self) -> list[tuple[tuple[str, str, float], float, float]]:
        """Every point to code: (curve, ROI CRF, non-ROI CRF)."""
        return [(curve, crf, min(crf + curve[2], 51.0))
                for curve in self.curves for crf in self.crfs[curve[0]]]

    def add(self, curve: tuple[str, str, float], crf: float, total_bytes: int, frames: int,
            score: TaskScore) -> None:
        sums = self._sums.setdefault((curve, crf), _PointSums())
        sums.total_bytes += total_bytes
        sums.frames += frames
        self.reference = score.meter.reference
        if sums.score is None:
            sums.score = TaskScore(score.meter)
        sums.score.roi += score.roi
        sums.score.classes += score.classes
        sums.score.frames += score.frames

    def points(self, curve: tuple[str, str, float]) -> list[TaskPoint]:
        points = []
        for crf in self.crfs[curve[0]]:
            sums = self._sums.get((curve, crf))
            if sums is None or not sums.frames:
                continue
            points.append(TaskPoint(sums.total_bytes / sums.frames / 1000.0,
                                    *sums.score.accuracy()))
        return points

    def bd_rates(self) -> list[TaskBd]:
        """Every SAC curve against its codec's uniform curve."""
        results = []
        for codec, mode, delta in self.curves:
            if mode == "uniform":
                continue
            scored = sum(s.score.frames for (curve, _), s in self._sums.items()
                         if curve == (codec, mode, delta))
            scored //= max(1, len(self.crfs[codec]))
            results.append(task_bd(self.points((codec, "uniform", 0.0)),
                                   self.points((codec, mode, delta)), codec, delta, mode,
                                   self.reference, scored))
        return results

    def document(self) -> dict:
        """The JSON's task points: per curve, (kB/frame, mIoU, ROI iIoU) by CRF."""
        return {f"{codec} {mode} {delta:g}": [p.__dict__ for p in self.points(
            (codec, mode, delta))] for codec, mode, delta in self.curves}


def task_line(bd: Mapping) -> str:
    """One printed line of a ``TaskBd`` (as its JSON dict), with why a figure is missing."""
    name = "dCRF" if bd["mode"] == "dual_crf" else "roi_qp offset"
    pct = lambda v: "-" if v is None else f"{v:+.1f}%"  # noqa: E731
    gap = lambda v: "-" if v is None else f"{v:+.4f}"  # noqa: E731
    variant = f" [{bd['variant']}]" if bd.get("variant") else ""
    line = (f"  {bd['codec']} {name} +{bd['delta']:g}{variant}: "
            f"mIoU {pct(bd['task_bd_rate_miou_pct'])} "
            f"(mIoU {gap(bd['bd_miou'])}), ROI iIoU {pct(bd['task_bd_rate_roi_iiou_pct'])} "
            f"(ROI iIoU {gap(bd['bd_roi_iiou'])})")
    return line + "".join(f"; {note}" for note in bd.get("notes") or ())
