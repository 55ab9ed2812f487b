"""``sac train``, ``sac export`` and ``sac eval-seg``: the segmentation tools."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from sac_ros.config import LR_SCHEDULES, MAX_DEPTH, load_segmentation_config
from sac_ros.core.errors import SacError
from sac_ros.core.io import parse_size


def add_parsers(sub) -> None:
    _add_train(sub)
    _add_export(sub)
    _add_eval_seg(sub)


def _size(text: str) -> tuple[int, int]:
    """``WxH`` -> (width, height); network sizes are multiples of 32."""
    return parse_size(text, multiple=32)


def _size_arg(text: str) -> tuple[int, int]:
    """``_size`` as an argparse type: a bad size is argparse's error, not a traceback."""
    try:
        return _size(text)
    except SacError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _crop(text: str | None) -> tuple[int, int] | None:
    """A training crop: multiples of the network's stride (64); one-line error otherwise."""
    from sac_ros.segmentation.network_meta import NETWORK_STRIDE

    if text is None:
        return None
    try:
        return parse_size(text, multiple=NETWORK_STRIDE)
    except SacError as exc:
        raise SacError(f"--crop: {exc}") from None


def _input_size(text: str | None):
    if text is None:
        return None
    return "native" if text == "native" else _size(text)


def _non_roi_ids(class_map: str) -> list[int] | None:
    """Non-ROI overrides from sac.yaml (mask.non_roi_classes), if any."""
    from sac_ros.config import load_core_config

    return load_core_config().mask.non_roi_classes.get(class_map)


# ------------------------------------------------------------------ sac train

def _add_train(sub) -> None:
    p = sub.add_parser(
        "train", help="train the ROI segmenter (BCE+Dice, Adam)",
        description="Train SacRoiNet (4-class or binary ROI head plus the 16x16 block head) "
                    "with the papers' recipe on Cityscapes, KITTI-STEP or the hand-labelled "
                    "sample-footage set. Needs torch (pip install 'sac_ros[train]').")
    p.add_argument("--dataset", required=True, choices=("cityscapes", "kitti_step", "evalset"))
    p.add_argument("--data-root", help="dataset folder (Cityscapes: has leftImg8bit/ and gtFine/;"
                   " KITTI-STEP: has images/ and panoptic_maps/); evalset: a labels.json in "
                   "the evaluation set's format (default: the bundled one)")
    p.add_argument("--out", required=True, help="output folder for last.pt, best.pt, "
                   "history.json")
    p.add_argument("--head", default="four_class", choices=("four_class", "binary"))
    p.add_argument("--train-split", default="train")
    p.add_argument("--val-split", help="validation split (default: val; evalset: heldout); "
                   "'none' to skip validation")
    p.add_argument("--val-limit", type=int, help="validate on at most N frames")
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs")
    p.add_argument("--epochs", type=int)
    p.add_argument("--steps-per-epoch", type=int, help="default: one pass over the frames")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--crop", help="training crop WxH (multiples of 64)")
    p.add_argument("--width", type=float, help="SacRoiNet channel multiplier")
    p.add_argument("--depth", type=int, help="extra SacRoiNet blocks at strides 16 and 32")
    p.add_argument("--lr", type=float)
    p.add_argument("--lr-schedule", choices=LR_SCHEDULES,
                   help="constant, or cosine decay to 1%% of --lr by the last epoch "
                        "(default: the config's)")
    p.add_argument("--seed", type=int)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: the config's; "
                   "1 is often fastest on a busy machine)")
    p.add_argument("--resume", help="checkpoint to continue from (e.g. OUT/last.pt)")
    p.add_argument("--onnx", help="also export the final model to this ONNX file")
    p.add_argument("--config", help="segmentation YAML (default: config/segmentation.yaml)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_train)


def run_train(args) -> int:
    from sac_ros.segmentation.train import TrainSettings, train

    cfg = load_segmentation_config(args.config)
    recipe = cfg.train
    source_map = {"cityscapes": "cityscapes_label_ids", "kitti_step": "kitti_step"}.get(
        args.dataset)
    for flag, value in (("--epochs", args.epochs), ("--batch-size", args.batch_size),
                        ("--steps-per-epoch", args.steps_per_epoch),
                        ("--val-limit", args.val_limit), ("--val-every", args.val_every),
                        ("--threads", args.threads)):
        if value is not None and value < 1:
            raise SacError(f"{flag} must be at least 1")
    if args.depth is not None and not 0 <= args.depth <= MAX_DEPTH:
        raise SacError(f"--depth must be from 0 to {MAX_DEPTH}")
    settings = TrainSettings(
        dataset=args.dataset, data_root=args.data_root, out=Path(args.out), head=args.head,
        train_split=args.train_split, val_split=args.val_split,
        epochs=args.epochs or recipe.epochs, steps_per_epoch=args.steps_per_epoch,
        batch_size=args.batch_size or recipe.batch_size,
        crop=_crop(args.crop) or recipe.crop, scale=recipe.scale,
        lr=args.lr if args.lr is not None else recipe.lr, betas=recipe.betas,
        lr_schedule=args.lr_schedule or recipe.lr_schedule,
        weight_decay=recipe.weight_decay,
        width=args.width if args.width is not None else recipe.width,
        depth=args.depth if args.depth is not None else recipe.depth,
        shadow_prob=recipe.shadows, ema=recipe.ema,
        seed=args.seed if args.seed is not None else recipe.seed,
        threads=args.threads if args.threads is not None else cfg.threads,
        val_limit=args.val_limit, val_every=args.val_every, input_size=cfg.input_size,
        resume=Path(args.resume) if args.resume else None, progress=not args.no_progress,
        non_roi_ids=_non_roi_ids(source_map) if source_map else None)
    state = train(settings)
    print(f"wrote {settings.out / 'last.pt'}"
          + (f" and {settings.out / 'best.pt'}" if (settings.out / "best.pt").is_file() else ""))
    if args.onnx:
        from sac_ros.segmentation.export import export_onnx

        path, _, _ = export_onnx(settings.out / "last.pt", args.onnx)
        print(f"wrote {path} (epoch {state['epoch']})")
    return 0


# ------------------------------------------------------------------ sac export

def _add_export(sub) -> None:
    p = sub.add_parser(
        "export", help="export a model to ONNX and/or a TensorRT engine, and validate it",
        description="Turn a sac train checkpoint or TorchScript model (.pt) into ONNX, and an "
                    "ONNX model into a TensorRT engine (FP16, optional INT8), checking each "
                    "result against the previous one (PyTorch, ONNX Runtime) on sample frames.")
    p.add_argument("model", help="'default', a .pt/.pth checkpoint or TorchScript, or an .onnx")
    p.add_argument("--onnx", help="ONNX output (needed when MODEL is a .pt)")
    p.add_argument("--engine", help="TensorRT engine output (needs tensorrt, pycuda, a GPU)")
    p.add_argument("--class-map", help="class map of a TorchScript model without sac metadata")
    p.add_argument("--min-shape", type=_size_arg, help="profile minimum WxH (default: config)")
    p.add_argument("--opt-shape", type=_size_arg, help="profile optimum WxH (default: config)")
    p.add_argument("--max-shape", type=_size_arg, help="profile maximum WxH (default: config)")
    fp16 = p.add_mutually_exclusive_group()
    fp16.add_argument("--fp16", dest="fp16", action="store_true", default=None,
                      help="FP16 engine (default: config): built from a float16 copy of the "
                           "ONNX model, ENGINE.fp16.onnx")
    fp16.add_argument("--no-fp16", dest="fp16", action="store_false")
    p.add_argument("--int8", metavar="CALIB_DIR",
                   help="INT8 engine, explicitly quantized (Q/DQ, ENGINE.int8.onnx) with scales "
                        "calibrated on this folder of images; overrides --fp16")
    p.add_argument("--frames", type=int, default=6, help="sample frames for validation")
    p.add_argument("--frames-dir", help="validation images (default: the evaluation set)")
    p.add_argument("--min-class-agreement", type=float, default=0.99,
                   help="fail when fewer pixels than this share the class (default 0.99)")
    p.add_argument("--config", help="segmentation YAML (default: config/segmentation.yaml)")
    p.add_argument("--json", help="write the validation figures to this JSON file")
    p.set_defaults(func=run_export)


def run_export(args) -> int:
    from sac_ros.segmentation import export
    from sac_ros.segmentation.loader import load_segmenter, resolve_model

    cfg = load_segmentation_config(args.config)
    source = resolve_model(args.model)
    _check_export_args(args, source)
    frames = export.sample_frames(args.frames, args.frames_dir)
    report: dict = {"source": str(source)}
    onnx_path, onnx_seg = source, None
    if source.suffix.lower() != ".onnx":
        onnx_path, _, _ = export.export_onnx(source, args.onnx, class_map=args.class_map)
        torch_seg = load_segmenter(cfg, source, "torch")
        onnx_seg = load_segmenter(cfg, onnx_path, "onnxruntime")
        agreement = export.compare(torch_seg, onnx_seg, frames)
        report["onnx"] = {"path": str(onnx_path), **agreement.__dict__}
        print(f"{onnx_path}: ONNX Runtime vs PyTorch on {len(frames)} frames: "
              f"{agreement.line()}")
        _check(agreement, args.min_class_agreement, "ONNX Runtime vs PyTorch")
    if args.engine:
        _export_engine(args, cfg, onnx_path, onnx_seg, frames, report)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    return 0


def _check_export_args(args, source: Path) -> None:
    """Refuse what `sac export` cannot do before any work, TensorRT missing included."""
    suffix = source.suffix.lower()
    if suffix not in (".pt", ".pth", ".ts", ".onnx"):
        raise SacError(f"sac export reads .pt/.pth/.ts or .onnx models, not {source.name}")
    if suffix != ".onnx" and not args.onnx:
        raise SacError("exporting a PyTorch model needs --onnx OUT.onnx")
    if suffix == ".onnx" and not args.engine:
        raise SacError(f"{source.name} is already ONNX: give --engine OUT.engine to build a "
                       "TensorRT engine")
    if not 0 < args.min_class_agreement <= 1:
        raise SacError("--min-class-agreement must be in (0, 1]")
    if args.engine:  # fail before any work when TensorRT cannot run here
        from sac_ros.segmentation.backends.trt_backend import import_tensorrt

        import_tensorrt()


def _export_engine(args, cfg, onnx_path: Path, onnx_seg, frames, report: dict) -> None:
    """Build the TensorRT engine from ``onnx_path`` (through its FP16 / INT8 copy), check
    each step against the previous one on ``frames`` and time it; adds to ``report``."""
    from sac_ros.segmentation import export
    from sac_ros.segmentation.loader import load_segmenter

    ex = cfg.export
    lo, opt, hi = (tuple(reversed(v or getattr(ex, key))) for v, key in (
        (args.min_shape, "min_shape"), (args.opt_shape, "opt_shape"),
        (args.max_shape, "max_shape")))
    if not all(lo[i] <= opt[i] <= hi[i] for i in range(2)):
        raise SacError("profile shapes must satisfy min <= opt <= max")
    fp16 = ex.fp16 if args.fp16 is None else args.fp16
    precision = "int8" if args.int8 else "fp16" if fp16 else "fp32"
    onnx_seg = onnx_seg or load_segmenter(cfg, onnx_path, "onnxruntime")
    build_source = export.reduced_precision_onnx(
        onnx_path, args.engine, precision, onnx_seg, args.int8, opt,
        onnx_seg.backend.metadata)
    if precision != "fp32":  # checked on the CPU before TensorRT sees it
        reduced_seg = load_segmenter(cfg, build_source, "onnxruntime")
        agreement = export.compare(onnx_seg, reduced_seg, frames)
        report[precision] = {"path": str(build_source), **agreement.__dict__}
        print(f"{build_source}: {precision.upper()} vs float32 in ONNX Runtime on "
              f"{len(frames)} frames: {agreement.line()}")
        _check(agreement, args.min_class_agreement, f"{precision.upper()} vs float32")
    engine_path = export.build_engine(build_source, args.engine, lo, opt, hi, precision,
                                      ex.workspace_mb, onnx_seg.backend.metadata)
    trt_seg = load_segmenter(cfg, engine_path, "tensorrt")
    agreement = export.compare(onnx_seg, trt_seg, frames)
    timing = export.time_backend(trt_seg, opt)
    report["engine"] = {"path": str(engine_path), "precision": precision,
                        "fp16": precision == "fp16", "int8": precision == "int8",
                        **agreement.__dict__, **timing}
    print(f"{engine_path}: TensorRT vs ONNX Runtime on {len(frames)} frames: "
          f"{agreement.line()}")
    print(f"TensorRT at {opt[1]}x{opt[0]}: network {timing['model_ms']:.2f} ms "
          f"({timing['model_fps']:.0f} fps); block mask end to end "
          f"{timing['block_roi_ms']:.2f} ms ({timing['block_roi_fps']:.0f} fps)")
    _check(agreement, args.min_class_agreement, "TensorRT vs ONNX Runtime")


def _check(agreement, minimum: float, what: str) -> None:
    if agreement.class_agreement < minimum:
        raise SacError(f"{what}: only {100 * agreement.class_agreement:.2f}% of pixels share "
                       f"the class (need {100 * minimum:.2f}%); the export is not faithful")


# ------------------------------------------------------------------ sac eval-seg

def _add_eval_seg(sub) -> None:
    p = sub.add_parser(
        "eval-seg", help="score a segmenter on the hand-labelled evaluation set",
        description="Pixel and block-level iIoU / mIoU of a segmenter on the hand-labelled "
                    "frames of the sample footage, with its latency per frame.")
    p.add_argument("--model", default=None, help="'default' or a model path (default: config)")
    p.add_argument("--backend", choices=("auto", "onnxruntime", "tensorrt", "torch"))
    p.add_argument("--split", default="heldout", choices=("train", "heldout", "all"))
    p.add_argument("--input-size", help="'native' or WxH (default: config)")
    p.add_argument("--labels", help="labels JSON (default: the shipped evaluation set)")
    p.add_argument("--runs", type=int, default=3, help="timed runs per frame (default 3)")
    p.add_argument("--per-frame", action="store_true", help="print each frame's block iIoU")
    p.add_argument("--config", help="segmentation YAML (default: config/segmentation.yaml)")
    p.add_argument("--json", help="write the figures to this JSON file")
    p.set_defaults(func=run_eval_seg)


def run_eval_seg(args) -> int:
    from sac_ros.segmentation.classmaps import four_class_lookup
    from sac_ros.segmentation.evalset import load_labels, read_frames
    from sac_ros.segmentation.loader import load_segmenter
    from sac_ros.segmentation.scoring import score_segmenter

    if args.runs < 0:
        raise SacError("--runs must be at least 0")
    cfg = load_segmentation_config(args.config)
    frames = load_labels(args.labels, args.split)
    rgbs = read_frames(frames)
    truths = [frame.label_map() for frame in frames]
    segmenter = load_segmenter(cfg, args.model, args.backend, _input_size(args.input_size))
    adapter = segmenter.class_adapter
    try:
        table = four_class_lookup(adapter, ignore=())
    except SacError:
        table = None  # binary models: mIoU over ROI / non-ROI
    scores, latencies = score_segmenter(segmenter, rgbs, truths, table, args.runs)
    summary = scores.summary()
    summary["block_iiou_low"], summary["block_iiou_high"] = scores.block_iiou_interval()
    sizes = sorted({f"{f.width}x{f.height}" for f in frames})
    size = segmenter.input_size
    size = size if size == "native" else f"{size[0]}x{size[1]}"
    print(f"model: {segmenter.name}; class map {adapter.name}; input size {size}")
    print(f"evaluation set: {len(frames)} {args.split} frames from "
          f"{len({f.clip for f in frames})} clips ({', '.join(sizes)})")
    classes = "4 classes" if table is not None else "ROI / non-ROI"
    print(f"pixel  iIoU {summary['pixel_iiou']:.4f}   mIoU {summary['pixel_miou']:.4f} "
          f"({classes})")
    print(f"block  iIoU {summary['block_iiou']:.4f}   mIoU {summary['block_miou']:.4f} "
          f"(16x16 blocks, ROI / non-ROI; worst frame iIoU "
          f"{summary['worst_frame_block_iiou']:.4f})")
    print(f"block  iIoU 95% interval {summary['block_iiou_low']:.4f} - "
          f"{summary['block_iiou_high']:.4f} (bootstrap over the {len(frames)} frames: "
          f"what another set of frames like these could score)")
    if table is not None:
        print("pixel IoU per class: " + ", ".join(
            f"{name} {summary[f'pixel_iou_{name}']:.4f}"
            for name in ("roi", "construction", "nature", "sky")))
    if latencies:
        ms = 1000 * np.asarray(latencies)
        summary["latency_ms_median"] = float(np.median(ms))
        summary["latency_ms_p90"] = float(np.percentile(ms, 90))
        print(f"latency (block mask, frame in -> mask out): median {np.median(ms):.1f} ms, "
              f"p90 {np.percentile(ms, 90):.1f} ms over {len(ms)} frames")
    per_frame = scores.frame_block_iiou
    if args.per_frame:
        for frame, value in zip(frames, per_frame, strict=True):
            print(f"  {frame.clip} #{frame.index}: block iIoU {value:.4f}")
    if args.json:
        summary.update(model=segmenter.name, split=args.split, frames=len(frames),
                       per_frame_block_iiou={f.key: v for f, v in
                                             zip(frames, per_frame, strict=True)})
        Path(args.json).write_text(json.dumps(summary, indent=1) + "\n")
    segmenter.close()
    sys.stdout.flush()
    return 0
