"""``sac reproduce``: the papers' experiment on Cityscapes / KITTI-STEP, end to end.

For every sequence of the dataset (a Cityscapes snippet, a KITTI-STEP sequence):

1. frames resized to the papers' 1024x512 (Cityscapes default) with labels (nearest);
2. ROI block masks from the ground-truth labels (a snippet's frames use the nearest
   labelled frame: Cityscapes labels the 20th frame of each 30-frame snippet) or, with
   ``--mask model``, from a segmenter on every frame (the papers' S1);
3. ``ClipCoder`` runs every Table II configuration (uniform H.264 18/23/27,
   SA-X264 18/23, 18/27, 23/27, uniform H.265 23/28/32, SA-X265 23/28, 23/32, 28/32),
   plus, per codec, the uniform CRF that matches the papers' SA pair's bytes within 1%
   (the "equal bytes" comparison; the pair and the uniform baseline the search starts
   from are config ``eval.paper_pairs`` / ``eval.uniform_reference``);
4. with a segmenter, Table IV: the network on the decoded frames that have labels, against
   the labels (ROI / non-ROI mIoU, iIoU = IoU of the ROI) and against its own output on
   the original frames;
5. with a segmenter, the task BD-rate (``eval/task.py``): uniform at Table II's uniform
   CRFs against dual_crf at each ``eval.delta_crfs`` and roi_qp at each
   ``eval.roi_qp_offsets`` over the same CRFs, accuracy on the labelled frames against
   the labels, summed over sequences.

Figures are frame-weighted means over sequences; bytes are totals. Every number is
printed beside the paper's.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from sac_ros import datasets
from sac_ros.config import CoreConfig, encoder_settings, load_core_config
from sac_ros.core import metrics
from sac_ros.core.classes import get_class_map
from sac_ros.core.codec import CODECS
from sac_ros.core.errors import SacError
from sac_ros.core.mask import block_mask, roi_pixels
from sac_ros.core.ratematch import match_crf
from sac_ros.eval.coder import MATCH_ENCODES, ClipCoder, RunResult, method_name
from sac_ros.eval.tables import (
    PAPER_TABLE_II,
    PAPER_TABLE_III,
    PAPER_TABLE_IV,
    TABLE_II_ROWS,
    TABLE_IV_ROWS,
    fmt,
    paper_row,
    text_table,
)
from sac_ros.eval.task import TaskCurves, TaskMeter, task_line

PAPER_RATIO = {"h264": 250, "hevc": 375}     # "around 1:250 and 1:375" (seed 001, IV.D)
LABEL_MAPS = {"cityscapes": "cityscapes_label_ids", "kitti_step": "kitti_step"}


@dataclass(frozen=True)
class PaperCrfs:
    """The papers' SA pair and uniform baseline per codec: config ``eval.paper_pairs`` and
    ``eval.uniform_reference`` (config/sac.yaml is their one home)."""

    pairs: dict[str, tuple[float, float]]
    uniform: dict[str, float]


def paper_crfs(cfg: CoreConfig) -> PaperCrfs:
    """The papers' CRFs of a loaded core config (``load_core_config``)."""
    ev = cfg.eval
    return PaperCrfs({codec: (float(pair[0]), float(pair[1]))
                      for codec, pair in ev.paper_pairs.items()},
                     {codec: float(crf) for codec, crf in ev.uniform_reference.items()})


def _default_paper_crfs() -> PaperCrfs:
    return paper_crfs(load_core_config())


@dataclass
class ReproduceOptions:
    dataset: str                       # cityscapes | kitti_step
    path: str
    size: tuple[int, int] | None = None
    codecs: tuple[str, ...] = ("h264", "hevc")
    mask: str = "labels"               # labels | model
    model: str | None = None           # segmenter for Table IV (and --mask model)
    frames_per_sequence: int | None = None
    max_sequences: int | None = None
    tolerance: float = 0.01
    out: str = "sac_reproduce_out"
    paper: PaperCrfs = field(default_factory=_default_paper_crfs)
    task_deltas: tuple[float, ...] = ()             # task BD-rate curves (with a segmenter)
    task_offsets: dict[str, list[float]] = field(default_factory=dict)


@dataclass
class _Accumulator:
    """Frame-weighted sums of one configuration over sequences."""

    codec: str
    mode: str
    c_roi: float
    c_non: float
    method: str
    frames: int = 0
    total_bytes: int = 0
    pixels: int = 0
    sums: dict[str, float] = field(default_factory=dict)
    weights: dict[str, int] = field(default_factory=dict)
    crfs: list[float] = field(default_factory=list)
    seg_gt: np.ndarray = field(default_factory=lambda: np.zeros((2, 2), np.int64))
    seg_orig: np.ndarray = field(default_factory=lambda: np.zeros((2, 2), np.int64))
    seg_model: np.ndarray | None = None
    seg_frames: int = 0

    def add(self, run: RunResult) -> None:
        record = run.record()
        self.frames += run.frames
        self.total_bytes += run.total_bytes
        self.pixels += run.frames * run.width * run.height
        self.crfs.append(run.c_roi if self.mode == "uniform" else run.c_non)
        for key, value in record.items():
            if isinstance(value, float) and key not in ("c_roi", "c_non"):
                self.sums[key] = self.sums.get(key, 0.0) + value * run.frames
                self.weights[key] = self.weights.get(key, 0) + run.frames

    def record(self) -> dict:
        c_roi, c_non = self.c_roi, self.c_non
        if c_roi != c_roi:  # the matched uniform row: the mean of the per-sequence CRFs
            c_roi = c_non = float(np.mean(self.crfs))
        row = {"method": self.method, "codec": self.codec, "mode": self.mode,
               "c_roi": c_roi, "c_non": c_non, "frames": self.frames,
               "total_bytes": self.total_bytes, "matched_crfs": list(self.crfs)}
        for key, total in self.sums.items():
            row[key] = total / self.weights[key]
        row["kb_per_frame"] = self.total_bytes / self.frames / 1000.0 if self.frames else None
        row["compression_ratio"] = (3.0 * self.pixels / self.total_bytes
                                    if self.total_bytes else None)
        if self.seg_frames:
            row["miou_vs_labels"] = metrics.miou(self.seg_gt)
            row["iiou_vs_labels"] = metrics.iiou(self.seg_gt, roi_class=1)
            row["miou_vs_original"] = (metrics.miou(self.seg_model)
                                       if self.seg_model is not None else None)
            row["iiou_vs_original"] = metrics.iiou(self.seg_orig, roi_class=1)
            row["segmented_frames"] = self.seg_frames
        return row


def _resize(pixels: np.ndarray, size, nearest: bool) -> np.ndarray:
    if size is None or (pixels.shape[1], pixels.shape[0]) == tuple(size):
        return pixels
    method = PILImage.Resampling.NEAREST if nearest else PILImage.Resampling.BILINEAR
    return np.asarray(PILImage.fromarray(pixels).resize(tuple(size), method))


def _load_sequences(source: datasets.Source, options: ReproduceOptions):
    """Yield (sequence, frames, labels dict index -> class ids) one sequence at a time."""
    current, frames, labels = None, [], {}
    count = 0
    layout = source.label_layout
    for seq, frame_file, rgb in datasets.iter_source(source):
        if seq is not current:
            if current is not None and frames:
                yield current, frames, labels
                count += 1
                if options.max_sequences is not None and count >= options.max_sequences:
                    return
            current, frames, labels = seq, [], {}
        if options.frames_per_sequence is not None and len(frames) >= \
                options.frames_per_sequence:
            continue
        if frame_file.label is not None and layout is not None:
            ids = datasets.read_label(frame_file.label, layout)
            ids = ids[:, :, 0] if ids.ndim == 3 else ids
            labels[len(frames)] = _resize(ids, options.size, nearest=True)
        frames.append(_resize(rgb, options.size, nearest=False))
    if current is not None and frames:
        yield current, frames, labels


def _nearest(index: int, labelled: list[int]) -> int:
    return min(labelled, key=lambda i: (abs(i - index), i))


def planned_frames(source: datasets.Source, options: ReproduceOptions, configs: int) -> int:
    """About how many frames the experiment codes: ``configs`` runs per sequence, and per
    codec the matched uniform run and its size match."""
    total, count = 0, 0
    for seq in source.sequences:
        if options.max_sequences is not None and count >= options.max_sequences:
            break
        count += 1  # as _load_sequences counts: skipped sequences too
        wanted = seq.frames[:options.frames_per_sequence or len(seq.frames)]
        if options.mask == "labels" and not any(f.label is not None for f in wanted):
            continue  # skipped by the run
        total += len(wanted)
    return total * (configs + len(options.codecs) * (1 + MATCH_ENCODES))


def reproduce(options: ReproduceOptions, settings, progress: Callable[[int], None],
              log: Callable[[str], None],
              on_total: Callable[[int], None] | None = None) -> dict:
    """Run the experiment, write ``results.json`` and ``tables.txt``, return the result.
    ``on_total`` hears first about how many frames ``progress`` will count."""
    source = datasets.find_source(options.path, mixed_sizes_ok=options.size is not None)
    if source.kind != options.dataset:
        raise SacError(f"{options.path} is in the {source.kind} layout, not {options.dataset}")
    for codec in options.codecs:
        if codec not in options.paper.pairs or codec not in options.paper.uniform:
            raise SacError(f"unknown codec '{codec}'; choose h264 or hevc")
    segmenter = None
    if options.model:
        from sac_ros.segmentation.loader import load_segmenter

        segmenter = load_segmenter(model=options.model)
    if options.mask == "model" and segmenter is None:
        raise SacError("--mask model needs a segmentation model (--model default or a path)")
    experiment = _Experiment(options, settings, progress, segmenter)
    if on_total is not None:
        on_total(planned_frames(source, options, len(experiment.configs)
                                + len(experiment.task_runs())))
    sequences = []
    try:
        for seq, frames, labels in _load_sequences(source, options):
            if options.mask == "labels" and not labels:
                experiment.notes.append(f"{seq.name}: no labels, skipped (use --mask model)")
                continue
            experiment.sequence(seq.name, frames, labels)
            sequences.append({"name": seq.name, "frames": len(frames), "labels": len(labels),
                              "width": frames[0].shape[1], "height": frames[0].shape[0]})
            log(f"sac reproduce: {seq.name}: {len(frames)} frames, {len(labels)} labelled")
    finally:
        if segmenter is not None:
            segmenter.close()
    notes = experiment.notes
    if not sequences:
        raise SacError("no sequence could be evaluated" + (f" ({notes[0]})" if notes else ""))
    rows = [a.record() for a in experiment.acc.values() if a.frames]
    result = {"dataset": options.dataset, "path": str(source.path),
              "mask": options.mask, "segmenter": getattr(segmenter, "name", None),
              "preset": settings.preset, "gop": settings.gop, "sequences": sequences,
              "frames": sum(s["frames"] for s in sequences), "rows": rows, "notes": notes}
    if experiment.task is not None:
        result["task_bd_rate"] = [bd.__dict__ for bd in experiment.task.bd_rates()]
        result["task_points"] = experiment.task.document()
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    text = format_reproduction(result, options.paper)
    (out / "results.json").write_text(json.dumps(result, indent=2, default=_json) + "\n")
    (out / "tables.txt").write_text(text + "\n")
    return result


class _Experiment:
    """The configurations' accumulators, filled one sequence at a time."""

    def __init__(self, options: ReproduceOptions, settings, progress, segmenter):
        self.options, self.settings, self.progress = options, settings, progress
        self.segmenter = segmenter
        self.class_map = get_class_map(LABEL_MAPS[options.dataset])
        self.notes: list[str] = []
        # Table II's rows (and the papers' pair, should the config name another), then
        # per codec the uniform CRF matched to the pair's bytes.
        self.configs = [row for row in TABLE_II_ROWS if row[0] in options.codecs]
        self.configs += [(codec, *options.paper.pairs[codec]) for codec in options.codecs
                         if (codec, *options.paper.pairs[codec]) not in self.configs]
        self.acc: dict[tuple, _Accumulator] = {}
        for codec, c_roi, c_non in self.configs:
            mode = "uniform" if c_roi == c_non else "dual_crf"
            self.acc[(codec, c_roi, c_non)] = _Accumulator(
                codec, mode, c_roi, c_non, method_name(codec, mode, c_roi, c_non))
        for codec in options.codecs:
            label = CODECS[codec][2].upper()
            roi, non = options.paper.pairs[codec]
            self.acc[(codec, "matched")] = _Accumulator(
                codec, "uniform", float("nan"), float("nan"),
                f"{'H.264' if codec == 'h264' else 'H.265'} (= size of SA-{label} {roi:g}/{non:g})")
        self.task = None
        if segmenter is not None:
            anchors = {codec: sorted({c for k, c, n in TABLE_II_ROWS if k == codec and c == n})
                       for codec in options.codecs}
            self.task = TaskCurves(anchors, options.task_deltas, options.task_offsets)

    def task_runs(self) -> list:
        return self.task.runs() if self.task is not None else []

    def _task_sequence(self, coder: ClipCoder, frames, labels: dict, seg_frames) -> None:
        """The task curves' points on this sequence: every labelled frame, against its
        labels."""
        truth = {i: roi_pixels(labels[i], self.class_map) for i in seg_frames}
        meter = TaskMeter(self.segmenter, frames, seg_frames, labels=truth)
        for curve, c_roi, c_non in self.task.runs():
            codec, mode, _ = curve
            run = coder.run(codec, mode, c_roi, c_non, capture=seg_frames)
            score = meter.start()
            for index, rgb in run.captured.items():
                score.add(index, rgb)
            self.task.add(curve, c_roi, run.total_bytes, run.frames, score)

    def sequence(self, name: str, frames: list[np.ndarray], labels: dict) -> None:
        segmenter = self.segmenter
        blocks = _masks(frames, labels, self.class_map, segmenter, self.options.mask)
        seg_frames = sorted(labels) if segmenter is not None else []
        originals_seg = {i: segmenter.predict(frames[i]) for i in seg_frames}
        coder = ClipCoder(frames, blocks, self.settings, self.progress)

        def score(acc: _Accumulator, run: RunResult) -> None:
            if seg_frames:
                _segment(acc, run.captured, originals_seg, labels, self.class_map, segmenter)

        seq_bytes = {}
        for key in self.configs:
            codec, c_roi, c_non = key
            capture = seg_frames if key in TABLE_IV_ROWS else ()
            run = self.coder_run(coder, codec, self.acc[key].mode, c_roi, c_non, capture)
            self.acc[key].add(run)
            seq_bytes[key] = run.total_bytes
            if key in TABLE_IV_ROWS:
                score(self.acc[key], run)
        for codec in self.options.codecs:
            pair = seq_bytes[(codec, *self.options.paper.pairs[codec])]
            match = _match(coder, codec, pair, self.options.tolerance,
                           self.options.paper.uniform[codec], self.notes, name)
            run = self.coder_run(coder, codec, "uniform", match.crf, match.crf, seg_frames)
            self.acc[(codec, "matched")].add(run)
            score(self.acc[(codec, "matched")], run)
        if self.task is not None and seg_frames:
            self._task_sequence(coder, frames, labels, seg_frames)

    @staticmethod
    def coder_run(coder: ClipCoder, codec: str, mode: str, c_roi, c_non, capture) -> RunResult:
        return coder.run(codec, mode, float(c_roi), float(c_non), full=True, capture=capture)


def _json(value):
    return None if isinstance(value, float) and value != value else float(value)


def _match(coder: ClipCoder, codec: str, target: int, tolerance: float, guess: float,
           notes: list[str], name: str):
    """The uniform CRF matching ``target`` bytes; tiny clips may need a looser tolerance."""
    for tol in (tolerance, 0.05, 0.15):
        try:
            match = match_crf(lambda crf: coder.total_bytes(codec, "uniform", crf, crf), target,
                              tol, guess=guess)
        except SacError:
            continue
        if tol != tolerance:
            notes.append(f"{name}: {codec} equal-bytes match only within {100 * tol:g}% "
                         f"({100 * match.error:+.2f}%): the clip is too small for "
                         f"{100 * tolerance:g}%")
        return match
    raise SacError(f"{name}: no uniform {codec} CRF comes within 15% of the SA pair's size")


def _masks(frames, labels, class_map, segmenter, mode: str) -> list[np.ndarray]:
    if mode == "model":
        return [segmenter.block_roi(f) for f in frames]
    labelled = sorted(labels)
    cache: dict[int, np.ndarray] = {}
    blocks = []
    for index in range(len(frames)):
        source = _nearest(index, labelled)
        if source not in cache:
            ids = labels[source]
            if ids.shape != frames[index].shape[:2]:
                raise SacError(f"label size {ids.shape[1]}x{ids.shape[0]} differs from the frame "
                               f"size {frames[index].shape[1]}x{frames[index].shape[0]}")
            cache[source] = block_mask(roi_pixels(ids, class_map))
        blocks.append(cache[source])
    return blocks


def _segment(acc: _Accumulator, decoded: dict[int, np.ndarray], originals_seg: dict,
             labels: dict, class_map, segmenter) -> None:
    classes = max(2, segmenter.class_adapter.num_classes)
    if acc.seg_model is None:
        acc.seg_model = np.zeros((classes, classes), np.int64)
    for index, rgb in decoded.items():
        prediction = segmenter.predict(rgb)
        reference = originals_seg[index]
        gt = roi_pixels(labels[index], class_map).astype(np.uint8)
        acc.seg_gt += metrics.confusion(gt, prediction.roi.astype(np.uint8), 2)
        acc.seg_orig += metrics.confusion(reference.roi.astype(np.uint8),
                                          prediction.roi.astype(np.uint8), 2)
        acc.seg_model += metrics.confusion(reference.class_map, prediction.class_map, classes)
        acc.seg_frames += 1


def format_reproduction(result: dict, paper: PaperCrfs) -> str:
    """The tables of ``tables.txt``: every figure beside the paper's."""
    table_name = "Table II (Cityscapes)" if result["dataset"] == "cityscapes" else \
        "Table III (KITTI-STEP)"
    lines = [f"{result['dataset']} {result['path']}: {len(result['sequences'])} sequence(s), "
             f"{result['frames']} frames, masks from {result['mask']}, preset "
             f"{result['preset']}, GOP {result['gop']}", "",
             f"Quality: ours beside seed 001 {table_name} (SA in the stream / region reading)"]
    lines.append(_quality_table(result))
    lines += ["", "Compression ratio of the uniform baselines (paper: about 1:250 for H.264 "
              "CRF 23, 1:375 for H.265 CRF 28):"]
    for r in result["rows"]:
        if r["mode"] == "uniform" and r["c_roi"] == paper.uniform.get(r["codec"]):
            lines.append(f"  {r['method']}: 1:{fmt(r.get('compression_ratio'), '.0f')} "
                         f"(paper 1:{PAPER_RATIO[r['codec']]})")
    lines += ["", "Equal bytes: the papers' pair against the uniform CRF matched to its size "
              "(within 1%) and the papers' uniform baseline:"]
    lines += _equal_bytes_lines(result["rows"], paper)
    lines += ["", "Segmentation: ours beside seed 001 Table IV (Cityscapes), %:"]
    lines += _segmentation_lines(result)
    if result.get("task_bd_rate"):
        lines += ["", "Task BD-rate against uniform (bytes at equal segmentation accuracy on "
                  "the labelled frames, against the labels; negative = fewer bytes), with "
                  "the accuracy change at equal bytes:"]
        lines += [task_line(bd) for bd in result["task_bd_rate"]]
    for note in result["notes"]:
        lines.append(f"note: {note}")
    return "\n".join(lines)


def _crf(value: float) -> str:
    return fmt(value, ".2f" if value % 1 else "g")


def _quality_table(result: dict) -> str:
    paper_ii = PAPER_TABLE_II if result["dataset"] == "cityscapes" else PAPER_TABLE_III
    header = ["Method", "C_roi", "C_non", "kB/frame", "1:N", "PSNR", "paper", "SSIM", "paper",
              "SA-PSNR str", "reg", "paper", "SA-SSIM str", "reg", "paper"]
    rows = []
    for r in result["rows"]:
        ref = paper_row(paper_ii, r["codec"], r["c_roi"], r["c_non"]) or (None,) * 4
        rows.append([r["method"], _crf(r["c_roi"]), _crf(r["c_non"]),
                     fmt(r.get("kb_per_frame"), ".2f"), fmt(r.get("compression_ratio"), ".0f"),
                     fmt(r.get("psnr"), ".2f"), fmt(ref[0], ".2f"),
                     fmt(r.get("ssim"), ".4f"), fmt(ref[1], ".2f"),
                     fmt(r.get("sa_psnr_stream"), ".2f"), fmt(r.get("sa_psnr_region"), ".2f"),
                     fmt(ref[2], ".2f"), fmt(r.get("sa_ssim_stream"), ".4f"),
                     fmt(r.get("sa_ssim_region"), ".4f"), fmt(ref[3], ".2f")])
    return text_table(header, rows)


def _equal_bytes_lines(rows: list[dict], paper: PaperCrfs) -> list[str]:
    lines = []
    by_method = {r["method"]: r for r in rows}
    for codec, (roi, non) in paper.pairs.items():
        pair = next((r for r in rows if (r["codec"], r["c_roi"], r["c_non"], r["mode"])
                     == (codec, roi, non, "dual_crf")), None)
        matched = next((r for m, r in by_method.items() if m.startswith(
            "H.264 (= size" if codec == "h264" else "H.265 (= size")), None)
        if pair is None or matched is None:
            continue
        for r in (pair, matched):
            lines.append(f"  {r['method']:<34} {fmt(r.get('kb_per_frame'), '.2f'):>8} kB  "
                         f"ROI PSNR {fmt(r.get('roi_psnr'), '.2f')}  non-ROI PSNR "
                         f"{fmt(r.get('non_roi_psnr'), '.2f')}  PSNR {fmt(r.get('psnr'), '.2f')}"
                         f"  SA-PSNR str {fmt(r.get('sa_psnr_stream'), '.2f')} / reg "
                         f"{fmt(r.get('sa_psnr_region'), '.2f')}")
    return lines


def _segmentation_lines(result: dict) -> list[str]:
    seg_rows = [r for r in result["rows"] if "segmented_frames" in r]
    if not seg_rows:
        return ["  not measured: no segmentation model (pass --model default or a path)"]
    header = ["Method", "C_roi", "C_non", "SA-PSNR str", "SA-SSIM str", "mIoU vs GT",
              "paper mIoU", "iIoU vs GT", "paper iIoU", "mIoU vs orig", "iIoU vs orig",
              "frames"]
    rows = []
    for r in seg_rows:
        ref = (paper_row(PAPER_TABLE_IV, r["codec"], r["c_roi"], r["c_non"])
               if result["dataset"] == "cityscapes" else None) or (None,) * 4
        pct = lambda v: fmt(None if v is None else 100 * v, ".2f")  # noqa: E731
        rows.append([r["method"], _crf(r["c_roi"]), _crf(r["c_non"]),
                     fmt(r.get("sa_psnr_stream"), ".2f"), fmt(r.get("sa_ssim_stream"), ".4f"),
                     pct(r.get("miou_vs_labels")), fmt(ref[2], ".2f"),
                     pct(r.get("iiou_vs_labels")), fmt(ref[3], ".2f"),
                     pct(r.get("miou_vs_original")), pct(r.get("iiou_vs_original")),
                     str(r["segmented_frames"])])
    return [text_table(header, rows),
            "  (ours: ROI / non-ROI mIoU and the ROI IoU of the segmenter on the labelled "
            "frames; the paper's mIoU is over its 4 classes)"]


def settings_from_config(cfg: CoreConfig, preset: str | None, fps: float):
    """Encoder settings of a loaded core config, with ``preset`` (if given) and ``fps``."""
    return encoder_settings(cfg, preset, fps)
