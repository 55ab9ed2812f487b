"""``sac eval``: uniform vs SAC (dual_crf, roi_qp) on a clip, at equal bytes and by ROI BD-rate.

With ``--target-mbps`` it runs the rate controller instead (see ``rate_eval``).
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from tqdm import tqdm

from sac_ros.cli.outputs import check_outputs
from sac_ros.config import encoder_settings, load_core_config
from sac_ros.core.codec import CODECS, canonical_codec, check_crf
from sac_ros.core.errors import SacError
from sac_ros.core.io import load_clip
from sac_ros.core.mask import LabelMaskSource, PolygonMaskSource, block_mask, hold_blocks
from sac_ros.eval.coder import BdResult, ClipCoder, bd_against, sweep

TABLE_COLUMNS = (
    ("method", "Method", "{}"), ("c_roi", "C_roi", "{:g}"), ("c_non", "C_non", "{:g}"),
    ("kb_per_frame", "kB/frame", "{:.2f}"), ("psnr", "PSNR", "{:.2f}"), ("ssim", "SSIM", "{:.4f}"),
    ("roi_psnr", "ROI PSNR", "{:.2f}"), ("non_roi_psnr", "non-ROI PSNR", "{:.2f}"),
    ("sa_psnr_region", "SA-PSNR(reg)", "{:.2f}"), ("sa_psnr_stream", "SA-PSNR(str)", "{:.2f}"),
    ("sa_ssim_region", "SA-SSIM(reg)", "{:.4f}"), ("sa_ssim_stream", "SA-SSIM(str)", "{:.4f}"),
    ("compression_ratio", "1:N", "{:.0f}"),
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
    p.add_argument("--roi-qp-offsets", type=float, nargs="+", metavar="QP",
                   help="roi_qp non-ROI QP offsets for the BD-rate curves, for every codec "
                   "(default: eval.roi_qp_offsets; the first one gets the equal-bytes row)")
    p.add_argument("--target-mbps", type=float, nargs="+", metavar="MBPS",
                   help="run the rate controller at these targets (Mbit/s) instead of the "
                   "sweep: bitrate per 1-s window and ROI quality against capped uniform "
                   "coding at equal bytes (settings: config ratecontrol)")
    p.add_argument("--out", default="sac_eval_out", help="output folder for PNGs/JSON/CSV")
    p.add_argument("--json", help="JSON output path (default: OUT/results.json)")
    p.add_argument("--csv", help="CSV output path (default: OUT/results.csv)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def _masks(args, cfg, clip):
    non_roi = cfg["mask"].get("non_roi_classes") or {}
    if args.model and args.labels:
        raise SacError("give either --model or --labels as the mask source, not both")
    if args.model:
        from sac_ros.segmentation.loader import segmenter_mask_source

        source, description = segmenter_mask_source(args.model, non_roi)
    elif args.labels:
        layout = args.label_layout
        class_map = "cityscapes_label_ids" if layout == "cityscapes" else "kitti_step"
        source = LabelMaskSource(args.labels, layout, non_roi.get(class_map))
        description = f"labels {args.labels} ({layout})"
    else:
        source = PolygonMaskSource(cfg["mask"]["roi_polygon"])
        description = "static ROI polygon from config"
    size = int(cfg["mask"].get("block_size", 16))
    blocks, cache = [], {}
    for index, (frame, name) in enumerate(zip(clip.frames, clip.names, strict=False)):
        roi = source.roi_pixels(index, frame, name)
        key = roi.tobytes() if isinstance(source, PolygonMaskSource) else None
        if key is not None and key in cache:
            blocks.append(cache[key])  # static mask: share one array across frames
            continue
        block = block_mask(roi, size)
        if key is not None:
            cache[key] = block
        blocks.append(block)
    hold = cfg["mask"]["hysteresis_frames"]
    if hold:
        description += f", hysteresis {hold} frames"
    return hold_blocks(blocks, hold), description


def format_table(records: list[dict]) -> str:
    header = [title for _, title, _ in TABLE_COLUMNS]
    rows = [[("-" if r.get(key) is None else fmt.format(r[key])) for key, _, fmt in TABLE_COLUMNS]
            for r in records]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    line = lambda cells: "  ".join(c.rjust(w) if i else c.ljust(w)  # noqa: E731
                                   for i, (c, w) in enumerate(zip(cells, widths, strict=False)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def run(args) -> int:
    from sac_ros.eval import plots  # matplotlib: imported only when needed

    cfg = load_core_config(args.config)
    ev = cfg["eval"]
    if args.target_mbps and min(args.target_mbps) <= 0:
        raise SacError("--target-mbps must be positive")
    if any(not 0 < o <= 51 for o in args.roi_qp_offsets or []):
        raise SacError("--roi-qp-offsets must be in (0, 51]")
    default_frames = cfg["ratecontrol"]["frames"] if args.target_mbps else ev.get("frames", 60)
    frames = args.frames if args.frames is not None else int(default_frames)
    start = args.start if args.start is not None else int(ev.get("start", 0))
    if frames < 2:
        raise SacError("--frames must be at least 2")
    codecs = [canonical_codec(c) for c in (args.codecs or ev["codecs"])]
    for codec in codecs:
        for key in ("crf_sweep", "paper_pairs", "uniform_reference", "matched_sac_roi_crf"):
            if codec not in ev[key]:
                raise SacError(f"config eval.{key} has no entry for codec {codec}")
    check_outputs("--out", args.out, {"--json": args.json, "--csv": args.csv})
    clip = load_clip(args.input or str(ev.get("input", "sample")), start, frames)
    section = dict(cfg["codec"])
    if args.preset:
        section["preset"] = args.preset
    settings = encoder_settings(section, fps=max(1, round(clip.fps)))
    blocks, mask_description = _masks(args, cfg, clip)
    tolerance = float(ev.get("size_tolerance", 0.01))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    n = len(clip.frames)
    offsets = {codec: [float(o) for o in (args.roi_qp_offsets
                                          or ev["roi_qp_offsets"].get(codec, []))]
               for codec in codecs}
    runs_per_codec = (len(ev["crf_sweep"][codecs[0]]) * (1 + len(ev["delta_crfs"])
                                                         + len(offsets[codecs[0]])) + 5)
    bar = tqdm(total=n * runs_per_codec * len(codecs), unit="frame", desc="sac eval",
               disable=args.no_progress or None, file=sys.stderr)

    def progress(count: int) -> None:
        if bar.n + count > bar.total:
            bar.total = bar.n + count
        bar.update(count)

    if args.target_mbps:
        from sac_ros.cli.rate_eval import run_rate_control

        try:
            return run_rate_control(args, cfg, clip, settings, blocks, mask_description, out,
                                    codecs, progress, plots)
        finally:
            bar.close()
    coder = ClipCoder(clip.frames, blocks, settings, progress, int(cfg["mask"]["block_size"]))
    print(f"input: {clip.source}  {clip.width}x{clip.height}, {n} frames at {clip.fps:g} fps; "
          f"mask: {mask_description}; preset {settings.preset}, GOP {settings.gop}",
          file=sys.stderr)

    records: list[dict] = []
    bd_results: list[BdResult] = []
    roi_qp_bd: list[BdResult] = []
    notes: list[str] = []
    keep = n // 2
    for codec in codecs:
        crfs = ev["crf_sweep"][codec]
        curves = {"uniform": sweep(coder, codec, crfs, None)}
        for delta in ev["delta_crfs"]:
            curves[f"SAC dCRF +{delta:g}"] = sweep(coder, codec, crfs, float(delta))
            bd_results.append(bd_against(curves["uniform"], curves[f"SAC dCRF +{delta:g}"],
                                         codec, float(delta)))
        for offset in offsets[codec]:
            name = f"ROI-QP {offset:+g}"
            curves[name] = sweep(coder, codec, crfs, offset, "roi_qp")
            roi_qp_bd.append(bd_against(curves["uniform"], curves[name], codec, offset,
                                        "roi_qp"))
        ref_crf = check_crf(args.uniform_crf if args.uniform_crf is not None
                            else ev["uniform_reference"][codec], "uniform CRF")
        roi_crf, non_crf = (check_crf(c, "pair CRF")
                            for c in (args.pair or ev["paper_pairs"][codec]))
        uniform_ref = coder.run(codec, "uniform", ref_crf, full=True, keep_frame=keep)
        sac_pair = coder.run(codec, "dual_crf", roi_crf, non_crf, full=True, keep_frame=keep)
        match = coder.match_uniform(codec, sac_pair.total_bytes, tolerance, guess=ref_crf)
        uniform_eq = coder.run(codec, "uniform", match.crf, full=True, keep_frame=keep)
        uniform_eq.method += " (= size)"
        uniform_eq.size_match_error_pct = 100.0 * (uniform_eq.total_bytes / sac_pair.total_bytes
                                                   - 1.0)
        rows = [uniform_ref, uniform_eq, sac_pair]
        roi_qp_eq = None
        if offsets[codec]:
            # One stream with the first configured offset, at the SAC pair's bytes.
            offset = offsets[codec][0]
            try:
                qp_match = coder.match_roi_qp(codec, offset, sac_pair.total_bytes, tolerance,
                                              guess=roi_crf)
                roi_qp_eq = coder.run(codec, "roi_qp", qp_match.crf,
                                      min(qp_match.crf + offset, 51), full=True, keep_frame=keep)
                roi_qp_eq.method += " (= size)"
                roi_qp_eq.size_match_error_pct = 100.0 * (roi_qp_eq.total_bytes
                                                          / sac_pair.total_bytes - 1.0)
                rows.append(roi_qp_eq)
            except SacError as exc:
                notes.append(f"{codec}: no roi_qp run with offset {offset:+g} matches the SAC "
                             f"pair's size ({exc})")
        matched_roi = float(ev["matched_sac_roi_crf"][codec])
        try:
            rev = coder.match_non_roi(codec, matched_roi, uniform_ref.total_bytes, tolerance,
                                      guess=matched_roi + 6)
            sac_eq = coder.run(codec, "dual_crf", matched_roi, rev.crf, full=True)
            sac_eq.method += " (= size)"
            sac_eq.size_match_error_pct = 100.0 * (sac_eq.total_bytes / uniform_ref.total_bytes
                                                   - 1.0)
            rows.append(sac_eq)
        except SacError as exc:
            notes.append(f"{codec}: no SAC run with ROI CRF {matched_roi:g} matches uniform "
                         f"CRF {ref_crf:g}'s size ({exc})")
        records += [r.record() for r in rows]
        label = CODECS[codec][2]
        title = (f"{label} {settings.preset}: {clip.width}x{clip.height}, {n} frames, "
                 f"ROI {uniform_ref.roi_share:.0%} of pixels")
        equal_bytes = [uniform_eq, sac_pair] + ([roi_qp_eq] if roi_qp_eq else [])
        plots.rd_curves(out / f"rd_{label}.png", title, curves, equal_bytes)
        plots.side_by_side(out / f"crop_{label}.png", clip.frames[keep],
                           [(f"{r.method}: {r.kb_per_frame:.1f} kB/frame", r.sample_frame)
                            for r in equal_bytes],
                           coder.pixel_mask(keep))
    bar.close()

    print()
    print(format_table(records))
    print()
    print("ROI BD-rate against uniform (bytes vs ROI PSNR; negative = fewer bytes), with the "
          "non-ROI PSNR change at equal bytes:")
    for bd in bd_results + roi_qp_bd:
        name = "dCRF" if bd.mode == "dual_crf" else "roi_qp offset"
        print(f"  {bd.codec} {name} +{bd.delta_crf:g}: ROI BD-rate {bd.roi_bd_rate_pct:+.1f}%  "
              f"(ROI {bd.roi_bd_psnr_db:+.2f} dB, non-ROI {bd.non_roi_bd_psnr_db:+.2f} dB "
              "at equal bytes)")
    print("Boundary 'flash' (pixels within 8 px of the ROI edge off by > 40 levels):")
    for r in records:
        print(f"  {r['method']}: {100 * r['flash_fraction']:.3f}%")
    for note in notes:
        print(f"note: {note}")

    result = {
        "input": clip.source, "width": clip.width, "height": clip.height, "frames": n,
        "fps": clip.fps, "mask": mask_description, "preset": settings.preset,
        "gop": settings.gop, "records": records,
        "bd_rates": [bd.__dict__ for bd in bd_results],
        "bd_rates_roi_qp": [bd.__dict__ for bd in roi_qp_bd], "notes": notes,
    }
    json_path = Path(args.json) if args.json else out / "results.json"
    json_path.write_text(json.dumps(result, indent=2) + "\n")
    csv_path = Path(args.csv) if args.csv else out / "results.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(records[0]))
        writer.writeheader()
        writer.writerows(records)
    print(f"wrote {json_path}, {csv_path} and PNGs in {out}/")
    return 0
