"""``sac report BAG`` and ``sac reproduce --cityscapes PATH | --kitti-step PATH``."""

from __future__ import annotations

from sac_ros import datasets
from sac_ros.cli.progress import Progress
from sac_ros.cli.results_folder import add_overwrite_option, check_results_folder
from sac_ros.core.codec import CODEC_ALIASES, canonical_codec
from sac_ros.core.errors import SacError
from sac_ros.core.wire import INPUT_TOPIC


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "report", help="evaluate a recorded pipeline run: HTML, PNG plots, JSON",
        description="Offline evaluation of a recorded run (sac bag run / sac bag record "
                    "--camera): per-frame size and bit rate, ROI / non-ROI / overall PSNR and "
                    "SSIM, SA-PSNR / SA-SSIM, segmentation mIoU / iIoU against the originals' "
                    "segmentation and the bag's labels, latency.")
    p.add_argument("bag", help="recorded run bag (folder or its .mcap / .db3 file)")
    p.add_argument("--out", default="sac_report", help="output folder (index.html, report.json, "
                   "PNGs; must be empty or new unless --overwrite)")
    add_overwrite_option(p)
    p.add_argument("--video", action="store_true",
                   help="also write OUT/<camera>_video.mp4: original | reconstruction over ROI "
                   "overlay | error heatmap, at camera time")
    p.add_argument("--model", default="auto", help="segmenter: auto (the default model when "
                   "installed), default, a .onnx/.engine/.pt path, or none")
    p.add_argument("--camera", action="append", default=None, metavar="NAMESPACE",
                   help="only this camera (repeatable; default: every camera in the bag)")
    p.add_argument("--input-topic", default=INPUT_TOPIC,
                   help="name of the camera image topic under each namespace")
    p.add_argument("--max-frames", type=int, help="evaluate at most this many frames per camera")
    p.add_argument("--source-frames", type=int,
                   help="frames the source had (default: the originals recorded)")
    p.add_argument("--link-budget", metavar="MBPS|LINK",
                   help="the link the cameras share, in Mbit/s or by name (100BASE-T1, "
                        "1000BASE-T1); default: config/pipeline.yaml's "
                        "sac_pipeline.link_budget_mbps")
    p.add_argument("--no-progress", action="store_true",
                   help="hide the progress (a bar on a terminal, plain lines otherwise)")
    p.set_defaults(func=run_report)
    _add_reproduce(sub)


def _add_reproduce(sub) -> None:
    p = sub.add_parser(
        "reproduce", help="the papers' experiment on Cityscapes or KITTI-STEP, end to end",
        description="Uniform H.264 CRF 23 vs SA-X264 18/27 and H.265 28 vs SA-X265 23/32 (all "
                    "seed 001 Table II rows), at equal bytes, with segmentation mIoU/iIoU, "
                    "every number beside the paper's.")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--cityscapes", metavar="PATH", help="Cityscapes root (with "
                      "leftImg8bit_sequence/ and gtFine/) or a split / city folder")
    data.add_argument("--kitti-step", metavar="PATH", help="KITTI-STEP root (with images/ and "
                      "panoptic_maps/) or a split / sequence folder")
    p.add_argument("--size", default="auto", help="WIDTHxHEIGHT, native, or auto (default: "
                   "1024x512 for Cityscapes as in the papers, native for KITTI-STEP)")
    p.add_argument("--codecs", nargs="+", default=["h264", "hevc"], choices=CODEC_ALIASES,
                   metavar="CODEC", help="h264 (x264, avc) and/or hevc (h265, x265); "
                   "default: both")
    p.add_argument("--mask", default="labels", choices=("labels", "model"),
                   help="ROI masks from the ground-truth labels (default) or the segmenter")
    p.add_argument("--model", help="segmenter for Table IV, the task BD-rate (and --mask "
                   "model): default or a path; without it neither is measured")
    p.add_argument("--frames-per-sequence", type=int, help="use only the first N frames of "
                   "each sequence")
    p.add_argument("--max-sequences", type=int, help="use at most N sequences")
    p.add_argument("--preset", help="encoder preset (default: config/sac.yaml's)")
    p.add_argument("--config", help="core config (default: config/sac.yaml)")
    p.add_argument("--out", default="sac_reproduce_out", help="output folder "
                   "(results.json, tables.txt; must be empty or new unless --overwrite)")
    add_overwrite_option(p)
    p.add_argument("--no-progress", action="store_true",
                   help="hide the progress (a bar on a terminal, plain lines otherwise)")
    p.set_defaults(func=run_reproduce)


def run_report(args) -> int:
    from sac_ros.pipeline import load_layout, parse_link_budget
    from sac_ros.report.report import ReportOptions, format_report, make_report

    if args.max_frames is not None and args.max_frames < 1:
        raise SacError("--max-frames must be at least 1")
    budget = (parse_link_budget(args.link_budget) if args.link_budget is not None
              else load_layout().link_budget_mbps)
    check_results_folder(args.out, args.overwrite)
    model = None if args.model == "none" else args.model
    bar = Progress("sac report", "msg", disable=args.no_progress)

    def progress(count: int, total: int | None) -> None:
        if total is not None:
            bar.set_total(total)
        bar.update(count)

    try:
        report = make_report(args.bag, ReportOptions(
            out=args.out, model=model, input_topic=args.input_topic, cameras=args.camera,
            max_frames=args.max_frames, source_frames=args.source_frames, video=args.video,
            link_budget_mbps=budget),
            progress, log=bar.write)
    finally:
        bar.close()
    print(format_report(report))
    videos = "".join(f", {args.out}/{cam['video']}" for cam in report["cameras"]
                     if "video" in cam)
    print(f"wrote {args.out}/index.html, {args.out}/report.json{videos} and the PNGs")
    return 0


def run_reproduce(args) -> int:
    from sac_ros.config import load_core_config
    from sac_ros.core.io import parse_size
    from sac_ros.eval.reproduce import (
        ReproduceOptions,
        format_reproduction,
        paper_crfs,
        reproduce,
        settings_from_config,
    )

    dataset = "cityscapes" if args.cityscapes else "kitti_step"
    if args.size == "auto":
        size = (1024, 512) if dataset == "cityscapes" else None
    elif args.size == "native":
        size = None
    else:
        size = parse_size(args.size)
    for name in ("frames_per_sequence", "max_sequences"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise SacError(f"--{name.replace('_', '-')} must be at least 1")
    rate = datasets.RATES_HZ[dataset]
    cfg = load_core_config(args.config)
    settings = settings_from_config(cfg, args.preset, rate)
    options = ReproduceOptions(dataset, args.cityscapes or args.kitti_step, size,
                               tuple(dict.fromkeys(canonical_codec(c) for c in args.codecs)),
                               args.mask, args.model,
                               args.frames_per_sequence, args.max_sequences, out=args.out,
                               paper=paper_crfs(cfg), task_deltas=cfg.eval.delta_crfs,
                               task_offsets=cfg.eval.roi_qp_offsets)
    check_results_folder(args.out, args.overwrite)
    bar = Progress("sac reproduce", "frame", disable=args.no_progress)
    try:
        result = reproduce(options, settings, bar.update, log=bar.write,
                           on_total=bar.set_total)
    finally:
        bar.close()
    print(format_reproduction(result, options.paper))
    print(f"wrote {args.out}/results.json and {args.out}/tables.txt")
    return 0
