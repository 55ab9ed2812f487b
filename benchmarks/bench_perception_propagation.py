#!/usr/bin/env python3
"""Propagating perception: CPU per frame and class-map agreement against per-frame segmentation.

For each clip (the bundled dashcam footage, resized to --size) the frames are coded the
way the pipeline codes them (dual CRF 23/32, x264 veryfast, GOP 30, the config's static
ROI polygon) and decoded with the ECU's decoder, motion exported. Then:

- ECU: decode time per frame with and without the motion export, and the motion step
  alone (vectors -> merged field -> residual), medians;
- perception: the network on every reconstructed frame (the reference class maps and
  their cost), the warp's cost, and for each N of --every the class maps the node's
  ``ClassMapPropagator`` produces (full segmentation at key frames, every N frames, and
  whenever more than --share of the blocks are unreliable or above --max-residual), scored
  against the per-frame maps: mIoU over the model's classes and the ROI IoU (iIoU), pooled
  over the clip, mIoU* over the classes that hold at least 0.1% of the pixels (a class
  of a few thousand pixels in a clip swings the plain mean), the pixel agreement, the
  share of frames segmented in full, and the perception CPU per frame
  and rate that follow (network for full frames, warp for the others);
- the refresh rule: at the N of --share-at, the same for several --shares (1 = never
  re-segment early).

    .venv/bin/python benchmarks/bench_perception_propagation.py [--clips project_video01 ...]
        [--frames 90] [--size 1024x512] [--every 1 2 3 5 10] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
from PIL import Image

from sac_ros.config import load_core_config
from sac_ros.core import metrics
from sac_ros.core.codec import EncoderSettings
from sac_ros.core.io import load_clip, parse_size
from sac_ros.core.mask import PolygonMaskSource, block_mask
from sac_ros.core.motion import PROPAGATED, ClassMapPropagator, warp_class_map
from sac_ros.core.sac import SacDecoder, SacEncoder
from sac_ros.segmentation import load_segmenter


def coded_clip(spec: str, frames: int, width: int, height: int, gop: int, stride: int = 1):
    """``frames`` frames coded as the pipeline codes them; ``stride`` k: every k-th frame
    of the clip (a sensor that drops input under load)."""
    clip = load_clip(f"sample:{spec}", 0, frames * stride)
    rgbs = [np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BILINEAR))
            for f in clip.frames[::stride]]
    polygon = PolygonMaskSource(load_core_config().mask.roi_polygon)
    blocks = block_mask(polygon.roi_pixels(0, rgbs[0]))
    encoder = SacEncoder(width, height, 23.0, 32.0, EncoderSettings("h264", "veryfast", gop))
    try:
        return [encoder.encode(rgb, blocks) for rgb in rgbs]
    finally:
        encoder.close()


def decode_all(packets, export: bool):
    decoder = SacDecoder(export_motion=export)
    frames, times = [], []
    try:
        for packet in packets:
            start = time.perf_counter()
            frame = decoder.decode(packet)
            times.append((time.perf_counter() - start) * 1e3)
            frames.append(frame)
    finally:
        decoder.close()
    return frames, times


def motion_step_ms(packets) -> list[float]:
    """The motion step alone: re-run motion_field on the decoder's own inputs."""
    from sac_ros.core import motion as m

    decoder = SacDecoder(export_motion=True, parallel=False)
    times, previous = [], None
    try:
        for packet in packets:
            frame = decoder.decode(packet)
            y = decoder._layout.rgb_to_i420(frame.rgb)[:decoder._layout.padded_height]
            roi = decoder._decoders["roi"].last_vectors
            non = decoder._decoders["non_roi"].last_vectors
            start = time.perf_counter()
            m.motion_field(roi, non, True, frame.blocks, packet.block_size, packet.width,
                           packet.height, packet.key_frame, y, previous, packet.seq)
            times.append((time.perf_counter() - start) * 1e3)
            previous = y
    finally:
        decoder.close()
    return times[1:]


MAJOR_SHARE = 0.001  # classes holding at least 0.1% of the pixels, for the second mIoU


def score(segmenter, reference_maps, maps) -> tuple[float, float, float, float]:
    """(mIoU, iIoU, mIoU over the classes with >= MAJOR_SHARE of the reference pixels,
    pixel agreement), pooled over the clip."""
    classes = max(2, segmenter.class_adapter.num_classes)
    conf = np.zeros((classes, classes), np.int64)
    roi_conf = np.zeros((2, 2), np.int64)
    for ref, got in zip(reference_maps, maps, strict=True):
        conf += metrics.confusion(ref, got, classes)
        roi_conf += metrics.confusion(segmenter.class_adapter.roi(ref).astype(np.uint8),
                                      segmenter.class_adapter.roi(got).astype(np.uint8), 2)
    ious = metrics.iou_per_class(conf)
    major = conf.sum(axis=1) >= MAJOR_SHARE * conf.sum()
    return (metrics.miou(conf), metrics.iiou(roi_conf, roi_class=1),
            float(np.nanmean(ious[major])), float(np.trace(conf) / conf.sum()))


def propagate(reference_maps, fields, every: int, max_residual: float, share: float):
    """The node's decisions over a clip; (class maps, full count, reasons, warp ms)."""
    propagator = ClassMapPropagator(every, max_residual, share)
    maps, warp_ms = [], []
    for ref, field in zip(reference_maps, fields, strict=True):
        reason = propagator.plan(field, ref.shape)
        if reason == PROPAGATED:
            start = time.perf_counter()
            maps.append(propagator.propagate(field))
            warp_ms.append((time.perf_counter() - start) * 1e3)
        else:
            maps.append(ref)  # what the network gives on this frame
            propagator.segmented(ref, field, reason)
    return maps, propagator, warp_ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", nargs="+",
                        default=["project_video01", "project_video02", "challenge01"])
    parser.add_argument("--frames", type=int, default=90)
    parser.add_argument("--size", default="1024x512")
    parser.add_argument("--gop", type=int, default=30)
    parser.add_argument("--stride", type=int, default=1,
                        help="code every k-th frame of the clip (a sensor dropping input)")
    parser.add_argument("--every", nargs="+", type=int, default=[1, 2, 3, 5, 10])
    parser.add_argument("--max-residual", type=float, default=24.0)
    parser.add_argument("--share", type=float, default=0.4)
    parser.add_argument("--share-at", type=int, default=3)
    parser.add_argument("--shares", nargs="+", type=float, default=[0.1, 0.25, 0.4, 1.0])
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args()
    width, height = parse_size(args.size, 2)
    segmenter = load_segmenter(model="default", backend="auto")
    results = []
    print(f"{args.size}, {args.frames} frames per clip (clip stride {args.stride}), "
          f"GOP {args.gop}, "
          f"max_residual {args.max_residual:g}, resegment_share {args.share:g}")
    for clip in args.clips:
        packets = coded_clip(clip, args.frames, width, height, args.gop, args.stride)
        plain, plain_ms = decode_all(packets, export=False)
        decoded, export_ms = decode_all(packets, export=True)
        step_ms = motion_step_ms(packets)
        fields = [f.motion for f in decoded]
        for rgb in (decoded[0].rgb, decoded[1].rgb):
            segmenter.class_map(rgb)  # warm-up
        reference, seg_ms = [], []
        for frame in decoded:
            start = time.perf_counter()
            reference.append(segmenter.predict(frame.rgb).class_map)
            seg_ms.append((time.perf_counter() - start) * 1e3)
        seg = statistics.median(seg_ms)
        ecu = {"decode_ms": statistics.median(plain_ms),
               "decode_export_ms": statistics.median(export_ms),
               "motion_step_ms": statistics.median(step_ms)}
        warp_all = [statistics.median(
            [_timed(warp_class_map, reference[i - 1], fields[i]) for i in range(1, 6)])]
        print(f"\n{clip}: ECU decode {ecu['decode_ms']:.1f} ms/frame, with motion export "
              f"{ecu['decode_export_ms']:.1f} ms (motion step alone {ecu['motion_step_ms']:.2f} "
              f"ms); network {seg:.1f} ms/frame, warp {warp_all[0]:.2f} ms")
        print(f"  {'N':>3} {'full %':>6} {'mIoU':>6} {'iIoU':>6} {'mIoU*':>7} {'agree%':>6} "
              f"{'ms/frame':>8} {'fps':>6}  "
              "full-segmentation reasons")
        rows = []
        for every in args.every:
            row = _row(segmenter, reference, fields, every, args.max_residual, args.share, seg)
            rows.append(row)
            print(_line(row))
        print(f"  refresh rule at N={args.share_at}: resegment_share (1 = never early)")
        shares = []
        for share in args.shares:
            row = _row(segmenter, reference, fields, args.share_at, args.max_residual, share, seg)
            shares.append(row)
            print(_line(row, f"{share:g}"))
        results.append({"clip": clip, "ecu": ecu, "segmentation_ms": seg,
                        "warp_ms": warp_all[0], "every": rows, "shares": shares})
    if args.json:
        with open(args.json, "w") as out:
            json.dump(results, out, indent=1)
    return 0


def _timed(call, *a) -> float:
    start = time.perf_counter()
    call(*a)
    return (time.perf_counter() - start) * 1e3


def _row(segmenter, reference, fields, every, max_residual, share, seg_ms) -> dict:
    maps, propagator, warp_ms = propagate(reference, fields, every, max_residual, share)
    miou, iiou, miou_major, agreement = score(segmenter, reference, maps)
    frames = len(maps)
    full = propagator.full
    warp = statistics.median(warp_ms) if warp_ms else 0.0
    cost = (full * seg_ms + (frames - full) * warp) / frames
    reasons = {r: n for r, n in propagator.counts.items() if n and r != PROPAGATED}
    return {"every": every, "share": share, "full_share": full / frames, "miou": miou,
            "iiou": iiou, "miou_major": miou_major, "pixel_agreement": agreement,
            "ms_per_frame": cost, "fps": 1000.0 / cost, "reasons": reasons}


def _line(row: dict, label: str | None = None) -> str:
    return (f"  {label or row['every']:>3} {100 * row['full_share']:>6.0f} {row['miou']:>6.3f} "
            f"{row['iiou']:>6.3f} {row['miou_major']:>7.3f} {100 * row['pixel_agreement']:>6.2f} "
            f"{row['ms_per_frame']:>8.1f} {row['fps']:>6.1f}  "
            + ", ".join(f"{r} {n}" for r, n in row["reasons"].items()))


if __name__ == "__main__":
    raise SystemExit(main())
