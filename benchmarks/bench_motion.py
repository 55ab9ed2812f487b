#!/usr/bin/env python3
"""Motion at the ECU: what exporting the decoders' vectors costs per frame.

Codes real clips as the pipeline does (dual CRF 23/32, x264 veryfast, GOP 30, the
config's ROI polygon, resized to --size) and decodes every clip --repeat times with the
ECU's ``SacDecoder``, motion export off and on in alternation (so that machine load hits
both alike). Prints medians per frame: the whole decode (both streams, recombination,
RGB) without and with motion, the difference, and the motion step alone (vectors ->
merged field -> residual, ``core.motion.motion_field``) and the SacMotion message fill.

    .venv/bin/python benchmarks/bench_motion.py [--clips project_video01 ...] [--frames 60]
        [--size 1024x512] [--repeat 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from bench_perception_propagation import coded_clip  # noqa: E402

from sac_ros.core import motion  # noqa: E402
from sac_ros.core.io import parse_size  # noqa: E402
from sac_ros.core.sac import SacDecoder  # noqa: E402


def decode_ms(packets, export: bool) -> list[float]:
    decoder = SacDecoder(export_motion=export)
    times = []
    try:
        for packet in packets:
            start = time.perf_counter()
            frame = decoder.decode(packet)
            times.append((time.perf_counter() - start) * 1e3)
            assert (frame.motion is not None) == export
    finally:
        decoder.close()
    return times


def step_ms(packets) -> tuple[list[float], list[float]]:
    """motion_field and fill_msg alone, on the decoder's own vectors and planes."""
    decoder = SacDecoder(export_motion=True)
    steps, fills, previous = [], [], None
    try:
        for packet in packets:
            frame = decoder.decode(packet)
            layout = decoder._layout
            y = layout.rgb_to_i420(frame.rgb)[:layout.padded_height]
            vectors = [decoder._decoders[r].last_vectors for r in ("roi", "non_roi")]
            start = time.perf_counter()
            field = motion.motion_field(*vectors, True, frame.blocks, packet.block_size,
                                        packet.width, packet.height, packet.key_frame, y,
                                        previous, packet.seq)
            steps.append((time.perf_counter() - start) * 1e3)
            start = time.perf_counter()
            motion.fill_msg(SimpleNamespace(), field)
            fills.append((time.perf_counter() - start) * 1e3)
            previous = y
    finally:
        decoder.close()
    return steps[1:], fills


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", nargs="+",
                        default=["project_video01", "project_video02", "challenge01"])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--size", default="1024x512")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    width, height = parse_size(args.size, 2)
    print(f"{args.size}, {args.frames} frames per clip, medians per frame (ms)")
    print(f"  {'clip':<16} {'decode':>7} {'+motion':>7} {'diff':>6} {'step':>6} {'msg':>5} "
          f"{'unreliable %':>12}")
    for clip in args.clips:
        packets = coded_clip(clip, args.frames, width, height, 30)
        plain, export = [], []
        for _ in range(args.repeat):
            plain += decode_ms(packets, False)
            export += decode_ms(packets, True)
        steps, fills = step_ms(packets)
        decoder = SacDecoder(export_motion=True)
        fields = [decoder.decode(p).motion for p in packets]
        decoder.close()
        unreliable = np.mean([f.unreliable.mean() for f in fields if not f.key_frame])
        a, b = statistics.median(plain), statistics.median(export)
        print(f"  {clip:<16} {a:>7.2f} {b:>7.2f} {b - a:>6.2f} {statistics.median(steps):>6.2f} "
              f"{statistics.median(fills):>5.2f} {100 * unreliable:>12.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
