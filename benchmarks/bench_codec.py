#!/usr/bin/env python3
"""Encode+decode throughput: uniform vs dual-CRF SAC vs ROI-QP, measured in the same run.

Frames are the bundled dashcam footage scaled to each size, with the config's
static road polygon as the ROI. Each measurement covers the full per-frame path
the nodes run: RGB -> I420 -> split -> encode (two threads) -> decode -> select -> RGB
(ROI-QP: RGB -> I420 -> one encode with per-block QP offsets -> decode -> RGB).

    .venv/bin/python benchmarks/bench_codec.py [--frames 60] [--sizes 1024x512 2048x1024]
"""

from __future__ import annotations

import argparse
import statistics
import time

import av
import numpy as np

from sac_ros.config import encoder_settings, load_core_config
from sac_ros.core.codec import EncoderSettings, StreamEncoder
from sac_ros.core.io import iter_frames, sample_video
from sac_ros.core.mask import PolygonMaskSource, block_mask
from sac_ros.core.sac import SacDecoder, SacEncoder


def scaled_frames(count: int, width: int, height: int) -> list[np.ndarray]:
    frames = []
    for rgb, _ in iter_frames(sample_video(), 0, count):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frames.append(frame.reformat(width=width, height=height).to_ndarray())
    return frames


def fps(frames, blocks, settings: EncoderSettings, mode: str, parallel: bool) -> float:
    encoder = SacEncoder(frames[0].shape[1], frames[0].shape[0], 23, 32, settings, mode,
                         parallel=parallel)
    decoder = SacDecoder(parallel=parallel)
    start = time.perf_counter()
    for frame in frames:
        if decoder.decode(encoder.encode(frame, blocks)) is None:
            raise RuntimeError(f"decode dropped a frame: {decoder.last_drop_reason}")
    elapsed = time.perf_counter() - start
    encoder.close()
    decoder.close()
    return len(frames) / elapsed


def roi_write_ms(width: int, height: int, blocks: np.ndarray, settings: EncoderSettings,
                 repeats: int = 200) -> float:
    """Per-frame cost of writing the ROI side data when the mask changes every frame."""
    rows, cols = blocks.shape
    encoder = StreamEncoder(cols * 16, rows * 16, 23, settings, qp_offset=9)
    rng = np.random.default_rng(0)
    masks = []
    for _ in range(8):  # the road mask with a ragged, moving edge
        mask = blocks.copy()
        edge = np.argmax(blocks, axis=0)
        for col, row in enumerate(edge):
            mask[max(0, row - rng.integers(0, 3)):row + rng.integers(0, 3), col] = True
        masks.append(~mask)
    start = time.perf_counter()
    for index in range(repeats):
        encoder._write_regions(masks[index % len(masks)])
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--sizes", nargs="+", default=["1024x512", "2048x1024"])
    parser.add_argument("--codec", default="h264")
    parser.add_argument("--preset", help="default: config/sac.yaml's")
    parser.add_argument("--repeats", type=int, default=3, help="median over interleaved repeats")
    args = parser.parse_args()
    cfg = load_core_config()
    settings = encoder_settings(cfg, args.preset, codec=args.codec)
    polygon = PolygonMaskSource(cfg.mask.roi_polygon)
    methods = (("uniform", "uniform", True), ("SAC, 2 threads", "dual_crf", True),
               ("SAC, sequential", "dual_crf", False), ("ROI-QP", "roi_qp", True))
    print(f"codec {settings.codec} preset {settings.preset}, {args.frames} frames, "
          f"median of {args.repeats} interleaved repeats")
    print(f"{'size':>10}  {'method':<16} {'fps':>7}  {'x uniform':>9}  ROI blocks")
    for size in args.sizes:
        width, height = (int(v) for v in size.lower().split("x"))
        frames = scaled_frames(args.frames, width, height)
        blocks = block_mask(polygon.roi_pixels(0, frames[0]))
        results: dict[str, list[float]] = {name: [] for name, _, _ in methods}
        fps(frames[:5], blocks, settings, "dual_crf", True)  # warm-up
        for _ in range(args.repeats):
            for name, mode, parallel in methods:
                results[name].append(fps(frames, blocks, settings, mode, parallel))
        base = statistics.median(results["uniform"])
        for name, _, _ in methods:
            value = statistics.median(results[name])
            print(f"{size:>10}  {name:<16} {value:7.1f}  {value / base:9.2f}  {blocks.mean():.0%}")
        print(f"{size:>10}  ROI-QP side-data write, mask changing every frame: "
              f"{roi_write_ms(width, height, blocks, settings):.3f} ms/frame")


if __name__ == "__main__":
    main()
