#!/usr/bin/env python3
"""Temporal mask hysteresis: block flicker, bytes and quality against the hold N.

Per-frame masks come from the shipped segmenter on the sample footage (its ROI edge
moves a little from frame to frame), or with ``--jitter PX`` from the config's road
polygon with each vertex moved by up to PX pixels per frame (a stand-in for a
segmenter's boundary noise). Every hold N codes the same frames over a CRF sweep with
dual_crf (c / c + 9) and roi_qp (c, offset from config). Quality is measured on each
frame's own (un-held) mask for every N, so the regions compared are the same; the
ROI BD-rate and non-ROI BD-PSNR are against N = 0 (no hysteresis), i.e. at equal bytes.

    .venv/bin/python benchmarks/bench_hysteresis.py [--frames 100] [--holds 0 1 2 3 5]
"""

from __future__ import annotations

import argparse

import numpy as np

from sac_ros.config import encoder_settings, load_core_config
from sac_ros.core import metrics
from sac_ros.core.io import load_clip
from sac_ros.core.mask import PolygonMaskSource, block_mask, expand_blocks, hold_blocks
from sac_ros.core.sac import SacDecoder, SacEncoder


def raw_masks(clip, cfg, jitter: float, seed: int = 0) -> tuple[list[np.ndarray], str]:
    if jitter:
        rng = np.random.default_rng(seed)
        polygon = np.asarray(cfg.mask.roi_polygon, float)
        scale = np.array([jitter / clip.width, jitter / clip.height])
        masks = []
        for index, frame in enumerate(clip.frames):
            moved = np.clip(polygon + rng.uniform(-1, 1, polygon.shape) * scale, 0, 1)
            masks.append(block_mask(PolygonMaskSource(moved.tolist()).roi_pixels(index, frame)))
        return masks, f"road polygon, vertices jittered by up to {jitter:g} px per frame"
    from sac_ros.segmentation.loader import segmenter_mask_source

    source, description = segmenter_mask_source("default", cfg.mask.non_roi_classes)
    masks = [block_mask(source.roi_pixels(i, f, n))
             for i, (f, n) in enumerate(zip(clip.frames, clip.names, strict=True))]
    return masks, description


def code(clip, raw, held, settings, mode, roi_crf, non_roi_crf) -> dict:
    encoder = SacEncoder(clip.width, clip.height, roi_crf, non_roi_crf, settings, mode)
    decoder = SacDecoder()
    total, roi, non = 0, [], []
    try:
        for frame, own, coded in zip(clip.frames, raw, held, strict=True):
            packet = encoder.encode(frame, coded)
            total += packet.num_bytes
            decoded = decoder.decode(packet)
            own_px = expand_blocks(own, clip.height, clip.width)
            roi.append(metrics.psnr(frame, decoded.rgb, own_px))
            non.append(metrics.psnr(frame, decoded.rgb, ~own_px))
    finally:
        encoder.close()
        decoder.close()
    return {"kb": total / len(clip.frames) / 1000, "roi": float(np.nanmean(roi)),
            "non": float(np.nanmean(non))}


def curve(clip, raw, held, settings, mode, crfs, delta) -> list[dict]:
    return [code(clip, raw, held, settings, mode, crf, crf + delta) for crf in crfs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=100)
    parser.add_argument("--holds", type=int, nargs="+", default=[0, 1, 2, 3, 5])
    parser.add_argument("--codec", default="h264")
    parser.add_argument("--jitter", type=float, default=0.0,
                        help="use the jittered road polygon (px) instead of the segmenter")
    args = parser.parse_args()
    cfg = load_core_config()
    clip = load_clip("sample", 0, args.frames)
    settings = encoder_settings(cfg, fps=clip.fps, codec=args.codec)
    raw, description = raw_masks(clip, cfg, args.jitter)
    crfs = cfg.eval.crf_sweep[settings.codec]
    runs = (("dual_crf", 9.0), ("roi_qp", float(cfg.eval.roi_qp_offsets[settings.codec][0])))
    print(f"{clip.width}x{clip.height}, {len(clip.frames)} frames, {settings.codec} "
          f"{settings.preset}, GOP {settings.gop}; masks: {description}")
    print(f"CRF sweep {crfs}: dual_crf c / c+9, roi_qp c {runs[1][1]:+g}; kB/frame at CRF "
          f"{crfs[1]}; BD against hold 0 on the frames' own masks")
    print(f"{'hold':>4} {'flips/frame':>11} {'ROI blocks':>10}  " + "  ".join(
        f"{mode + ' kB/f':>14} {'ROI BD-rate':>11} {'non-ROI dB':>10}" for mode, _ in runs))
    anchors = {}
    for hold in args.holds:
        held = hold_blocks(raw, hold)
        flips = np.mean([(a != b).sum() for a, b in zip(held[:-1], held[1:], strict=True)])
        share = np.mean([h.mean() for h in held])
        cells = []
        for mode, delta in runs:
            points = curve(clip, raw, held, settings, mode, crfs, delta)
            anchor = anchors.setdefault(mode, points)
            rates = ([p["kb"] for p in anchor], [p["kb"] for p in points])
            bd = metrics.bd_rate(rates[0], [p["roi"] for p in anchor],
                                 rates[1], [p["roi"] for p in points])
            non = metrics.bd_quality(rates[0], [p["non"] for p in anchor],
                                     rates[1], [p["non"] for p in points])
            cells.append(f"{points[1]['kb']:14.2f} {bd:+10.1f}% {non:+10.2f}")
        print(f"{hold:>4} {flips:>11.1f} {share:>10.1%}  " + "  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
