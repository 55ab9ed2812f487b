#!/usr/bin/env python3
"""What the ECU's dual_crf -> H.264 re-encode (``reencode_video``) costs, per frame.

For each clip and size, the clip is first coded as the sensor codes it (dual_crf, ROI
from config/sac.yaml's static road polygon; not timed). Then, frame by frame in the same
loop, the ECU's own work (``SacDecoder.decode``: both decodes, per-block select, I420 ->
RGB) and the re-encode of its output (``Reencoder.encode``: RGB -> I420, x264 at
``--crf``) are timed back to back, so both meet the same machine load. Printed per
frame: wall ms and process CPU ms (every thread of the process) of each, and the
re-encode as a ratio to the ECU's decode + recombine. The re-encoded stream's size and
its PSNR against the reconstruction it was made from are printed beside them, and the
sensor's dual_crf packets' size (both streams: what crosses the link).

Last, what the video out costs a node per frame while nobody subscribes: the
subscription-count check ``VideoPublisher.offer`` makes before anything else (rclpy).

    .venv/bin/python benchmarks/bench_reencode.py [--frames 60] [--sizes 1024x512 1280x720]
        [--clips project_video01 project_video02 challenge01] [--crf 18] [--preset veryfast]
"""

from __future__ import annotations

import argparse
import statistics
import time
from types import SimpleNamespace

import av
import numpy as np

from sac_ros.config import load_core_config
from sac_ros.core.codec import EncoderSettings
from sac_ros.core.io import iter_frames, sample_video
from sac_ros.core.mask import PolygonMaskSource, block_mask
from sac_ros.core.metrics import psnr
from sac_ros.core.reencode import Reencoder
from sac_ros.core.sac import SacDecoder, SacEncoder


def scaled_frames(clip: str, count: int, width: int, height: int) -> list[np.ndarray]:
    frames = []
    for rgb, _ in iter_frames(sample_video(clip), 0, count):
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        frames.append(frame.reformat(width=width, height=height).to_ndarray())
    return frames


def sensor_packets(frames, settings: EncoderSettings, polygon) -> list:
    """The clip as sac_sensor sends it in dual_crf mode (config/pipeline.yaml's CRFs)."""
    height, width = frames[0].shape[:2]
    encoder = SacEncoder(width, height, 23.0, 32.0, settings, "dual_crf")
    try:
        return [encoder.encode(rgb, block_mask(polygon.roi_pixels(i, rgb)))
                for i, rgb in enumerate(frames)]
    finally:
        encoder.close()


def timed(call):
    wall, cpu = time.perf_counter(), time.process_time()
    result = call()
    return result, (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3


def measure(packets, crf: float, preset: str) -> dict:
    decoder = SacDecoder()
    reencoder = Reencoder(crf, preset)
    check = av.CodecContext.create("h264", "r")
    times = {"ecu_wall": [], "ecu_cpu": [], "re_wall": [], "re_cpu": []}
    sizes, quality = [], []
    try:
        for packet in packets:
            frame, ecu_wall, ecu_cpu = timed(lambda p=packet: decoder.decode(p))
            if frame is None:
                raise RuntimeError(f"the ECU dropped a frame: {decoder.last_drop_reason}")
            data, re_wall, re_cpu = timed(
                lambda f=frame, p=packet: reencoder.encode(f.rgb, p.seq, p.key_frame))
            for key, value in zip(times, (ecu_wall, ecu_cpu, re_wall, re_cpu), strict=True):
                times[key].append(value)
            sizes.append(len(data))
            (picture,) = check.decode(av.Packet(data))  # not timed: what a viewer sees
            height, width = frame.rgb.shape[:2]
            quality.append(psnr(picture.to_ndarray(format="rgb24")[:height, :width],
                                frame.rgb))
    finally:
        decoder.close()
    result = {key: statistics.mean(values) for key, values in times.items()}
    result.update(kb=statistics.mean(sizes) / 1e3, psnr=statistics.mean(quality),
                  restarts=reencoder.restarts, gop=reencoder.sensor_gop)
    return result


def idle_check_us(repeats: int = 20000) -> float:
    """Per-frame cost of the video out without subscribers (the sensor's and the ECU's)."""
    import rclpy

    from sac_ros.nodes.video import VideoPublisher

    rclpy.init(args=None)
    try:
        node = rclpy.create_node("bench_video_idle")
        video = VideoPublisher(node, "bench/sac/video", "reliable", 30)
        header = SimpleNamespace(stamp=None, frame_id="camera")
        start = time.perf_counter()
        for _ in range(repeats):
            video.offer(header, b"", "h264")
        elapsed = time.perf_counter() - start
        assert video.published == 0
        node.destroy_node()
        return elapsed / repeats * 1e6
    finally:
        rclpy.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--sizes", nargs="+", default=["1024x512", "1280x720"])
    parser.add_argument("--clips", nargs="+",
                        default=["project_video01", "project_video02", "challenge01"])
    parser.add_argument("--crf", type=float, default=18.0, help="sac_ecu reencode_crf")
    parser.add_argument("--preset", default="veryfast", help="sac_ecu reencode_preset")
    parser.add_argument("--gop", type=int, default=30, help="the sensor's gop")
    args = parser.parse_args()
    polygon = PolygonMaskSource(load_core_config().mask.roi_polygon)
    sensor = EncoderSettings("h264", "veryfast", args.gop)  # config/pipeline.yaml's sensor
    print(f"sensor dual_crf x264 veryfast 23/32 GOP {args.gop}; re-encode x264 {args.preset} "
          f"CRF {args.crf:g}; {args.frames} frames; mean ms per frame (wall / process CPU)")
    print(f"{'size':>9} {'clip':<16} {'ECU decode+select':>18} {'re-encode':>14} "
          f"{'ratio wall':>10} {'ratio CPU':>9} {'kB/frame':>8} {'PSNR dB':>7} "
          f"{'link kB/frame':>13}")
    for size in args.sizes:
        width, height = (int(v) for v in size.lower().split("x"))
        for clip in args.clips:
            frames = scaled_frames(clip, args.frames, width, height)
            packets = sensor_packets(frames, sensor, polygon)
            measure(packets[:5], args.crf, args.preset)  # warm-up (first opens, caches)
            r = measure(packets, args.crf, args.preset)
            print(f"{size:>9} {clip:<16} {r['ecu_wall']:8.1f} / {r['ecu_cpu']:6.1f}  "
                  f"{r['re_wall']:6.1f} / {r['re_cpu']:5.1f} {r['re_wall'] / r['ecu_wall']:10.2f} "
                  f"{r['re_cpu'] / r['ecu_cpu']:9.2f} {r['kb']:8.1f} {r['psnr']:7.2f} "
                  f"{statistics.mean(p.num_bytes for p in packets) / 1e3:13.1f}")
    print(f"video out without subscribers: {idle_check_us():.2f} us per frame "
          "(the subscription-count check; no message built, nothing encoded)")


if __name__ == "__main__":
    main()
