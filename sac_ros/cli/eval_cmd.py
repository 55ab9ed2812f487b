"""``sac eval``: uniform vs SAC (dual_crf, roi_qp) on a clip, at equal bytes and by ROI BD-rate.

With ``--target-mbps`` it runs the rate controller instead. The experiments are
``sac_ros.eval.equal_bytes`` and ``sac_ros.eval.rate``; this module parses, checks the
options and prints.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sac_ros.cli.progress import Progress
from sac_ros.cli.results_folder import add_overwrite_option, check_results_folder
from sac_ros.config import EVAL_CODEC_TABLES, CoreConfig, encoder_settings, load_core_config
from sac_ros.core.codec import canonical_codec, check_crf
from sac_ros.core.errors import SacError
from sac_ros.core.io import load_clip
from sac_ros.core.prefilter import NONROI_FILTERS, Prefilter
from sac_ros.eval.coder import degenerate_roi
from sac_ros.eval.equal_bytes import (
    EqualBytesPlan,
    EqualBytesResult,
    run_equal_bytes,
    write_results,
)
from sac_ros.eval.masks import clip_blocks, clip_class_offsets
from sac_ros.eval.rate import BAND, rate_clip_gop, run_rate_control, write_json
from sac_ros.eval.tables import text_table
from sac_ros.eval.task import clip_meter, task_line

TABLE_COLUMNS = (
    ("method", "Method", "{}"), ("c_roi", "C_roi", "{:g}"), ("c_non", "C_non", "{:g}"),
    ("kb_per_frame", "kB/frame", "{:.2f}"), ("psnr", "PSNR", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"),
    ("roi_psnr", "ROI PSNR", "{:.2f}"), ("non_roi_psnr", "non-ROI PSNR", "{:.2f}"),
    ("sa_psnr_region", "SA-PSNR(reg)", "{:.2f}"), ("sa_psnr_stream", "SA-PSNR(str)", "{:.2f}"),
    ("sa_ssim_region", "SA-SSIM(reg)", "{:.4f}"), ("sa_ssim_stream", "SA-SSIM(str)", "{:.4f}"),
    ("compression_ratio", "1:N", "{:.0f}"), ("task_miou", "mIoU", "{:.4f}"),
    ("task_roi_iiou", "ROI iIoU", "{:.4f}"),
)


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="compare uniform coding with SAC on a clip",
                       description="Compare uniform coding with dual-CRF SAC (x264, x265) at "
                                   "equal bytes and by ROI BD-rate; write a table, JSON, CSV "
                                   "and PNG plots.")
    p.add_argument("input", nargs="?", help="video file, image-sequence folder, or "
                   "'sample[:clip]' for the bundled footage (default: from config)")
    p.add_argument("--config", help="YAML config (default: config/sac.yaml)")
    p.add_argument("--frames", type=int, help="number of frames (default: from config)")
    p.add_argument("--start", type=int, help="first frame index")
    p.add_argument("--codecs", nargs="+", help="codecs to compare: h264 hevc")
    p.add_argument("--preset", help="encoder preset (default: from config)")
    p.add_argument("--pair", nargs=2, type=float, metavar=("ROI_CRF", "NON_ROI_CRF"),
                   help="SAC CRF pair for the equal-bytes table (default: the papers' pair)")
    p.add_argument("--uniform-crf", type=float,
                   help="uniform baseline CRF for the table (default: the papers' baseline)")
    p.add_argument("--labels", help="label PNG folder (or one PNG) as the mask source")
    p.add_argument("--label-layout", default="cityscapes", choices=("cityscapes", "kitti_step"),
                   help="label format: Cityscapes *_labelIds.png or KITTI-STEP panoptic (R = id)")
    p.add_argument("--model", help="segmenter as the mask source: 'default' (the shipped ONNX "
                   "model) or a .onnx/.engine/.pt path; settings from config/segmentation.yaml")
    p.add_argument("--segment-every", type=int, metavar="N",
                   help="with --model: segment every N-th frame and every key frame, carry the "
                   "mask along the block motion in between, as the sensor's segment_every "
                   "(default: config mask.segment_every; 1 = every frame)")
    p.add_argument("--perception-model", metavar="MODEL",
                   help="segmenter run on the reconstructions for the task BD-rate (bytes "
                   "vs mIoU / ROI iIoU against --labels, else against its output on the "
                   "original frames): 'default', a .onnx/.engine/.pt path, or 'none' "
                   "(default: eval.perception_model)")
    p.add_argument("--task-frames", type=int, metavar="N",
                   help="frames of each run the perception model segments, evenly spread; "
                   "0 = every frame (default: eval.task_frames)")
    p.add_argument("--roi-qp-offsets", type=float, nargs="+", metavar="QP",
                   help="roi_qp non-ROI QP offsets for the BD-rate curves, for every codec "
                   "(default: eval.roi_qp_offsets; the first one gets the equal-bytes row)")
    p.add_argument("--target-mbps", type=float, nargs="+", metavar="MBPS",
                   help="run the rate controller at these targets (Mbit/s) instead of the "
                   "sweep: bitrate per 1-s window and ROI quality against capped uniform "
                   "coding at equal bytes (settings: config ratecontrol)")
    p.add_argument("--out", default="sac_eval_out", help="output folder for PNGs/JSON/CSV "
                   "(default: sac_eval_out; must be empty or new unless --overwrite)")
    add_overwrite_option(p)
    p.add_argument("--json", help="JSON output path (default: OUT/results.json)")
    p.add_argument("--csv", help="CSV output path (default: OUT/results.csv)")
    p.add_argument("--video", action="store_true",
                   help="also write OUT/video_<codec>.mp4 of the SAC pair's run: original | "
                   "reconstruction over ROI overlay | error heatmap, at the clip's rate")
    p.add_argument("--no-progress", action="store_true",
                   help="hide the progress (a bar on a terminal, plain lines otherwise)")
    _add_task_coding_options(p)
    p.set_defaults(func=run)


def _add_task_coding_options(p) -> None:
    """Issue 20's methods as extra equal-bytes rows (docs/task_aware_coding.md)."""
    p.add_argument("--nonroi-filter", choices=NONROI_FILTERS,
                   help="add dual_crf and roi_qp rows whose non-ROI blocks are low-passed "
                   "first (default: config prefilter.nonroi_filter; none = no rows)")
    p.add_argument("--nonroi-filter-strength", type=float, metavar="S",
                   help="blur: Gaussian sigma in px; downscale: the factor (default: config)")
    p.add_argument("--class-qp", action="store_true", default=None,
                   help="with --model: add a roi_qp row with class-level QP offsets (config "
                   "class_qp.offsets) at the SAC pair's bytes (default: config "
                   "class_qp.enabled)")


ROI_COLUMNS = ("roi_psnr", "sa_psnr_region", "sa_psnr_stream", "sa_ssim_region",
               "sa_ssim_stream")  # the columns that rest on the ROI's pixels


def format_table(records: list[dict]) -> str:
    """The equal-bytes table; ROI columns over a degenerate ROI are marked * (footnote)."""
    header = [title for _, title, _ in TABLE_COLUMNS]

    def cell(r: dict, key: str, fmt: str) -> str:
        if r.get(key) is None:
            return "-"
        flag = "*" if r.get("roi_degenerate") and key in ROI_COLUMNS else ""
        return fmt.format(r[key]) + flag

    rows = [[cell(r, key, fmt) for key, _, fmt in TABLE_COLUMNS] for r in records]
    table = text_table(header, rows)
    reason = degenerate_roi(records[0]["roi_share"]) if records else None
    if reason:
        table += f"\n* {reason}: too few blocks for ROI figures to mean anything"
    return table


def _plan(args, cfg: CoreConfig, codecs: list[str]) -> EqualBytesPlan:
    """The experiment's plan: config ``eval`` with the command line's overrides (which the
    rate-control run does not use)."""
    ev = cfg.eval
    overrides = not args.target_mbps
    uniform = args.uniform_crf if overrides and args.uniform_crf is not None else None
    pair = args.pair if overrides else None
    return EqualBytesPlan(
        codecs=tuple(codecs), crf_sweep={c: ev.crf_sweep[c] for c in codecs},
        delta_crfs=ev.delta_crfs,
        roi_qp_offsets={c: [float(o) for o in (args.roi_qp_offsets
                                               or ev.roi_qp_offsets.get(c, []))]
                        for c in codecs},
        uniform_crf={c: check_crf(uniform if uniform is not None
                                  else ev.uniform_reference[c], "uniform CRF")
                     for c in codecs},
        pair={c: tuple(check_crf(x, "pair CRF") for x in (pair or ev.paper_pairs[c]))
              for c in codecs},
        matched_roi_crf={c: float(ev.matched_sac_roi_crf[c]) for c in codecs},
        tolerance=ev.size_tolerance, block_size=cfg.mask.block_size, video=bool(args.video),
        prefilter=Prefilter(args.nonroi_filter or cfg.prefilter.kind,
                            cfg.prefilter.strength if args.nonroi_filter_strength is None
                            else args.nonroi_filter_strength))


def _options(args, cfg: CoreConfig) -> tuple[int, int, list[str]]:
    """(frames, start, codecs) after the option checks."""
    ev = cfg.eval
    if args.target_mbps and min(args.target_mbps) <= 0:
        raise SacError("--target-mbps must be positive")
    if any(not 0 < o <= 51 for o in args.roi_qp_offsets or []):
        raise SacError("--roi-qp-offsets must be in (0, 51]")
    if args.model and args.labels:
        raise SacError("give either --model or --labels as the mask source, not both")
    if args.class_qp and not args.model:
        raise SacError("--class-qp goes with --model (its class maps give the offsets)")
    if args.segment_every is not None and not args.model:
        raise SacError("--segment-every goes with --model (a segmenter as the mask source)")
    if args.segment_every is not None and not 1 <= args.segment_every <= 1000:
        raise SacError("--segment-every must be in 1-1000 (1 = every frame)")
    if args.task_frames is not None and args.task_frames < 0:
        raise SacError("--task-frames must be 0 (every frame) or more")
    default_frames = cfg.ratecontrol.frames if args.target_mbps else ev.frames
    frames = args.frames if args.frames is not None else default_frames
    start = args.start if args.start is not None else ev.start
    if frames < 2:
        raise SacError("--frames must be at least 2")
    codecs = [canonical_codec(c) for c in (args.codecs or ev.codecs)]
    for codec in codecs:
        for key in EVAL_CODEC_TABLES:
            if codec not in getattr(ev, key):
                raise SacError(f"config eval.{key} has no entry for codec {codec}")
    return frames, start, codecs


def run(args) -> int:
    cfg = load_core_config(args.config)
    frames, start, codecs = _options(args, cfg)
    if args.video and args.target_mbps:
        raise SacError("--video goes with the equal-bytes run, not --target-mbps")
    plan = _plan(args, cfg, codecs)
    check_results_folder(args.out, args.overwrite, {"--json": args.json, "--csv": args.csv})
    clip = load_clip(args.input or cfg.eval.input, start, frames)
    settings = encoder_settings(cfg, args.preset, clip.fps)
    # The segmenter runs on the key frames of the coding run, as in the sensor.
    gop = (rate_clip_gop(cfg.ratecontrol, clip.fps, len(clip.frames)) if args.target_mbps
           else settings.gop)
    blocks, mask = clip_blocks(clip, cfg.mask, args.model, args.labels, args.label_layout,
                               args.segment_every, gop)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress("sac eval", "frame", plan.frames_to_code(len(clip.frames)),
                        disable=args.no_progress)
    try:
        if args.target_mbps:
            document = _rate_control(args, cfg, clip, settings, blocks, mask, plan, out,
                                     progress.update)
        else:
            _input_line(clip, mask, settings, str(settings.gop), out)
            progress.stage("segmenting the original frames for the task BD-rate")
            task = _task_meter(args, cfg, clip)
            class_offsets = None
            # config class_qp.enabled: with a segmenter only (the polygon has no classes)
            if args.class_qp or (args.class_qp is None and cfg.class_qp.enabled and args.model):
                progress.stage("class maps for the class-level QP offsets")
                class_offsets = clip_class_offsets(clip, args.model, cfg.class_qp.offsets,
                                                   blocks)
            result = run_equal_bytes(clip, blocks, settings, plan, out, progress.update,
                                     progress.stage, task, class_offsets)
    finally:
        progress.close()
    if args.target_mbps:
        return _print_rate_control(document, Path(args.json) if args.json
                                   else out / "rate_control.json", out)
    return _print_equal_bytes(result, result.summary(clip, mask, settings), args, out)


def _task_meter(args, cfg: CoreConfig, clip):
    """The perception measurement (eval/task.py), or None when switched off."""
    model = args.perception_model or cfg.eval.perception_model
    if model is None or model == "none":
        return None
    wanted = cfg.eval.task_frames if args.task_frames is None else (args.task_frames or None)
    return clip_meter(clip, model, wanted, cfg.mask, args.labels, args.label_layout)


def _input_line(clip, mask: str, settings, gop: str, out: Path) -> None:
    print(f"input: {clip.source}  {clip.width}x{clip.height}, {len(clip.frames)} frames at "
          f"{clip.fps:g} fps; mask: {mask}; preset {settings.preset}, GOP {gop}; "
          f"results go to {out}/", file=sys.stderr)


def _print_equal_bytes(result: EqualBytesResult, document: dict, args, out: Path) -> int:
    records = result.records
    print()
    print(format_table(records))
    print()
    print("ROI BD-rate against uniform (bytes vs ROI PSNR; negative = fewer bytes), with the "
          "non-ROI PSNR change at equal bytes:")
    for bd in result.bd_rates + result.bd_rates_roi_qp:
        print(_bd_line(bd))
    if result.task is not None:
        print(_task_header(result.task))
        for bd in result.task_bd_rates:
            print(task_line(bd.__dict__))
    print("Boundary 'flash' (pixels within 8 px of the ROI edge off by > 40 levels):")
    for r in records:
        flash = r["flash_fraction"]
        print(f"  {r['method']}: " + ("-" if flash is None else f"{100 * flash:.3f}%"))
    for note in result.notes:
        print(f"note: {note}")
    for warning in result.warnings:
        print(f"sac eval: warning: {warning}", file=sys.stderr)
    json_path = Path(args.json) if args.json else out / "results.json"
    csv_path = Path(args.csv) if args.csv else out / "results.csv"
    write_results(document, json_path, csv_path)
    videos = "".join(f", {v.name}" for v in result.videos)
    print(f"wrote {json_path}, {csv_path}{videos} and PNGs in {out}/")
    return 0


def _bd_line(bd) -> str:
    name = "dCRF" if bd.mode == "dual_crf" else "roi_qp offset"
    non_roi = ("-" if bd.non_roi_bd_psnr_db is None else f"{bd.non_roi_bd_psnr_db:+.2f} dB")
    variant = f" [{bd.variant}]" if bd.variant else ""
    head = f"  {bd.codec} {name} +{bd.delta_crf:g}{variant}: "
    if bd.refused or bd.roi_bd_rate_pct is None:
        why = bd.refused or "the ROI curves cannot be fitted"
        return f"{head}ROI BD-rate refused ({why}); non-ROI {non_roi} at equal bytes"
    return (f"{head}ROI BD-rate {bd.roi_bd_rate_pct:+.1f}%  (ROI {bd.roi_bd_psnr_db:+.2f} dB, "
            f"non-ROI {non_roi} at equal bytes)")


def _task_header(task: dict) -> str:
    against = ("the labels" if task["reference"] == "labels"
               else "its output on the original frames")
    return (f"Task BD-rate against uniform (bytes at equal perception accuracy; negative = "
            f"fewer bytes): {task['perception_model']} on {task['frames_scored']} frames of "
            f"each run, against {against}; mIoU over {task['miou_over']}; with the accuracy "
            "change at equal bytes:")


def _rate_control(args, cfg, clip, settings, blocks, mask: str, plan: EqualBytesPlan,
                  out: Path, progress) -> dict:
    section = cfg.ratecontrol
    gop = rate_clip_gop(section, clip.fps, len(clip.frames))
    _input_line(clip, mask, settings, f"{gop} ({section.gop_s:g} s) under rate control",
                out)
    return run_rate_control(clip, blocks, settings, section, args.target_mbps,
                            list(plan.codecs), out, progress,
                            cfg.mask.block_size, cfg.eval.size_tolerance, mask)


def _print_rate_control(document: dict, path: Path, out: Path) -> int:
    print()
    print(f"Rate control: 1-s windows after the first GOP, relative to the target (band "
          f"{BAND[0]:.0%}-{BAND[1]:.0%}); quality against uniform capped by the same VBV at "
          "the same bytes:")
    header = (f"{'codec':<6}{'target':>7}  {'mode':<9}{'avg':>7}{'win min':>9}{'win max':>9}"
              f"{'band':>6}{'ROI':>8}{'non-ROI':>9}{'unif ROI':>10}{'ROI gain':>10}"
              f"{'non-ROI':>9}")
    print(header)
    print("-" * len(header))
    for r in document["records"]:
        print(f"{r['codec']:<6}{r['target_mbps']:>6g}M  {r['mode']:<9}{r['avg_mbps']:>7.3f}"
              f"{r['window_min']:>9.1%}{r['window_max']:>9.1%}{'yes' if r['in_band'] else 'NO':>6}"
              f"{r['roi_psnr']:>8.2f}{r['non_roi_psnr']:>9.2f}{r['uniform_roi_psnr']:>10.2f}"
              f"{r['roi_gain_db']:>+10.2f}{r['non_roi_change_db']:>+9.2f}")
        if r["warning"]:
            print(f"  warning: {r['warning']}")
    write_json(document, path)
    print(f"wrote {path} and rate_*.png in {out}/")
    return 0
