#!/usr/bin/env python3
"""Segmenter latency: the network alone, the block mask end to end, and the pixel outputs.

Frames are the bundled dashcam footage resized to the benchmark size (default 1024x512,
the papers' input size). Figures are medians over ``--runs`` calls after a warm-up.

    .venv/bin/python benchmarks/bench_segmenter.py [--model default] [--size 1024x512]
        [--backend auto] [--runs 200] [--threads 0]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

import numpy as np
from PIL import Image

from sac_ros.config import load_segmentation_config
from sac_ros.core.io import iter_frames, sample_video
from sac_ros.segmentation.loader import load_segmenter
from sac_ros.segmentation.segmenter import argmax_of_upsampled_planes, upsampled_argmax


def sample_frames(count: int, width: int, height: int) -> list[np.ndarray]:
    frames = []
    for rgb, _ in iter_frames(sample_video("project_video03"), 0, count * 10):
        frames.append(np.asarray(Image.fromarray(rgb).resize((width, height),
                                                             Image.Resampling.BILINEAR)))
    return frames[::10]


def timed(call, inputs, runs: int) -> list[float]:
    for item in inputs[:3]:
        call(item)  # warm-up
    times = []
    for k in range(runs):
        item = inputs[k % len(inputs)]
        start = time.perf_counter()
        call(item)
        times.append(1000.0 * (time.perf_counter() - start))
    return times


def onnx_parameters(path) -> int | None:
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return None
    model = onnx.load(str(path))
    return int(sum(numpy_helper.to_array(t).size for t in model.graph.initializer))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--backend", default=None)
    parser.add_argument("--size", default="1024x512", help="frame size WxH")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: the config's, 0 = library default)")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.lower().split("x"))
    cfg = load_segmentation_config()
    if args.threads is not None:
        cfg = dataclasses.replace(cfg, threads=args.threads)
    segmenter = load_segmenter(cfg, args.model, args.backend)
    frames = sample_frames(10, width, height)
    # the network input exactly as the segmenter builds it
    prepared = [segmenter.input_tensor(rgb) for rgb in frames]

    # the class map's upsampling alone, on each frame's class logits: the shipped path
    # against upsampling every plane (the baseline it must match)
    upsampling = []
    for rgb in frames:
        prediction = segmenter.predict(rgb)
        logits = prediction._class_logits
        upsampling.append((logits, width, height, prediction._geo.valid_box(*logits.shape[1:])))
    if any(item[0].ndim != 3 for item in upsampling):
        upsampling = []  # a model that outputs class ids: nothing to interpolate
    rows = [
        ("network only (prepared tensor)", timed(segmenter.backend.infer, prepared, args.runs)),
        ("block mask, frame in -> mask out", timed(segmenter.block_roi, frames, args.runs)),
        ("ROI probability at frame size", timed(segmenter.roi_probability, frames,
                                                max(20, args.runs // 4))),
        ("class map at frame size", timed(segmenter.class_map, frames, max(20, args.runs // 4))),
    ]
    if upsampling:
        rows += [("  its upsampling (near boundaries)",
                  timed(lambda item: upsampled_argmax(*item), upsampling, args.runs)),
                 ("  baseline: every plane upsampled",
                  timed(lambda item: argmax_of_upsampled_planes(*item), upsampling,
                        max(20, args.runs // 4)))]
    path = segmenter.backend.model_path
    params = onnx_parameters(path) if path.suffix == ".onnx" else None
    print(f"model: {segmenter.name} ({path.stat().st_size / 1e6:.2f} MB"
          + (f", {params:,} parameters" if params else "") + ")")
    print(f"frames: {width}x{height} (sample footage resized); input {segmenter.input_size}; "
          f"{os.cpu_count()} CPU cores; threads setting {cfg.threads}")
    print(f"{'path':<36} {'median ms':>10} {'p90 ms':>8} {'fps':>7}")
    for name, times in rows:
        median = statistics.median(times)
        print(f"{name:<36} {median:>10.2f} {np.percentile(times, 90):>8.2f} "
              f"{1000.0 / median:>7.1f}")
    if upsampling:
        same = all(np.array_equal(upsampled_argmax(*item), argmax_of_upsampled_planes(*item))
                   for item in upsampling)
        ratio = statistics.median(rows[-1][1]) / statistics.median(rows[-2][1])
        print(f"class-map upsampling: {ratio:.1f}x faster than upsampling every plane, "
              f"{'identical' if same else 'DIFFERENT'} maps on all {len(upsampling)} frames")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
