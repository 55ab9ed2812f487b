#!/usr/bin/env python3
"""Where the CPU goes per frame: each stage of the sensor and ECU path, timed in-process.

Uses the same functions the nodes call, one stage at a time, on sample frames
scaled to each size (x264, two streams encoded sequentially here so that each
encoder's own cost shows).

    .venv/bin/python benchmarks/profile_frame.py [--frames 60] [--model default]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import av
from std_msgs.msg import Header

from sac_ros.config import load_core_config
from sac_ros.core.codec import EncoderSettings, StreamDecoder, StreamEncoder
from sac_ros.core.frames import PlaneLayout, select, split
from sac_ros.core.io import iter_frames, sample_video
from sac_ros.core.mask import PolygonMaskSource, block_mask
from sac_ros.core.sac import SacEncoder
from sac_ros.core.wire import packet_from_msg
from sac_ros.nodes.messages import image_to_rgb, packet_to_msg, rgb_to_image


def profile(size: str, frames: int, preset: str, model: str) -> dict[str, float]:
    width, height = (int(v) for v in size.split("x"))
    clip = [av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
        width=width, height=height).to_ndarray() for rgb, _ in iter_frames(sample_video(), 0,
                                                                            frames)]
    polygon = PolygonMaskSource(load_core_config().mask.roi_polygon)

    def polygon_blocks(frame):
        return block_mask(polygon.roi_pixels(0, frame))

    segmenter = None
    if model:
        from sac_ros.segmentation import load_segmenter

        segmenter = load_segmenter(model=model)
    settings = EncoderSettings(preset=preset, threads=1)
    layout = PlaneLayout(height, width)
    roi_enc = StreamEncoder(layout.padded_width, layout.padded_height, 23, settings)
    non_enc = StreamEncoder(layout.padded_width, layout.padded_height, 32, settings)
    roi_dec, non_dec = StreamDecoder("h264"), StreamDecoder("h264")
    roi_buf, non_buf, out = layout.new_i420(), layout.new_i420(), layout.new_i420()
    packer = SacEncoder(width, height, 23, 32, settings)  # only for packet framing
    times: dict[str, list[float]] = defaultdict(list)

    def timed(name, fn, *args):
        start = time.perf_counter()
        result = fn(*args)
        times[name].append((time.perf_counter() - start) * 1e3)
        return result

    header = Header()
    for rgb in clip:
        image = rgb_to_image(rgb, header)
        frame = timed("sensor: Image -> RGB", image_to_rgb, image)
        if segmenter is not None:
            blocks = timed("sensor: segmentation (block head)", segmenter.block_roi, frame)
        else:
            blocks = timed("sensor: polygon mask", polygon_blocks, frame)
        i420 = timed("sensor: RGB -> I420 (pad)", layout.rgb_to_i420, frame)
        timed("sensor: split streams", split, layout, i420, blocks, roi_buf, non_buf)
        roi_data, roi_key = timed("sensor: encode ROI", roi_enc.encode, roi_buf)
        non_data, non_key = timed("sensor: encode non-ROI", non_enc.encode, non_buf)
        packet = packer.encode(frame, blocks)
        packet.roi.data, packet.non_roi.data = roi_data, non_data
        packet.roi.key_frame, packet.non_roi.key_frame = roi_key, non_key
        msg = timed("sensor: packet -> message (+ CRC)", packet_to_msg, packet, header)
        parsed = timed("ecu: message -> packet (+ CRC)", packet_from_msg, msg).packet
        roi_planes = timed("ecu: decode ROI", roi_dec.decode, parsed.roi.data, roi_key)
        non_planes = timed("ecu: decode non-ROI", non_dec.decode, parsed.non_roi.data, non_key)
        timed("ecu: select per block", select, layout, roi_planes, non_planes, blocks, out)
        rgb_out = timed("ecu: I420 -> RGB (crop)", layout.i420_to_rgb, out)
        timed("ecu: RGB -> Image message", rgb_to_image, rgb_out, header)
    packer.close()
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--sizes", nargs="+", default=["1024x512", "2048x1024"])
    parser.add_argument("--preset", default=EncoderSettings.preset)
    parser.add_argument("--model", default="default", help="'' = static polygon mask")
    args = parser.parse_args()
    for size in args.sizes:
        medians = profile(size, args.frames, args.preset, args.model)
        total = sum(medians.values())
        print(f"\n{size}, x264 {args.preset}, median ms per frame over {args.frames} frames "
              f"(1 encoder thread each):")
        for name, value in medians.items():
            print(f"  {name:<36} {value:7.2f}  {100 * value / total:5.1f}%")
        print(f"  {'total CPU per frame':<36} {total:7.2f}")


if __name__ == "__main__":
    main()
