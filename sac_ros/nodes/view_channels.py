"""What `sac view` serves to Foxglove, without ROS: the channel plan, JPEG frames, stats as
JSON, the ROI overlay, the rate gate, the encode worker and the shipped layout.

The node (``nodes.view``) subscribes to the ROS topics a channel needs and hands
messages here; everything that decides what a Foxglove client sees is in this module,
so that the layout file, the node and the tests name the same channels.
"""

from __future__ import annotations

import io
import json
import math
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sac_ros.core.wire import (
    ECU_STATS_TOPIC,
    IMAGE_TOPIC,
    INPUT_TOPIC,
    OVERLAY_TOPIC,
    PACKET_TOPIC,
    PERCEPTION_STATS_TOPIC,
    SENSOR_STATS_TOPIC,
    VIDEO_TOPIC,
    topic_in,
)

# Foxglove channels with no ROS topic of the same name (the view composes or counts them).
ROI_OVERLAY_CHANNEL = "sac/roi_overlay"   # original frame, tinted outside the packet's ROI
VIEW_STATS_CHANNEL = "/sac_view/stats"    # the view's own counters and JPEG cost

IMAGE, VIDEO, JSON = "image", "video", "json"
PACKETS = "packets"  # a source kind: SacPacket, whose block mask the ROI overlay shows
VIDEO_FORMATS = ("h264", "h265", "vp9", "av1")  # what Foxglove's CompressedVideo decodes
MAX_VIDEO_FRAME_BYTES = 32 * 1024 * 1024


@dataclass(frozen=True)
class ChannelSpec:
    """One Foxglove channel: its topic, what it carries and the ROS topics it needs."""

    topic: str                # Foxglove topic (absolute, the camera's namespace first)
    kind: str                 # IMAGE (CompressedImage, JPEG), VIDEO or JSON
    sources: tuple[str, ...]  # absolute ROS topics it is made from
    role: str                 # original, reconstruction, roi_overlay, ..., sensor_stats
    camera: str = ""          # the camera namespace (none for the view's own stats)


def channel_plan(cameras: list[str]) -> list[ChannelSpec]:
    """Every channel the view advertises for these camera namespaces ("" = root)."""
    plan = []
    for camera in cameras:
        def t(name: str, cam=camera) -> str:
            return topic_in(cam, name)
        plan += [
            ChannelSpec(t(INPUT_TOPIC), IMAGE, (t(INPUT_TOPIC),), "original", camera),
            ChannelSpec(t(IMAGE_TOPIC), IMAGE, (t(IMAGE_TOPIC),), "reconstruction", camera),
            ChannelSpec(t(ROI_OVERLAY_CHANNEL), IMAGE, (t(INPUT_TOPIC), t(PACKET_TOPIC)),
                        "roi_overlay", camera),
            ChannelSpec(t(OVERLAY_TOPIC), IMAGE, (t(OVERLAY_TOPIC),), "perception_overlay",
                        camera),
            ChannelSpec(t(VIDEO_TOPIC), VIDEO, (t(VIDEO_TOPIC),), "video", camera),
            ChannelSpec(t(SENSOR_STATS_TOPIC), JSON, (t(SENSOR_STATS_TOPIC),), "sensor_stats",
                        camera),
            ChannelSpec(t(ECU_STATS_TOPIC), JSON, (t(ECU_STATS_TOPIC),), "ecu_stats", camera),
            ChannelSpec(t(PERCEPTION_STATS_TOPIC), JSON, (t(PERCEPTION_STATS_TOPIC),),
                        "perception_stats", camera),
        ]
    plan.append(ChannelSpec(VIEW_STATS_CHANNEL, JSON, (), "view_stats"))
    return plan


def encode_jpeg(rgb: np.ndarray, quality: int) -> bytes:
    """Baseline JPEG of an RGB (or mono) uint8 array."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(out, format="JPEG", quality=int(quality))
    return out.getvalue()


def roi_overlay(rgb: np.ndarray, blocks: np.ndarray, block_size: int = 16) -> np.ndarray:
    """The frame with its non-ROI blocks dimmed and tinted magenta; ROI blocks untouched.

    ``blocks``: bool block mask, True = ROI (the mask the sensor coded the frame with),
    partial edge blocks included. Works on runs of non-ROI blocks, row by row: no
    pixel mask is built, and only the non-ROI area is touched.
    """
    height, width = rgb.shape[:2]
    rows, cols = -(-height // block_size), -(-width // block_size)
    if blocks.shape != (rows, cols):
        raise ValueError(f"block mask {blocks.shape[1]}x{blocks.shape[0]} does not match the "
                         f"{width}x{height} frame ({cols}x{rows} blocks)")
    out = np.ascontiguousarray(rgb).copy()
    flat = out.reshape(height, width * 3)  # long inner rows: numpy's fast loops
    tint = np.tile(np.array([90, 0, 90], np.uint8), width)
    edges = np.diff(np.pad(~blocks, ((0, 0), (1, 1))).astype(np.int8), axis=1)
    for row in range(rows):
        starts, stops = np.flatnonzero(edges[row] == 1), np.flatnonzero(edges[row] == -1)
        y = slice(row * block_size, (row + 1) * block_size)
        for start, stop in zip(starts, stops, strict=True):
            x = slice(start * block_size * 3, min(stop * block_size, width) * 3)
            run = flat[y, x]
            run >>= 1
            run += tint[x]  # at most 127 + 90: no overflow
    return out


def _json_value(value):
    if isinstance(value, float):
        return value if math.isfinite(value) else None  # JSON has no NaN
    if isinstance(value, (list, tuple)) or hasattr(value, "tolist"):
        return [_json_value(v) for v in (value.tolist() if hasattr(value, "tolist") else value)]
    if isinstance(value, (bool, int, str)) or value is None:
        return value
    return str(value)


def stats_json(msg) -> dict:
    """A stats message (SacStats, PerceptionStats, any rclpy message of plain fields and a
    header) as a JSON object Foxglove's Plot panel reads: ``.fps``, ``.drops.superseded``."""
    out = {}
    for name in msg.get_fields_and_field_types():
        value = getattr(msg, name)
        if name == "header":
            out["stamp"] = {"sec": int(value.stamp.sec), "nsec": int(value.stamp.nanosec)}
            out["frame_id"] = str(value.frame_id)
        else:
            out[name] = _json_value(value)
    if "drop_reasons" in out and "drop_counts" in out:
        out["drops"] = dict(zip(out["drop_reasons"], out["drop_counts"], strict=False))
    return out


_JSON_TYPES = {"float": "number", "double": "number", "boolean": "boolean", "string": "string"}


def stats_schema(msg_type) -> dict:
    """JSON Schema of ``stats_json`` for a message type (field types from rosidl)."""
    props: dict = {}
    for name, kind in msg_type.get_fields_and_field_types().items():
        if name == "header":
            props["stamp"] = {"type": "object", "properties": {
                "sec": {"type": "integer"}, "nsec": {"type": "integer"}}}
            props["frame_id"] = {"type": "string"}
        elif kind.startswith("sequence<"):
            inner = kind[len("sequence<"):-1]
            props[name] = {"type": "array", "items": {"type": _scalar_type(inner)}}
        else:
            props[name] = {"type": _scalar_type(kind)}
    if "drop_reasons" in props:
        props["drops"] = {"type": "object", "additionalProperties": {"type": "integer"}}
    return {"type": "object", "title": msg_type.__name__, "properties": props}


def _scalar_type(kind: str) -> str:
    if kind in _JSON_TYPES:
        return _JSON_TYPES[kind]
    return "integer" if "int" in kind or kind in ("octet", "char") else "string"


VIEW_STATS_SCHEMA = {
    "type": "object", "title": "SacViewStats",
    "properties": {
        "forwarded": {"type": "object", "additionalProperties": {"type": "integer"}},
        "drops": {"type": "object", "additionalProperties": {"type": "integer"}},
        "jpeg_ms_p50": {"type": ["number", "null"]},
        "jpeg_ms_p99": {"type": ["number", "null"]},
        "subscribed": {"type": "array", "items": {"type": "string"}},
    }}


class RateGate:
    """At most ``max_fps`` frames per key on average; the others are refused (the view shows
    the newest frames, it never queues them).

    Each frame let through books the next one an interval later; a frame up to a quarter
    interval early still passes, so a 10 Hz camera's jittery frames all pass a 10 fps gate,
    and a 30 Hz camera's every third frame does.
    """

    def __init__(self, max_fps: float, clock: Callable[[], float] = time.monotonic):
        self.interval = 1.0 / max_fps
        self.slack = 0.25 * self.interval
        self._clock = clock
        self._due: dict[str, float] = {}

    def allow(self, key: str) -> bool:
        now = self._clock()
        due = self._due.get(key, now)
        if now < due - self.slack:
            return False
        self._due[key] = max(due, now - self.slack) + self.interval
        return True


class EncodeWorker:
    """One thread that runs the newest job of each channel; an older job still waiting for
    the thread is replaced (``superseded``), so a slow JPEG encoder never builds a queue
    and never holds up the executor that receives the pipeline's messages."""

    def __init__(self, on_error: Callable[[str, Exception], None]):
        self.drops: Counter[str] = Counter()
        self.forwarded: Counter[str] = Counter()
        self._encode_ms: deque[float] = deque(maxlen=300)
        self._on_error = on_error
        self._jobs: OrderedDict[str, Callable[[], None]] = OrderedDict()
        self._cond = threading.Condition()
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="sac_view_encode", daemon=True)
        self._thread.start()

    def put(self, key: str, job: Callable[[], None]) -> None:
        with self._cond:
            if key in self._jobs:
                self.drops["superseded"] += 1
                del self._jobs[key]  # the newest goes to the back of the line
            self._jobs[key] = job
            self._cond.notify()

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and self._running:
                    self._cond.wait(0.5)
                if not self._running:
                    return
                key, job = self._jobs.popitem(last=False)
            start = time.perf_counter()
            try:
                job()
            except Exception as exc:  # a bad frame must not stop the view
                self._on_error(key, exc)
                continue
            self._encode_ms.append((time.perf_counter() - start) * 1e3)
            self.forwarded[key] += 1

    def encode_ms(self) -> tuple[float | None, float | None]:
        """p50 and p99 of the recent jobs (decode + JPEG + log), ms."""
        samples = list(self._encode_ms)
        if not samples:
            return None, None
        return float(np.percentile(samples, 50)), float(np.percentile(samples, 99))

    def stop(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify()
        self._thread.join(timeout=5.0)


def view_stats(worker: EncodeWorker, forwarded: Counter, drops: Counter,
               subscribed: list[str]) -> dict:
    """The /sac_view/stats message: frames forwarded per channel, drops by reason."""
    p50, p99 = worker.encode_ms()
    # dict() copies in C, under the GIL: the encode thread may add a key meanwhile.
    return {"forwarded": dict(Counter(dict(forwarded)) + Counter(dict(worker.forwarded))),
            "drops": dict(Counter(dict(drops)) + Counter(dict(worker.drops))),
            "jpeg_ms_p50": p50, "jpeg_ms_p99": p99, "subscribed": sorted(subscribed)}


# ------------------------------------------------------------------ the Foxglove layout
PLOTS = (  # (title, [(stats role, field, label suffix)])
    ("kB per frame", [("sensor_stats", "kbytes_per_frame", "sensor")]),
    ("Mbit/s", [("sensor_stats", "mbits_per_second", "sensor")]),
    ("latency p99, ms", [("sensor_stats", "latency_p99_ms", "sensor (encode)"),
                         ("ecu_stats", "latency_p99_ms", "ECU (camera -> image)")]),
    ("fps", [("sensor_stats", "fps", "sensor"), ("ecu_stats", "fps", "ECU"),
             ("perception_stats", "fps", "perception")]),
    ("perception: reconstructed vs original", [("perception_stats", "miou", "mIoU"),
                                               ("perception_stats", "iiou", "iIoU")]),
)
IMAGE_PANELS = (("original", "original"), ("reconstruction", "reconstruction"),
                ("roi_overlay", "ROI mask overlay"), ("video", "compressed stream"))


def build_layout(cameras: list[str]) -> dict:
    """The Foxglove layout for these cameras: per camera a row of Image panels (original,
    reconstruction, ROI overlay, the compressed stream) over a row of Plot panels."""
    import foxglove.layouts as fl

    plan = channel_plan(cameras)
    rows = []
    for camera in cameras:
        topic = {s.role: s.topic for s in plan if s.camera == camera}
        name = f"/{camera.strip('/')}" if camera.strip("/") else "/"
        images = [fl.SplitItem(content=fl.ImagePanel(
            title=f"{name} {title}",
            config=fl.ImageConfig(image_mode=fl.ImageModeConfig(image_topic=topic[role]))))
            for role, title in IMAGE_PANELS]
        plots = [fl.SplitItem(content=fl.PlotPanel(title=f"{name} {title}", config=fl.PlotConfig(
            paths=[fl.PlotSeries(value=f"{topic[role]}.{field}", label=label)
                   for role, field, label in series],
            show_legend=True)))
            for title, series in PLOTS]
        rows.append(fl.SplitItem(content=fl.SplitContainer(direction="column", items=[
            fl.SplitItem(proportion=3, content=fl.SplitContainer(direction="row", items=images)),
            fl.SplitItem(proportion=2, content=fl.SplitContainer(direction="row", items=plots)),
        ])))
    layout = fl.Layout(content=fl.SplitContainer(direction="column", items=rows))
    return json.loads(layout.to_json())


def layout_topics(layout: dict) -> set[str]:
    """Every topic a layout names: Image panels' topics and Plot series' message paths."""
    found: set[str] = set()

    def walk(node) -> None:
        if isinstance(node, dict):
            if "imageTopic" in node:
                found.add(node["imageTopic"])
            if node.get("panelType") == "Plot":
                for series in node["config"].get("paths", []):
                    found.add(series["value"].rsplit(".", 1)[0])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(layout)
    return found
