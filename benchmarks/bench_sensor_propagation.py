#!/usr/bin/env python3
"""Propagating sensor masks: CPU per frame against block iIoU to per-frame segmentation.

For each clip (the bundled dashcam footage, resized to --size) the sensor's mask source
(``PropagatingSegmenter``: the shipped model, the config's hysteresis, key frames every
--gop frames from frame 0) runs at each N of --every. N = 1 is per-frame segmentation,
the reference. For each N:

- CPU per frame: process CPU time (all threads: ONNX Runtime's pool included) of the
  mask source's calls, averaged over every frame of the clip (segmented and carried);
  the wall time beside it; the saving against N = 1 measured in the same run;
- the block iIoU (the ROI IoU of the 16x16 block masks) of the mask against the N = 1
  masks, pooled over the clip's frames;
- the same (CPU, saving, iIoU) with the mask held still between segmentations
  (``carry="still"``, sac.yaml mask.carry: still), to show what the block matching adds;
- the share of frames segmented in full, and the cost of a carried frame alone.

The table's last rows average over the clips. Acceptance (docs/compressed_domain.md):
mean block iIoU >= 0.97 at the shipped segment_every.

    .venv/bin/python benchmarks/bench_sensor_propagation.py [--clips project_video01 ...]
        [--frames 90] [--size 1024x512] [--every 1 2 3 5 10] [--gop 30] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from PIL import Image

from sac_ros.config import load_core_config
from sac_ros.core.io import load_clip, parse_size
from sac_ros.core.metrics import binary_iou
from sac_ros.segmentation.loader import load_segmenter
from sac_ros.segmentation.propagation import PropagatingSegmenter


def resized_clip(name: str, frames: int, width: int, height: int) -> list[np.ndarray]:
    clip = load_clip(f"sample:{name}", 0, frames)
    return [np.asarray(Image.fromarray(f).resize((width, height), Image.Resampling.BILINEAR))
            for f in clip.frames]


def run_source(source: PropagatingSegmenter, frames: list[np.ndarray], gop: int) -> dict:
    """Every frame through the mask source, timed: masks, CPU and wall ms per call."""
    masks, cpu, wall, carried = [], [], [], []
    for index, rgb in enumerate(frames):
        cpu0, wall0 = time.process_time(), time.perf_counter()
        masks.append(source.block_roi(rgb, key_frame=index % gop == 0))
        cpu.append((time.process_time() - cpu0) * 1e3)
        wall.append((time.perf_counter() - wall0) * 1e3)
        carried.append(not source.segmented)
    carried = np.array(carried)
    cpu, wall = np.array(cpu), np.array(wall)
    return {"masks": masks, "cpu_ms": float(cpu.mean()), "wall_ms": float(wall.mean()),
            "carried_cpu_ms": float(cpu[carried].mean()) if carried.any() else None,
            "segmented_share": float(1.0 - carried.mean())}


def measure_clip(segmenter, frames: list[np.ndarray], every: list[int], gop: int,
                 hold: int) -> list[dict]:
    # warm-up: the first inferences and matches at this size allocate
    warm = PropagatingSegmenter(segmenter, 2, hold)
    for rgb in frames[:4]:
        warm.block_roi(rgb)
    reference = run_source(PropagatingSegmenter(segmenter, 1, hold), frames, gop)
    ref_masks = np.stack(reference["masks"])
    rows = []
    for n in every:
        moved = reference if n == 1 else run_source(
            PropagatingSegmenter(segmenter, n, hold), frames, gop)
        still = reference if n == 1 else run_source(
            PropagatingSegmenter(segmenter, n, hold, carry="still"), frames, gop)
        rows.append({
            "every": n, "cpu_ms": moved["cpu_ms"], "wall_ms": moved["wall_ms"],
            "saved": 1.0 - moved["cpu_ms"] / reference["cpu_ms"],
            "segmented_share": moved["segmented_share"],
            "carried_cpu_ms": moved["carried_cpu_ms"],
            "block_iiou": binary_iou(ref_masks, np.stack(moved["masks"])),
            "still_cpu_ms": still["cpu_ms"],
            "still_saved": 1.0 - still["cpu_ms"] / reference["cpu_ms"],
            "still_block_iiou": binary_iou(ref_masks, np.stack(still["masks"])),
        })
    return rows


def print_rows(label: str, rows: list[dict]) -> None:
    for r in rows:
        carried = "-" if r["carried_cpu_ms"] is None else f"{r['carried_cpu_ms']:.2f}"
        print(f"{label:<16} {r['every']:>3}  {r['cpu_ms']:>7.2f}  {r['wall_ms']:>7.2f}  "
              f"{100 * r['saved']:>6.1f}%  {100 * r['segmented_share']:>6.1f}%  {carried:>7}  "
              f"{r['block_iiou']:>7.4f}  {r['still_cpu_ms']:>7.2f}  "
              f"{100 * r['still_saved']:>6.1f}%  {r['still_block_iiou']:>7.4f}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", nargs="+",
                        default=["project_video01", "project_video02", "challenge01",
                                 "challenge03"])
    parser.add_argument("--frames", type=int, default=90)
    parser.add_argument("--size", default="1024x512")
    parser.add_argument("--every", type=int, nargs="+", default=[1, 2, 3, 5, 10])
    parser.add_argument("--gop", type=int, default=30)
    parser.add_argument("--model", default="default")
    parser.add_argument("--json", help="also write the figures here")
    args = parser.parse_args()
    width, height = parse_size(args.size)
    every = sorted(set([1] + args.every))
    hold = load_core_config().mask.hysteresis_frames
    segmenter = load_segmenter(model=args.model)
    print(f"{segmenter.name}, {width}x{height}, {args.frames} frames per clip, key frames "
          f"every {args.gop}, hysteresis {hold} frames; iIoU against N = 1 (per-frame)")
    print(f"{'clip':<16} {'N':>3}  {'CPU ms':>7}  {'wall ms':>7}  {'saved':>7}  "
          f"{'segm.':>7}  {'carry':>7}  {'iIoU':>7}  {'| still':>7}  {'saved':>7}  {'iIoU':>7}")
    results = {}
    for name in args.clips:
        frames = resized_clip(name, args.frames, width, height)
        results[name] = measure_clip(segmenter, frames, every, args.gop, hold)
        print_rows(name, results[name])
    mean = [{key: (float(np.mean([results[c][i][key] for c in results]))
                   if key != "carried_cpu_ms" or n > 1 else None)
             for key in results[args.clips[0]][i]} | {"every": n}
            for i, n in enumerate(every)]
    print_rows("mean", mean)
    worst = min(results, key=lambda c: results[c][-1]["block_iiou"])
    print(f"lowest iIoU at N = {every[-1]}: {worst} "
          f"{results[worst][-1]['block_iiou']:.4f}")
    segmenter.close()
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"size": [width, height], "frames": args.frames, "gop": args.gop,
                       "hysteresis_frames": hold, "clips": results, "mean": mean}, handle,
                      indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
