"""The ``sac eval`` experiment: uniform vs SAC (dual_crf, roi_qp) on a clip, at equal bytes
and by ROI BD-rate.

Per codec: the RD sweeps (uniform, SAC at each dCRF, roi_qp at each offset) with their
BD-rates against uniform; the uniform baseline, the SAC pair, the uniform CRF matched to
the pair's bytes, a roi_qp run matched to them (first offset), and a SAC run with a fixed
ROI CRF matched to the baseline's bytes; PNG plots, and with ``plan.video`` an MP4 of the
SAC pair's run (``eval/video.py``). Returns the results; prints nothing.

Over a degenerate ROI (empty, or under ``coder.MIN_ROI_SHARE`` of the frame) the ROI
BD-rates are refused and the result carries a warning (``EqualBytesResult.warnings``).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sac_ros.core.codec import CODECS, EncoderSettings
from sac_ros.core.errors import SacError
from sac_ros.core.io import Clip
from sac_ros.core.prefilter import Prefilter
from sac_ros.core.ratematch import match_crf
from sac_ros.eval.coder import (
    MATCH_ENCODES,
    BdResult,
    ClipCoder,
    RunResult,
    SweepPoint,
    bd_against,
    degenerate_roi,
    sweep,
)
from sac_ros.eval.task import TaskBd, TaskMeter, task_bd

Stage = Callable[[str], None]  # says what the experiment does now (for progress lines)


@dataclass(frozen=True)
class EqualBytesPlan:
    """What to run, per codec (config ``eval``, with the command line's overrides)."""

    codecs: tuple[str, ...]
    crf_sweep: dict[str, list[float]]
    delta_crfs: tuple[float, ...]
    roi_qp_offsets: dict[str, list[float]]
    uniform_crf: dict[str, float]               # the uniform baseline
    pair: dict[str, tuple[float, float]]         # the SAC pair of the equal-bytes table
    matched_roi_crf: dict[str, float]            # SAC ROI CRF matched to the baseline's bytes
    tolerance: float = 0.01
    block_size: int = 16
    video: bool = False                          # also write video_<codec>.mp4
    prefilter: Prefilter | None = None           # issue 20: rows with the non-ROI pre-filter

    def frames_to_code(self, frames: int) -> int:
        """About how many frames the experiment codes (for progress): per codec the
        sweeps, five measured runs and three size matches."""
        runs = sum(len(self.crf_sweep[c]) * (1 + len(self.delta_crfs)
                                             + len(self.roi_qp_offsets[c]))
                   + 5 + 3 * MATCH_ENCODES for c in self.codecs)
        return frames * runs


@dataclass
class EqualBytesResult:
    records: list[dict] = field(default_factory=list)
    bd_rates: list[BdResult] = field(default_factory=list)
    bd_rates_roi_qp: list[BdResult] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    roi_share: float = float("nan")              # of the clip's pixels, in ROI blocks
    warnings: list[str] = field(default_factory=list)
    videos: list[Path] = field(default_factory=list)
    task: dict | None = None                     # the perception measurement (eval/task.py)
    task_bd_rates: list[TaskBd] = field(default_factory=list)
    rd_points: dict[str, list[dict]] = field(default_factory=dict)  # "<codec> <curve>": points

    def summary(self, clip: Clip, mask: str, settings: EncoderSettings) -> dict:
        """The JSON document (``results.json``)."""
        return {
            "input": clip.source, "width": clip.width, "height": clip.height,
            "frames": len(clip.frames), "fps": clip.fps, "mask": mask,
            "preset": settings.preset, "gop": settings.gop, "roi_share": self.roi_share,
            "roi_degenerate": degenerate_roi(self.roi_share) is not None,
            "records": self.records,
            "bd_rates": [bd.__dict__ for bd in self.bd_rates],
            "bd_rates_roi_qp": [bd.__dict__ for bd in self.bd_rates_roi_qp],
            "notes": self.notes, "warnings": self.warnings,
            "videos": [str(v) for v in self.videos],
            "task": self.task, "task_bd_rate": [bd.__dict__ for bd in self.task_bd_rates],
            "rd_points": self.rd_points,
        }


def run_equal_bytes(clip: Clip, blocks, settings: EncoderSettings, plan: EqualBytesPlan,
                    out: Path, progress: Callable[[int], None] | None = None,
                    stage: Stage | None = None, task: TaskMeter | None = None,
                    class_offsets: Sequence[np.ndarray] | None = None) -> EqualBytesResult:
    """Run the experiment on ``clip``; ``class_offsets`` (per frame, core/classqp.py) add a
    class-level roi_qp row. Write ``rd_*.png`` and ``crop_*.png`` (and with
    ``plan.video`` ``video_*.mp4``) into ``out``. With ``task`` every run's reconstructions
    are segmented too: task BD-rates against uniform and ``task_rd_*.png``."""
    from sac_ros.eval import plots  # matplotlib: imported only when needed

    stage = stage or (lambda text: None)
    coder = ClipCoder(clip.frames, blocks, settings, progress, plan.block_size)
    coder.task = task
    result = EqualBytesResult(roi_share=coder.roi_share(),
                              task=task.describe() if task is not None else None)
    reason = degenerate_roi(result.roi_share)
    if reason:
        result.warnings.append(f"ROI BD-rates refused: {reason}; ROI columns marked * "
                               "(roi_degenerate in the JSON and CSV)")
    keep = len(clip.frames) // 2
    for codec in plan.codecs:
        label = CODECS[codec][2]
        curves = _sweeps(coder, codec, plan, result, stage, class_offsets)
        result.rd_points.update({f"{codec} {name}": [_point(p) for p in points]
                                 for name, points in curves.items()})
        stage(f"{label}: equal-bytes runs")
        video = _ClipVideo(out / f"video_{label}.mp4", clip, coder) if plan.video else None
        try:
            rows, equal_bytes = _equal_bytes_rows(coder, codec, plan, keep, result.notes,
                                                  video.add if video else None, class_offsets)
        finally:
            if video:
                video.close()
        if video:
            result.videos.append(video.path)
        result.records += [r.record() for r in rows]
        title = (f"{label} {settings.preset}: {clip.width}x{clip.height}, {len(clip.frames)} "
                 f"frames, ROI {rows[0].roi_share:.0%} of pixels")
        plots.rd_curves(out / f"rd_{label}.png", title, curves, equal_bytes, clip.fps)
        if task is not None:
            plots.task_rd_curves(out / f"task_rd_{label}.png", title, curves, equal_bytes,
                                 clip.fps, task.reference)
        plots.crop_figure(out / f"crop_{label}.png", clip.frames[keep],
                          [(f"{r.method}: {r.kb_per_frame:.1f} kB/frame", r.sample_frame)
                           for r in equal_bytes],
                          coder.pixel_mask(keep), keep)
    return result


class _ClipVideo:
    """The video of one run over ``clip``: frame i at i / fps."""

    def __init__(self, path: Path, clip: Clip, coder: ClipCoder):
        from sac_ros.eval.video import TileVideo

        self.path, self.clip, self.coder = path, clip, coder
        self.writer = TileVideo(path, coder.settings.preset)

    def add(self, index: int, decoded) -> None:
        self.writer.add(self.clip.frames[index], decoded, self.coder.pixel_mask(index),
                        index / self.clip.fps)

    def close(self) -> None:
        self.writer.close()


def _sweeps(coder: ClipCoder, codec: str, plan: EqualBytesPlan, result: EqualBytesResult,
            stage: Stage, class_offsets=None) -> dict[str, list[SweepPoint]]:
    """The RD curves of one codec; their BD-rates against uniform go into ``result``. The
    task-aware settings (``plan.prefilter``, ``class_offsets``) are swept as curves of
    their own, so they get ROI and task BD-rates too (issue 20)."""
    crfs = plan.crf_sweep[codec]
    label = CODECS[codec][2]
    stage(f"{label}: RD sweep, uniform")
    curves = {"uniform": sweep(coder, codec, crfs, None)}
    prefilter = plan.prefilter if plan.prefilter is not None and plan.prefilter.active else None
    variants = [(None, None)] + [(prefilter, None)] * (prefilter is not None)
    if class_offsets is not None and plan.roi_qp_offsets[codec]:
        variants.append((None, class_offsets))
    for method_filter, per_frame in variants:
        coder.prefilter, coder.class_offsets = method_filter, per_frame
        try:
            curves.update(_mode_sweeps(coder, codec, plan, result, stage, curves["uniform"]))
        finally:
            coder.prefilter, coder.class_offsets = None, None
    return curves


def _mode_sweeps(coder: ClipCoder, codec: str, plan: EqualBytesPlan, result: EqualBytesResult,
                 stage: Stage, anchor: list[SweepPoint]) -> dict[str, list[SweepPoint]]:
    """dual_crf per dCRF and roi_qp per offset with the coder's current task-aware settings
    (class offsets: roi_qp only, one curve: they replace the offset)."""
    crfs = plan.crf_sweep[codec]
    label = CODECS[codec][2]
    curves = {}
    deltas = () if coder.class_offsets else plan.delta_crfs
    offsets = plan.roi_qp_offsets[codec][:1 if coder.class_offsets else None]
    for mode, values in (("dual_crf", deltas), ("roi_qp", offsets)):
        variant = coder.variant(mode)
        for value in values:
            name = (f"SAC dCRF +{value:g}" if mode == "dual_crf" else f"ROI-QP {value:+g}") + (
                f" [{variant}]" if variant else "")
            stage(f"{label}: RD sweep, {name}")
            curves[name] = sweep(coder, codec, crfs, float(value), mode)
            bd = bd_against(anchor, curves[name], codec, float(value), result.roi_share, mode)
            bd.variant = variant
            (result.bd_rates if mode == "dual_crf" else result.bd_rates_roi_qp).append(bd)
            _task_bd(coder, result, anchor, curves[name], codec, float(value), mode, variant)
    return curves


def _task_bd(coder: ClipCoder, result: EqualBytesResult, anchor: list[SweepPoint],
             test: list[SweepPoint], codec: str, delta: float, mode: str,
             variant: str = "") -> None:
    """The curve's task BD-rate against uniform, when perception is measured."""
    if coder.task is not None:
        result.task_bd_rates.append(task_bd(anchor, test, codec, delta, mode,
                                            coder.task.reference, len(coder.task.indexes),
                                            variant))


def _point(point: SweepPoint) -> dict:
    """A sweep point for the JSON (NaN, e.g. no task measurement: None)."""
    return {k: (None if isinstance(v, float) and v != v else v)
            for k, v in vars(point).items()}


def _matched(run: RunResult, reference: RunResult) -> RunResult:
    run.method += " (= size)"
    run.size_match_error_pct = 100.0 * (run.total_bytes / reference.total_bytes - 1.0)
    return run


def _equal_bytes_rows(coder: ClipCoder, codec: str, plan: EqualBytesPlan, keep: int,
                      notes: list[str], on_frame=None,
                      class_offsets=None) -> tuple[list[RunResult], list[RunResult]]:
    """(the table's rows, the runs at the SAC pair's bytes) of one codec; ``on_frame``
    sees the SAC pair's decoded frames."""
    ref_crf = plan.uniform_crf[codec]
    roi_crf, non_crf = plan.pair[codec]
    uniform_ref = coder.run(codec, "uniform", ref_crf, full=True, keep_frame=keep)
    sac_pair = coder.run(codec, "dual_crf", roi_crf, non_crf, full=True, keep_frame=keep,
                         on_frame=on_frame)
    match = coder.match_uniform(codec, sac_pair.total_bytes, plan.tolerance, guess=ref_crf)
    uniform_eq = _matched(coder.run(codec, "uniform", match.crf, full=True, keep_frame=keep),
                          sac_pair)
    rows = [uniform_ref, uniform_eq, sac_pair]
    equal_bytes = [uniform_eq, sac_pair]
    offsets = plan.roi_qp_offsets[codec]
    if offsets:
        # One stream with the first configured offset, at the SAC pair's bytes.
        offset = offsets[0]
        try:
            qp_match = coder.match_roi_qp(codec, offset, sac_pair.total_bytes, plan.tolerance,
                                          guess=roi_crf)
            roi_qp_eq = _matched(coder.run(codec, "roi_qp", qp_match.crf,
                                           min(qp_match.crf + offset, 51), full=True,
                                           keep_frame=keep), sac_pair)
            rows.append(roi_qp_eq)
            equal_bytes.append(roi_qp_eq)
        except SacError as exc:
            notes.append(f"{codec}: no roi_qp run with offset {offset:+g} matches the SAC "
                         f"pair's size ({exc})")
    for run in _task_coding_rows(coder, codec, plan, sac_pair, keep, notes, class_offsets):
        rows.append(run)
        equal_bytes.append(run)
    matched_roi = plan.matched_roi_crf[codec]
    try:
        rev = coder.match_non_roi(codec, matched_roi, uniform_ref.total_bytes, plan.tolerance,
                                  guess=matched_roi + 6)
        rows.append(_matched(coder.run(codec, "dual_crf", matched_roi, rev.crf, full=True),
                             uniform_ref))
    except SacError as exc:
        notes.append(f"{codec}: no SAC run with ROI CRF {matched_roi:g} matches uniform "
                     f"CRF {ref_crf:g}'s size ({exc})")
    return rows, equal_bytes


def _task_coding_rows(coder: ClipCoder, codec: str, plan: EqualBytesPlan, sac_pair: RunResult,
                      keep: int, notes: list[str], class_offsets) -> list[RunResult]:
    """Issue 20's methods at the SAC pair's bytes, base CRF matched with the pair's dCRF /
    the first roi_qp offset kept: dual_crf and roi_qp with the non-ROI pre-filter; roi_qp
    with the class-level offsets (absolute, from config: the offset is then unused)."""
    prefilter = plan.prefilter if plan.prefilter is not None and plan.prefilter.active else None
    offsets = plan.roi_qp_offsets[codec]
    methods = []
    if prefilter is not None:  # (mode, spread, pre-filter, class offsets)
        methods.append(("dual_crf", plan.pair[codec][1] - plan.pair[codec][0], prefilter, None))
        if offsets:
            methods.append(("roi_qp", offsets[0], prefilter, None))
    if offsets and class_offsets is not None:
        methods.append(("roi_qp", offsets[0], None, class_offsets))
    runs = []
    for mode, spread, method_filter, per_frame in methods:
        coder.prefilter, coder.class_offsets = method_filter, per_frame
        try:
            match = match_crf(lambda crf, m=mode, d=spread: coder.total_bytes(
                codec, m, crf, min(crf + d, 51)), sac_pair.total_bytes, plan.tolerance,
                guess=plan.pair[codec][0])
            runs.append(_matched(coder.run(codec, mode, match.crf, min(match.crf + spread, 51),
                                           full=True, keep_frame=keep), sac_pair))
        except SacError as exc:
            notes.append(f"{codec}: no {mode} [{coder.variant(mode)}] run matches the SAC "
                         f"pair's size ({exc})")
        finally:
            coder.prefilter, coder.class_offsets = None, None
    return runs


def write_results(document: dict, json_path: Path, csv_path: Path) -> None:
    """``results.json`` (the whole document) and ``results.csv`` (its records)."""
    records = document["records"]
    json_path.write_text(json.dumps(document, indent=2) + "\n")
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
