#!/usr/bin/env python3
"""Task-aware coding modes at equal bytes: non-ROI pre-filtering and class-level QP offsets.

Issue 20 items 2-4. On each clip (bundled dashcam footage; masks and class maps from the
segmenter, ``--model default``), per mode (roi_qp with its non-ROI offset, dual_crf with
its dCRF):

- the anchor: the plain mode at base CRF ``--crf``; its bytes are the budget;
- each variant (class-level QP offsets from config/sac.yaml ``class_qp.offsets``; non-ROI
  blur / downscale at several strengths) with its base CRF matched to the anchor's bytes
  (core/ratematch.py, +-1%), so the bytes a variant saves in the background go to the
  whole frame;
- uniform coding matched to the same bytes, for reference.

Every run is measured the same way (``ClipCoder.run``): ROI / non-ROI PSNR, and the task
accuracy of eval/task.py: the same segmenter on the reconstruction against its output on
the original (mIoU over its classes, ROI iIoU). The last lines choose the shipped defaults:
the variant with the highest mean ROI PSNR gain, at least ``--min-roi-gain`` and positive
on every clip, whose mIoU and ROI iIoU are never more than ``--task-tolerance`` below the
anchor's on any clip; else none. Also prints the pre-filter's
cost in ms per frame at 1024x512.

    .venv/bin/python benchmarks/bench_task_modes.py [--clips project_video01 ...]
        [--frames 40] [--codec h264] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from PIL import Image

from sac_ros.config import encoder_settings, load_core_config
from sac_ros.core.classqp import ClassQp
from sac_ros.core.codec import CODECS
from sac_ros.core.errors import SacError
from sac_ros.core.frames import PlaneLayout
from sac_ros.core.io import load_clip
from sac_ros.core.mask import hold_blocks
from sac_ros.core.prefilter import Prefilter
from sac_ros.core.ratematch import match_crf
from sac_ros.eval.coder import ClipCoder
from sac_ros.eval.task import TaskMeter, scored_indexes
from sac_ros.segmentation.loader import load_segmenter

FILTERS = (Prefilter("blur", 1.5), Prefilter("blur", 3.0), Prefilter("downscale", 2.0),
           Prefilter("downscale", 4.0))
KEYS = ("kb_per_frame", "roi_psnr", "non_roi_psnr", "psnr", "task_miou", "task_roi_iiou")


# Besides config/sac.yaml's class offsets: the binary +9 with only the sky pushed further.
SKY_HARDER = {"human": 0, "vehicle": 0, "object": 0, "void": 0, "flat": 0, "construction": 9,
              "nature": 9, "sky": 15}


def masks_and_offsets(clip, segmenter, class_qps: dict[str, ClassQp], hold: int):
    """Per frame: the block mask (with the config's hysteresis); per class-offset set, the
    per-frame block offsets."""
    blocks, class_maps = [], []
    for rgb in clip.frames:
        prediction = segmenter.predict(rgb)
        blocks.append(prediction.block_roi)
        class_maps.append(prediction.class_map)
    blocks = hold_blocks(blocks, hold)
    offsets = {label: [qp.block_offsets(ids, roi) for ids, roi in zip(class_maps, blocks,
                                                                      strict=True)]
               for label, qp in class_qps.items()}
    return blocks, offsets


def figures(run) -> dict:
    return {key: round(float(getattr(run, key)), 4) for key in KEYS} | {
        "c_roi": round(run.c_roi, 3), "method": run.method}


def matched_run(coder: ClipCoder, codec: str, mode: str, spread: float, budget: int,
                guess: float) -> dict:
    """The run of ``mode`` (with the coder's current variant) at ``budget`` bytes."""
    c_non = (lambda crf: crf) if mode == "uniform" else (lambda crf: min(crf + spread, 51.0))
    match = match_crf(lambda crf: coder.total_bytes(codec, mode, crf, c_non(crf)), budget,
                      0.01, guess=guess)
    run = coder.run(codec, mode, match.crf, c_non(match.crf))
    return figures(run) | {"size_error_pct": round(100 * match.error, 2)}


def clip_figures(name: str, args, cfg, segmenter, class_qps: dict[str, ClassQp]) -> dict:
    clip = load_clip(f"sample:{name}", args.start, args.frames)
    blocks, offsets = masks_and_offsets(clip, segmenter, class_qps, cfg.mask.hysteresis_frames)
    settings = encoder_settings(cfg, args.preset, clip.fps, args.codec)
    coder = ClipCoder(clip.frames, blocks, settings)
    coder.task = TaskMeter(segmenter, clip.frames, scored_indexes(len(clip.frames),
                                                                  args.task_frames))
    result = {"clip": name, "size": f"{clip.width}x{clip.height}", "frames": len(clip.frames),
              "roi_share": round(coder.roi_share(), 4), "modes": {}}
    for mode, spread in (("roi_qp", args.offset), ("dual_crf", args.dcrf)):
        coder.prefilter, coder.class_offsets = None, None
        anchor = coder.run(args.codec, mode, args.crf, args.crf + spread)
        budget = anchor.total_bytes
        rows = {"anchor": figures(anchor),
                "uniform": matched_run(coder, args.codec, "uniform", 0, budget, args.crf + 2)}
        variants = list(offsets.items()) if mode == "roi_qp" else []
        variants = [(label, None, per_frame) for label, per_frame in variants]
        variants += [(f.describe(), f, None) for f in FILTERS]
        for label, prefilter, class_offsets in variants:
            coder.prefilter, coder.class_offsets = prefilter, class_offsets
            try:
                rows[label] = matched_run(coder, args.codec, mode, spread, budget, args.crf)
            except SacError as exc:
                rows[label] = {"error": str(exc)}
                continue
            # The VCM reading: bytes saved at the anchor's own CRFs.
            same = coder.total_bytes(args.codec, mode, args.crf, args.crf + spread)
            rows[label]["saving_same_crf_pct"] = round(100 * (1 - same / budget), 2)
            print(f"  {name} {mode} {label}: {rows[label]}", flush=True)
        result["modes"][mode] = rows
    return result


def prefilter_ms(size=(1024, 512), repeats: int = 30) -> dict[str, float]:
    """ms per frame of each filter on a real frame at ``size``, road polygon as the ROI."""
    rgb = np.asarray(Image.fromarray(load_clip("sample:project_video01", 0, 1).frames[0])
                     .resize(size))
    layout = PlaneLayout(size[1], size[0])
    from sac_ros.core.mask import PolygonMaskSource, block_mask

    blocks = block_mask(PolygonMaskSource(load_core_config().mask.roi_polygon)
                        .roi_pixels(0, rgb))
    i420 = layout.rgb_to_i420(rgb)
    timings = {}
    for prefilter in FILTERS:
        samples = []
        for _ in range(repeats):
            frame = i420.copy()
            start = time.perf_counter()
            prefilter.apply(layout, frame, blocks)
            samples.append((time.perf_counter() - start) * 1e3)
        timings[prefilter.describe()] = round(statistics.median(samples), 2)
    return timings


def _plane_resize(plane: np.ndarray, width: int, height: int, down: bool) -> np.ndarray:
    method = Image.Resampling.BOX if down else Image.Resampling.BILINEAR
    return np.asarray(Image.fromarray(plane).resize((width, height), method))


def _i420_resize(layout_w: int, layout_h: int, i420: np.ndarray, width: int, height: int,
                 down: bool) -> np.ndarray:
    """A padded I420 frame of layout_w x layout_h resampled to width x height."""
    y = i420[:layout_h]
    quarter = layout_h // 4
    u = i420[layout_h:layout_h + quarter].reshape(layout_h // 2, layout_w // 2)
    v = i420[layout_h + quarter:].reshape(layout_h // 2, layout_w // 2)
    planes = [_plane_resize(y, width, height, down)]
    planes += [_plane_resize(c, width // 2, height // 2, down).reshape(height // 4, width)
               for c in (u, v)]
    return np.concatenate(planes)


def reduced_stream(name: str, frames: int, segmenter, crfs, factor: int = 2) -> dict:
    """The dual_crf non-ROI stream coded at 1/``factor`` resolution and upscaled at the
    ECU (needs a size field on the wire: not built), against the full-size stream and the
    full-size stream after the downscale pre-filter: per CRF, non-ROI stream bytes and
    non-ROI PSNR; and the non-ROI BD-rates against the full-size stream."""
    from sac_ros.core import metrics
    from sac_ros.core.codec import EncoderSettings, StreamDecoder, StreamEncoder
    from sac_ros.core.frames import split
    from sac_ros.core.mask import expand_blocks

    clip = load_clip(f"sample:{name}", 0, frames)
    layout = PlaneLayout(clip.height, clip.width)
    pw, ph = layout.padded_width, layout.padded_height
    small = (pw // factor // 16 * 16, ph // factor // 16 * 16)
    settings = EncoderSettings(gop=30)
    downscale = Prefilter("downscale", float(factor))
    curves = {"full size": [], f"pre-filter downscale x{factor}": [],
              f"coded at 1/{factor} size": []}
    masks = [segmenter.predict(rgb).block_roi for rgb in clip.frames]
    for crf in crfs:
        for label in curves:
            reduced = label.startswith("coded")
            size = small if reduced else (pw, ph)
            encoder, decoder = StreamEncoder(*size, crf, settings), StreamDecoder("h264")
            total, psnrs = 0, []
            roi_buf, non_buf = layout.new_i420(), layout.new_i420()
            for rgb, blocks in zip(clip.frames, masks, strict=True):
                i420 = layout.rgb_to_i420(rgb)
                if label.startswith("pre-filter"):
                    downscale.apply(layout, i420, blocks)
                split(layout, i420, blocks, roi_buf, non_buf)
                source = _i420_resize(pw, ph, non_buf, *small, True) if reduced else non_buf
                data, key = encoder.encode(source)
                total += len(data)
                decoded = decoder.decode(data, key)
                if reduced:
                    decoded = _i420_resize(*small, decoded, pw, ph, False)
                out = layout.i420_to_rgb(np.ascontiguousarray(decoded))
                non_px = ~expand_blocks(blocks, clip.height, clip.width)
                psnrs.append(metrics.psnr(rgb, out, non_px))
            curves[label].append((total / len(clip.frames) / 1000.0, float(np.mean(psnrs))))
    anchor = curves["full size"]
    result = {"clip": name, "crfs": list(crfs), "curves": curves, "bd_rate_pct": {}}
    for label, points in curves.items():
        if label != "full size":
            result["bd_rate_pct"][label] = round(metrics.bd_rate(
                [p[0] for p in anchor], [p[1] for p in anchor],
                [p[0] for p in points], [p[1] for p in points]), 2)
    print(f"  {name}: non-ROI stream, kB/frame @ non-ROI PSNR per CRF {list(crfs)}:")
    for label, points in curves.items():
        print(f"    {label:<26} " + "  ".join(f"{k:.2f} kB @ {q:.2f} dB" for k, q in points)
              + (f"   BD-rate {result['bd_rate_pct'][label]:+.1f}%" if label != "full size"
                 else ""))
    return result


def sky_sweep(name: str, frames: int, segmenter, crf: float, skies) -> dict:
    """roi_qp bytes at base CRF ``crf`` with construction and nature at +9 and the sky at
    each offset of ``skies`` (the shipped 4-class model): does a coarser sky save bytes?"""
    from sac_ros.core.sac import SacEncoder

    clip = load_clip(f"sample:{name}", 0, frames)
    predictions = [segmenter.predict(rgb) for rgb in clip.frames]
    blocks = [p.block_roi for p in predictions]
    sizes = {}
    for sky in skies:
        class_qp = ClassQp({**SKY_HARDER, "sky": float(sky)}, segmenter.class_adapter.name)
        encoder = SacEncoder(clip.width, clip.height, crf, crf + 9, mode="roi_qp")
        sizes[sky] = sum(encoder.encode(rgb, roi, class_qp.block_offsets(p.class_map, roi))
                         .num_bytes for rgb, roi, p in zip(clip.frames, blocks, predictions,
                                                           strict=True))
        encoder.close()
    base = sizes[skies[0]]
    print(f"  {name}: sky offset -> bytes vs sky +{skies[0]}: " + ", ".join(
        f"+{k}: {100 * (v / base - 1):+.1f}%" for k, v in sizes.items()), flush=True)
    return {"clip": name, "bytes": sizes}


def gains(results: list[dict], mode: str) -> dict[str, dict]:
    """Per variant: ROI / non-ROI PSNR and task changes against the anchor, per clip."""
    table: dict[str, dict] = {}
    for clip in results:
        rows = clip["modes"][mode]
        anchor = rows["anchor"]
        for label, row in rows.items():
            if label == "anchor" or "error" in row:
                continue
            entry = table.setdefault(label, {k: [] for k in
                                             ("roi_db", "non_roi_db", "miou", "iiou", "saving")})
            entry["saving"].append(row.get("saving_same_crf_pct", float("nan")))
            entry["roi_db"].append(row["roi_psnr"] - anchor["roi_psnr"])
            entry["non_roi_db"].append(row["non_roi_psnr"] - anchor["non_roi_psnr"])
            entry["miou"].append(row["task_miou"] - anchor["task_miou"])
            entry["iiou"].append(row["task_roi_iiou"] - anchor["task_roi_iiou"])
    return table


def report(results: list[dict], tolerance: float, min_gain: float) -> dict:
    choices = {}
    for mode in ("roi_qp", "dual_crf"):
        table = gains(results, mode)
        print(f"\n{mode} at the anchor's bytes, change vs the anchor per clip "
              f"({', '.join(r['clip'] for r in results)}):")
        print(f"  {'variant':<22} {'ROI dB':>20} {'non-ROI dB':>20} {'mIoU':>22} "
              f"{'ROI iIoU':>22} {'bytes saved at same CRF':>26}")
        best, best_gain = "none", 0.0
        for label, entry in table.items():
            cells = ["/".join(f"{v:+.2f}" for v in entry["roi_db"]),
                     "/".join(f"{v:+.2f}" for v in entry["non_roi_db"]),
                     "/".join(f"{v:+.3f}" for v in entry["miou"]),
                     "/".join(f"{v:+.3f}" for v in entry["iiou"]),
                     "/".join("-" if np.isnan(v) else f"{v:.1f}%" for v in entry["saving"])]
            print(f"  {label:<22} {cells[0]:>20} {cells[1]:>20} {cells[2]:>22} {cells[3]:>22} "
                  f"{cells[4]:>26}")
            keeps_task = min(entry["miou"] + entry["iiou"]) >= -tolerance
            gain = float(np.mean(entry["roi_db"]))
            if (label != "uniform" and keeps_task and min(entry["roi_db"]) > 0
                    and gain >= min_gain and gain > best_gain):
                best, best_gain = label, gain
        choices[mode] = {"choice": best, "mean_roi_gain_db": round(best_gain, 3)}
        print(f"  -> default for {mode}: {best} (a default must gain >= {min_gain:g} dB ROI "
              f"PSNR on average and on every clip, its mIoU and ROI iIoU within {tolerance} "
              "of the anchor's on every clip)")
    return choices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clips", nargs="+",
                        default=["project_video01", "project_video02", "challenge01"])
    parser.add_argument("--frames", type=int, default=40)
    parser.add_argument("--start", type=int, default=0)
    parser.add_argument("--codec", default="h264", choices=sorted(CODECS))
    parser.add_argument("--preset", default=None, help="default: config/sac.yaml")
    parser.add_argument("--crf", type=float, default=23.0, help="the anchors' base CRF")
    parser.add_argument("--offset", type=float, default=9.0, help="roi_qp non-ROI QP offset")
    parser.add_argument("--dcrf", type=float, default=9.0, help="dual_crf non-ROI CRF - ROI CRF")
    parser.add_argument("--task-frames", type=int, default=10,
                        help="frames of each run the task metric segments")
    parser.add_argument("--task-tolerance", type=float, default=0.01,
                        help="largest mIoU / iIoU loss a default may cost on any clip")
    parser.add_argument("--min-roi-gain", type=float, default=0.2,
                        help="dB of ROI PSNR a default must buy at equal bytes (0.2 dB: about "
                        "4%% of the ROI's bytes; the size match alone is +-1%%)")
    parser.add_argument("--model", default="default", help="segmenter (masks, class maps, task)")
    parser.add_argument("--json", help="write every figure here")
    parser.add_argument("--reduced-stream", action="store_true",
                        help="instead: the dual_crf non-ROI stream coded at half size (a wire "
                        "change, measured offline only) against full size and the pre-filter")
    parser.add_argument("--sky-sweep", action="store_true",
                        help="instead: roi_qp bytes as the sky's class offset rises (+9 to +30)")
    args = parser.parse_args()
    cfg = load_core_config()
    segmenter = load_segmenter(model=args.model)
    if args.sky_sweep:
        found = [sky_sweep(name, args.frames, segmenter, args.crf, (9, 12, 15, 20, 30))
                 for name in args.clips]
        if args.json:
            with open(args.json, "w") as handle:
                json.dump({"args": vars(args), "sky_sweep": found}, handle, indent=2)
        return
    if args.reduced_stream:
        crfs = (27.0, 31.0, 35.0, 39.0)
        found = [reduced_stream(name, args.frames, segmenter, crfs) for name in args.clips]
        if args.json:
            with open(args.json, "w") as handle:
                json.dump({"args": vars(args), "reduced_stream": found}, handle, indent=2)
        return
    class_map = segmenter.class_adapter.name
    class_qps = {"classes": ClassQp(cfg.class_qp.offsets, class_map),
                 "classes sky+15": ClassQp(SKY_HARDER, class_map)}
    print(f"{args.codec} {args.preset or cfg.codec.preset}, {args.frames} frames per clip, "
          f"masks and task: {segmenter.name} ({class_map}); class offsets: "
          + "; ".join(f"{k}: {v.describe()}" for k, v in class_qps.items()), flush=True)
    timings = prefilter_ms()
    print(f"pre-filter ms/frame at 1024x512 (median): {timings}", flush=True)
    results = [clip_figures(name, args, cfg, segmenter, class_qps) for name in args.clips]
    choices = report(results, args.task_tolerance, args.min_roi_gain)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "class_offsets": cfg.class_qp.offsets,
                       "prefilter_ms_1024x512": timings, "clips": results,
                       "choices": choices}, handle, indent=2)


if __name__ == "__main__":
    main()
