"""``sac bag convert``: Cityscapes / KITTI-STEP sequences or a video -> a ROS 2 bag.

ROS-free: messages are built and serialised with rosbags' Kilted typestore, so the
CDR is what rclpy publishes. Per frame the bag holds

- ``sensor_msgs/Image`` rgb8 on the image topic,
- the ground-truth label, where the dataset has one, as a ``sensor_msgs/Image`` with the
  same header on the labels topic: Cityscapes ``labelIds`` as mono8, KITTI-STEP panoptic
  maps as rgb8 (semantic id in R, instance id in G*256+B), unchanged,
- ``sensor_msgs/CameraInfo`` when a calibration is given.

Stamps (header and bag time are equal) come from the frame numbers: within a sequence,
frame n is at ``(n - first) / rate``; sequences follow each other one second apart,
from ``start_time``. Videos use frame index / frame rate.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image as PILImage

from sac_ros import datasets
from sac_ros.bags.bagio import BagWriter, bag_size
from sac_ros.bags.calibration import Calibration, load_calibration
from sac_ros.bags.types import CAMERA_INFO, IMAGE
from sac_ros.core.errors import SacError
from sac_ros.core.wire import CAMERA_INFO_TOPIC, INPUT_TOPIC, LABELS_TOPIC, topic_in

SEQUENCE_GAP_NS = 1_000_000_000


@dataclass
class ConvertOptions:
    topic: str = topic_in("front", INPUT_TOPIC)
    labels_topic: str = topic_in("front", LABELS_TOPIC)
    camera_info_topic: str = topic_in("front", CAMERA_INFO_TOPIC)
    frame_id: str = "camera"
    size: tuple[int, int] | None = None      # (width, height)
    storage: str = "mcap"
    overwrite: bool = False
    compress: bool = False
    max_frames: int | None = None
    start_time_ns: int = 0
    calibration: str | None = None
    fps: float | None = None                 # override the source's rate
    labels: bool = True


@dataclass
class ConvertResult:
    path: Path
    kind: str
    source: str
    frames: int = 0
    labels: int = 0
    camera_infos: int = 0
    width: int = 0
    height: int = 0
    source_width: int = 0
    source_height: int = 0
    rate_hz: float = 0.0
    first_stamp_ns: int = 0
    last_stamp_ns: int = 0
    sequences: list[dict] = field(default_factory=list)
    topics: dict[str, int] = field(default_factory=dict)
    bytes: int = 0
    seconds: float = 0.0

    @property
    def duration_s(self) -> float:
        return (self.last_stamp_ns - self.first_stamp_ns) / 1e9

    def summary(self) -> str:
        lines = [
            f"wrote {self.path} ({self.bytes / 1e6:.1f} MB) in {self.seconds:.1f} s",
            f"  source   {self.kind} {self.source}: {self.frames} frames in "
            f"{len(self.sequences) or 1} sequence(s) at {self.rate_hz:g} Hz, "
            f"{self.source_width}x{self.source_height}"
            + (f" resized to {self.width}x{self.height}"
               if (self.width, self.height) != (self.source_width, self.source_height) else ""),
            f"  time     {self.duration_s:.3f} s of bag time, stamps "
            f"{self.first_stamp_ns / 1e9:.6f} .. {self.last_stamp_ns / 1e9:.6f} s",
        ]
        for topic, count in self.topics.items():
            lines.append(f"  topic    {topic}: {count} messages")
        if self.seconds > 0:
            lines.append(f"  speed    {self.frames / self.seconds:.1f} frames/s")
        return "\n".join(lines)


class MessageFactory:
    """rosbags message objects for one bag (built from the shared typestore)."""

    def __init__(self, store, frame_id: str):
        self.store = store
        self.types = store.types
        self.frame_id = frame_id

    def header(self, stamp_ns: int):
        time_type = self.types["builtin_interfaces/msg/Time"]
        return self.types["std_msgs/msg/Header"](
            stamp=time_type(sec=int(stamp_ns // 1_000_000_000),
                            nanosec=int(stamp_ns % 1_000_000_000)),
            frame_id=self.frame_id)

    def image(self, pixels: np.ndarray, stamp_ns: int) -> bytes:
        height, width = pixels.shape[:2]
        channels = 1 if pixels.ndim == 2 else pixels.shape[2]
        encoding = {1: "mono8", 3: "rgb8"}[channels]
        msg = self.types[IMAGE](
            header=self.header(stamp_ns), height=height, width=width, encoding=encoding,
            is_bigendian=0, step=width * channels,
            data=np.ascontiguousarray(pixels, dtype=np.uint8).reshape(-1))
        return self.store.serialize_cdr(msg, IMAGE)

    def camera_info(self, calib: Calibration, stamp_ns: int) -> bytes:
        roi = self.types["sensor_msgs/msg/RegionOfInterest"](
            x_offset=0, y_offset=0, height=0, width=0, do_rectify=False)
        msg = self.types[CAMERA_INFO](
            header=self.header(stamp_ns), height=calib.height, width=calib.width,
            distortion_model=calib.distortion_model, d=np.asarray(calib.d, np.float64),
            k=calib.k.astype(np.float64).reshape(-1), r=calib.r.astype(np.float64).reshape(-1),
            p=calib.p.astype(np.float64).reshape(-1), binning_x=0, binning_y=0, roi=roi)
        return self.store.serialize_cdr(msg, CAMERA_INFO)


def _resize(pixels: np.ndarray, size: tuple[int, int] | None, nearest: bool) -> np.ndarray:
    if size is None or (pixels.shape[1], pixels.shape[0]) == size:
        return pixels
    method = PILImage.Resampling.NEAREST if nearest else PILImage.Resampling.BILINEAR
    return np.asarray(PILImage.fromarray(pixels).resize(size, method))


def _stamps(source: datasets.Source, start_ns: int, rate: float, max_frames: int | None):
    """Stamp of every frame to convert, from the frame numbers."""
    if source.kind == "video":
        return None
    stamps, base, count = [], start_ns, 0
    for seq in source.sequences:
        first = seq.frames[0].number
        seq_stamps = [base + round((f.number - first) * 1e9 / rate) for f in seq.frames]
        stamps.append(seq_stamps)
        base = seq_stamps[-1] + SEQUENCE_GAP_NS
        count += len(seq_stamps)
        if max_frames is not None and count >= max_frames:
            break
    return stamps


def convert(spec: str, output: str | Path, options: ConvertOptions,
            progress: Callable[[int, int | None], None] | None = None) -> ConvertResult:
    """Write the bag; ``progress(done, total)`` after every frame."""
    started = time.perf_counter()
    _check_options(options)
    source = datasets.find_source(spec, mixed_sizes_ok=options.size is not None)
    calibration = load_calibration(options.calibration) if options.calibration else None
    rate = options.fps or source.rate_hz
    total = source.num_frames if source.kind != "video" else None
    if options.max_frames is not None:
        total = min(total, options.max_frames) if total is not None else options.max_frames
    stamps = _stamps(source, options.start_time_ns, rate, options.max_frames)
    flat = [s for seq in stamps for s in seq] if stamps is not None else None
    result = ConvertResult(Path(output), source.kind, str(source.path), rate_hz=rate)
    label_layout = source.label_layout if options.labels else None

    with BagWriter(output, options.storage, options.overwrite, options.compress) as bag:
        factory = MessageFactory(bag.store, options.frame_id)
        info = None
        index = -1
        for index, (_seq, frame, rgb) in enumerate(datasets.iter_source(source, total)):
            stamp = flat[index] if flat is not None else (
                options.start_time_ns + round(index * 1e9 / rate))
            if index == 0:
                result.source_height, result.source_width = rgb.shape[:2]
                result.first_stamp_ns = stamp
                target = options.size or (rgb.shape[1], rgb.shape[0])
                result.width, result.height = target
                if calibration is not None:
                    info = calibration.scaled(rgb.shape[1], rgb.shape[0], *target)
            elif source.kind == "video" and (rgb.shape[1], rgb.shape[0]) != (
                    result.source_width, result.source_height) and options.size is None:
                raise SacError(f"mixed image sizes in {source.path}: frame {index} is "
                               f"{rgb.shape[1]}x{rgb.shape[0]}, the first is "
                               f"{result.source_width}x{result.source_height}")
            pixels = _resize(rgb, options.size, nearest=False)
            bag.write(options.topic, IMAGE, stamp, factory.image(pixels, stamp))
            if label_layout and frame is not None and frame.label is not None:
                label = _resize(datasets.read_label(frame.label, label_layout), options.size,
                                nearest=True)
                bag.write(options.labels_topic, IMAGE, stamp, factory.image(label, stamp))
            if info is not None:
                bag.write(options.camera_info_topic, CAMERA_INFO, stamp,
                          factory.camera_info(info, stamp))
            result.last_stamp_ns = stamp
            if progress is not None:
                progress(index + 1, total)
        if index < 0:
            raise SacError(f"{source.path} holds no frames")
        result.frames = index + 1
        result.sequences = _sequence_records(source, stamps, result.frames)
        bag.set_custom_data("sac_ros.source", _source_data(source, rate, label_layout, result,
                                                           options))
        result.topics = dict(bag.counts)
    result.labels = result.topics.get(options.labels_topic, 0)
    result.camera_infos = result.topics.get(options.camera_info_topic, 0)
    result.bytes = bag_size(result.path)
    result.seconds = time.perf_counter() - started
    return result


def _check_options(options: ConvertOptions) -> None:
    if options.max_frames is not None and options.max_frames < 1:
        raise SacError("--max-frames must be at least 1")
    if options.fps is not None and not 0 < options.fps <= 1000:
        raise SacError("--fps must be in (0, 1000]")
    topics = [options.topic, options.labels_topic, options.camera_info_topic]
    for topic in topics:
        if not topic.startswith("/") or " " in topic or topic.endswith("/"):
            raise SacError(f"topic '{topic}' must be an absolute ROS name like /front/image_raw")
    if len(set(topics)) != len(topics):
        raise SacError("the image, labels and camera_info topics must differ")


def _source_data(source: datasets.Source, rate: float, label_layout: str | None,
                 result: ConvertResult, options: ConvertOptions) -> str:
    """The bag's ``sac_ros.source`` metadata: where the frames came from and how."""
    return json.dumps({
        "kind": source.kind, "input": str(source.path), "rate_hz": rate,
        "label_layout": label_layout, "source_size": [result.source_width,
                                                      result.source_height],
        "size": [result.width, result.height], "sequences": result.sequences,
        "topics": {"image": options.topic, "labels": options.labels_topic,
                   "camera_info": options.camera_info_topic}})


def _sequence_records(source: datasets.Source, stamps, frames: int) -> list[dict]:
    if stamps is None:
        return []
    records, left = [], frames
    for seq, seq_stamps in zip(source.sequences, stamps, strict=False):
        count = min(left, len(seq.frames))
        if count <= 0:
            break
        records.append({"name": seq.name, "first_frame": seq.frames[0].number,
                        "frames": count, "first_stamp_ns": seq_stamps[0],
                        "labels": sum(f.label is not None for f in seq.frames[:count])})
        left -= count
    return records
