#!/usr/bin/env python3
"""What sac_view costs per frame it shows, on real footage.

The view's encode thread, per image channel a Foxglove client watches, runs: Image
message -> RGB (nodes.messages.image_to_rgb), for the ROI overlay the packet's block
mask over it, JPEG (Pillow) and the log into the foxglove-sdk channel (protobuf
CompressedImage; a WebSocket client is subscribed, so the SDK really serializes and
sends it). Times are medians over the clip's frames, in this process, one thread.
At ``max_fps`` frames per second per channel, the view's share of one core is
``ms x max_fps / 1000`` per watched channel.

    .venv/bin/python benchmarks/bench_view.py [--clips project_video01 ...] [--frames 60]
                                              [--sizes 960x540 1920x1080] [--quality 80]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import threading
import time

import av
import numpy as np

from sac_ros.config import load_core_config
from sac_ros.core.io import iter_frames, resolve_input
from sac_ros.core.mask import PolygonMaskSource, block_mask


def frames_of(clip: str, count: int, width: int, height: int) -> list[np.ndarray]:
    out = []
    for rgb, _ in iter_frames(resolve_input(f"sample:{clip}"), 0, count):
        if rgb.shape[:2] != (height, width):
            rgb = av.VideoFrame.from_ndarray(rgb, format="rgb24").reformat(
                width=width, height=height).to_ndarray()
        out.append(rgb)
    return out


def subscribed_client(port: int, topic: str, ready: threading.Event, received: list) -> None:
    """A WebSocket client subscribed to ``topic`` that counts what arrives (a thread)."""
    import websockets

    async def run() -> None:
        async with websockets.connect(f"ws://127.0.0.1:{port}", subprotocols=["foxglove.sdk.v1"],
                                      max_size=None) as ws:
            while True:
                msg = json.loads(await ws.recv())
                if msg["op"] == "advertise":
                    channel = next(c for c in msg["channels"] if c["topic"] == topic)
                    break
            await ws.send(json.dumps({"op": "subscribe",
                                      "subscriptions": [{"id": 1, "channelId": channel["id"]}]}))
            ready.set()
            async for data in ws:
                if isinstance(data, bytes):
                    received.append(len(data))

    asyncio.run(run())


def measure(frames: list[np.ndarray], quality: int) -> dict:
    import foxglove
    from foxglove.channels import CompressedImageChannel
    from foxglove.messages import CompressedImage, Timestamp
    from std_msgs.msg import Header

    from sac_ros.nodes.messages import image_to_rgb, rgb_to_image
    from sac_ros.nodes.view_channels import encode_jpeg, roi_overlay

    context = foxglove.Context()
    channel = CompressedImageChannel("/bench/sac/image", context=context)
    server = foxglove.start_server(host="127.0.0.1", port=0, context=context)
    ready, received = threading.Event(), []
    threading.Thread(target=subscribed_client, args=(server.port, "/bench/sac/image", ready,
                                                     received), daemon=True).start()
    ready.wait(10)
    while not channel.has_sinks():
        time.sleep(0.01)
    polygon = PolygonMaskSource(load_core_config().mask.roi_polygon)
    msgs = [rgb_to_image(rgb, Header()) for rgb in frames]
    masks = [block_mask(polygon.roi_pixels(0, rgb)) for rgb in frames]
    to_rgb, jpeg, overlay, log, sizes = [], [], [], [], []
    for msg, blocks in zip(msgs, masks, strict=True):
        t0 = time.perf_counter()
        rgb = image_to_rgb(msg)
        t1 = time.perf_counter()
        data = encode_jpeg(rgb, quality)
        t2 = time.perf_counter()
        encode_jpeg(roi_overlay(rgb, blocks.astype(bool)), quality)
        t3 = time.perf_counter()
        channel.log(CompressedImage(timestamp=Timestamp(0, 0), frame_id="camera", data=data,
                                    format="jpeg"))
        t4 = time.perf_counter()
        to_rgb.append(t1 - t0)
        jpeg.append(t2 - t1)
        overlay.append(t3 - t2)
        log.append(t4 - t3)
        sizes.append(len(data))
    deadline = time.monotonic() + 10
    while len(received) < len(frames) and time.monotonic() < deadline:
        time.sleep(0.05)
    server.stop()

    def ms(values) -> float:
        return 1e3 * statistics.median(values)

    return {"image_to_rgb_ms": ms(to_rgb), "jpeg_ms": ms(jpeg), "overlay_jpeg_ms": ms(overlay),
            "log_ms": ms(log), "kb": statistics.median(sizes) / 1e3,
            "delivered": len(received), "frames": len(frames)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clips", nargs="+",
                        default=["project_video01", "project_video02", "challenge01"])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--sizes", nargs="+", default=["960x540", "1920x1080"])
    parser.add_argument("--quality", type=int, default=80)
    args = parser.parse_args()
    print(f"JPEG quality {args.quality}, medians over {args.frames} frames per clip")
    print(f"{'clip':<16} {'size':>10} {'msg->RGB':>9} {'JPEG':>7} {'overlay':>8} {'log':>6} "
          f"{'per frame':>10} {'kB':>6} {'delivered':>10}")
    for size in args.sizes:
        width, height = (int(v) for v in size.split("x"))
        for clip in args.clips:
            r = measure(frames_of(clip, args.frames, width, height), args.quality)
            shown = r["image_to_rgb_ms"] + r["jpeg_ms"] + r["log_ms"]
            print(f"{clip:<16} {size:>10} {r['image_to_rgb_ms']:>7.2f}ms {r['jpeg_ms']:>5.2f}ms "
                  f"{r['overlay_jpeg_ms']:>6.2f}ms {r['log_ms']:>4.2f}ms {shown:>8.2f}ms "
                  f"{r['kb']:>6.1f} {r['delivered']:>4}/{r['frames']}")


if __name__ == "__main__":
    main()
