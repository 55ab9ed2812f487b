"""sac_sensor: camera Image -> ROI mask -> dual-CRF encode -> SacPacket.

Frames are handed from the subscription callback to one worker thread through a
single slot: when the worker falls behind, the newest frame replaces the waiting
one and the replaced frame is counted as a drop. No queue can grow.
"""

from __future__ import annotations

import re
import time
from types import SimpleNamespace

import numpy as np
from rcl_interfaces.msg import SetParametersResult
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from sac_ros.config import load_core_config, rate_controller
from sac_ros.core.camera_info import CameraInfoMatcher, topic_beside
from sac_ros.core.codec import CODEC_ALIASES, PRESETS, EncoderSettings, canonical_codec
from sac_ros.core.errors import SacError
from sac_ros.core.mask import PolygonMaskSource, block_mask, expand_blocks
from sac_ros.core.sac import MAX_DIMENSION, MODES, SacEncoder
from sac_ros.core.wire import (
    INPUT_TOPIC,
    LINK_CAMERA_INFO_TOPIC,
    PACKET_TOPIC,
    ROI_MASK_TOPIC,
    SENSOR_STATS_TOPIC,
    stamp_ns,
)
from sac_ros.msg import SacPacket as SacPacketMsg
from sac_ros.msg import SacStats
from sac_ros.nodes.common import (
    QOS_CHOICES,
    LatestWorker,
    NodeStats,
    check_parameter_names,
    declare,
    declare_int_list,
    open_segmenter,
    publish_camera_info,
    qos,
    run_node,
)
from sac_ros.nodes.diagnostics import Diagnostics, declare_diagnostics
from sac_ros.nodes.messages import image_to_rgb, packet_to_msg, rgb_to_image
from sac_ros.nodes.task_coding import TaskCoding, declare_task_coding
from sac_ros.nodes.video import VideoPublisher, declare_sensor_video
from sac_ros.segmentation.propagation import CARRIES, PropagatingSegmenter


def polygon_parameter(points) -> list[float]:
    """(x, y) points as the flat [x0, y0, x1, y1, ...] list of the roi_polygon parameter
    (ROS parameters cannot nest)."""
    return [float(c) for point in points for c in point]


def polygon_points(flat) -> list[list[float]]:
    """The roi_polygon parameter's flat list as [x, y] points."""
    if len(flat) < 6 or len(flat) % 2:
        raise SacError("roi_polygon needs at least three x, y pairs")
    return np.asarray(flat, float).reshape(-1, 2).tolist()


class SensorNode(Node):
    def __init__(self):
        super().__init__("sac_sensor")
        start = self._declare_parameters()
        video = declare_sensor_video(self)
        thresholds = declare_diagnostics(self, bitrate=True, target_bitrate=self.target_bitrate)
        check_parameter_names(self)  # before any work: a misspelt name fails at once
        self._set_up_coding(start)
        self.stats = NodeStats()
        self._bad_problems: set[str] = set()
        self.packet_pub = self.create_publisher(SacPacketMsg, self.packet_topic,
                                                qos(start.reliability, start.depth))
        self.mask_pub = self.create_publisher(Image, ROI_MASK_TOPIC, qos(start.reliability, 2))
        # roi_qp / uniform: the one stream is standard video (dual_crf: the ECU re-encodes).
        self.video = (VideoPublisher(self, video.topic, start.reliability, start.depth)
                      if video.enabled and self.mode != "dual_crf" else None)
        self.stats_pub = self.create_publisher(SacStats, SENSOR_STATS_TOPIC, 10)
        # Depth >= a burst of frames: the callback is cheap and the worker counts what it
        # skips as 'superseded'; a depth of 2 let DDS overwrite frames uncounted while the
        # executor was busy (found replaying bags with perception on 2 cores).
        self.create_subscription(Image, self.input_topic, self._on_image,
                                 qos(start.reliability, start.input_depth))
        self.add_on_set_parameters_callback(self._on_parameters)
        self.create_timer(1.0, self._publish_stats)
        self._set_up_camera_info(start)
        self.diagnostics = Diagnostics(self, thresholds, self.stats.sample)
        self.diagnostics.add_relay("camera info", self.camera_info)
        self._worker = LatestWorker("sac_sensor_encode", self._process,
                                    lambda: self.stats.drop("superseded"), self._on_error)
        rate = (f"rate control to {self.target_bitrate / 1e6:g} Mbit/s" if self.target_bitrate
                else f"ROI CRF {self.roi_crf:g} / non-ROI {self.non_roi_crf:g}")
        self.get_logger().info(
            f"{self.mode} {self.settings.codec} {start.preset} {rate}, mask from "
            f"{self.segmenter.name if self.segmenter else self.mask_source}; "
            + (f"{self.task.describe()}; " if self.task.describe() else "")
            + f"{self.input_topic} -> {self.packet_topic}")

    def _declare_parameters(self) -> SimpleNamespace:
        """Declare every parameter; the read-only start-up ones are returned."""
        d = lambda *a, **k: declare(self, *a, **k)  # noqa: E731
        core = load_core_config()  # the ROI polygon's one definition; rate control
        codec = EncoderSettings()  # the codec defaults' one definition
        self.input_topic = d("input_topic", INPUT_TOPIC, "Camera Image topic.", read_only=True)
        self.packet_topic = d("packet_topic", PACKET_TOPIC, "SacPacket output topic.",
                              read_only=True)
        self.mode = d("mode", "dual_crf", "Coding mode.", choices=MODES, read_only=True)
        # The aliases sac eval takes (one table: core/codec.py), named as h264 or hevc.
        self.codec = canonical_codec(d("codec", codec.codec, "Codec.",
                                       choices=tuple(CODEC_ALIASES), read_only=True))
        preset = d("preset", codec.preset, "Encoder preset.", choices=PRESETS, read_only=True)
        gop = d("gop", codec.gop, "Key-frame interval (frames).", low=1, high=600,
                read_only=True)
        threads = d("threads", codec.threads, "Encoder threads per stream, 0 = automatic.",
                    low=0, high=64, read_only=True)
        fps = d("fps", codec.fps, "Nominal camera rate, for the encoders' rate model.", low=1,
                high=240, read_only=True)
        aq_mode = d("aq_mode", -1 if codec.aq_mode is None else codec.aq_mode, "Adaptive "
                    "quantisation mode (x264 0-3, x265 0-4); -1 = the preset's own (ultrafast: "
                    "off; roi_qp turns it on).", low=-1, high=4, read_only=True)
        self.roi_crf = d("roi_crf", 23.0, "CRF of the ROI stream; changes apply at the next "
                         "key frame.", low=0.0, high=51.0)
        self.non_roi_crf = d("non_roi_crf", 32.0, "CRF of the non-ROI stream; changes apply at "
                             "the next key frame.", low=0.0, high=51.0)
        self.target_bitrate = d("target_bitrate", 0.0, "Bit-rate budget of this camera in "
                                "bit/s, e.g. 4.0e6: the CRFs then follow config/sac.yaml's "
                                "ratecontrol section from GOP to GOP (roi_crf / non_roi_crf only "
                                "start it; non-ROI quality is shed first). 0 = fixed CRFs.",
                                low=0.0, high=1e10, read_only=True)
        self.mask_source = d("mask_source", "polygon", "Where the ROI comes from.",
                             choices=("polygon", "model"), read_only=True)
        polygon = d("roi_polygon", polygon_parameter(core.mask.roi_polygon), "Static ROI "
                    "polygon, flat [x0, y0, x1, y1, ...] normalised to 0-1; default: "
                    "config/sac.yaml mask.roi_polygon.", read_only=True)
        model = d("model", "default", "Segmentation model for mask_source=model: 'default' "
                  "(shipped ONNX) or a .onnx / .engine / .pt path.", read_only=True)
        backend = d("backend", "auto", "Segmentation backend.", read_only=True,
                    choices=("auto", "onnxruntime", "tensorrt", "torch"))
        segment_every = d("segment_every", core.mask.segment_every, "mask_source model: "
                          "segment every N-th frame and every key frame; in between the block "
                          "mask is carried along the block motion (1 = every frame). Default: "
                          "config/sac.yaml mask.segment_every.", low=1, high=1000,
                          read_only=True)
        mask_carry = d("mask_carry", core.mask.carry, "segment_every > 1: how the mask crosses "
                       "the frames in between: motion (block matching) or still (the last mask "
                       "held). Default: config/sac.yaml mask.carry.", choices=CARRIES,
                       read_only=True)
        self.publish_mask = d("publish_mask", False, "Also publish the block mask as mono8.")
        reliability = d("qos_reliability", "reliable", "QoS of all topics (sensor_data: ROS's "
                        "profile, best effort, depth 5 at most).", choices=QOS_CHOICES,
                        read_only=True)
        input_depth = d("input_depth", 30, "Camera frames the input subscription holds. "
                        "Deeper: every frame the node misses is counted (superseded); "
                        "shallower: lower latency when the CPU is saturated, but DDS may "
                        "overwrite frames uncounted.", low=1, high=1000, read_only=True)
        frame_size = d("frame_size", [0, 0], "Expected camera frame size [width, height]: the "
                       "segmenter and encoders are prepared for it at start-up so that the first "
                       "frames are not late; [0, 0] = prepare on the first frame. Frames of "
                       "another size still work.", read_only=True)
        depth = d("qos_depth", 30, "Packet publisher queue depth (keep >= one GOP).", low=1,
                  high=1000, read_only=True)
        non_roi = declare_int_list(self, "non_roi_classes", "Non-ROI class ids of the model's "
                                   "class map; unset = the papers' defaults for that map.")
        task = declare_task_coding(self, core)  # nonroi_filter(_strength), class_qp
        return SimpleNamespace(task=task,
            preset=preset, gop=gop, threads=threads, fps=fps, aq_mode=aq_mode, polygon=polygon,
            ratecontrol=core.ratecontrol, model=model, backend=backend, non_roi=non_roi,
            segment_every=segment_every, hysteresis_frames=core.mask.hysteresis_frames,
            mask_carry=mask_carry,
            reliability=reliability, input_depth=input_depth, frame_size=frame_size, depth=depth)

    def _set_up_coding(self, start: SimpleNamespace) -> None:
        """Encoder settings, the ROI source and, given a frame size, the warmed-up encoders."""
        self.settings = EncoderSettings(self.codec, start.preset, start.gop, start.threads,
                                        start.fps, None if start.aq_mode < 0 else start.aq_mode)
        self.mask = PolygonMaskSource(polygon_points(start.polygon))
        self.segmenter = None
        self.task = TaskCoding(start.task, self.mode, self.mask_source)
        if self.mask_source == "model":
            # Key frames and every segment_every-th frame segmented, the mask carried in
            # between; the config's hysteresis on every frame's mask.
            self.segmenter = PropagatingSegmenter(
                self.task.tap(open_segmenter(start.model, start.backend, start.non_roi)),
                start.segment_every,
                start.hysteresis_frames, carry=start.mask_carry)
        self.encoder: SacEncoder | None = None
        self.rate = None
        self._rate_section = start.ratecontrol if self.target_bitrate else None
        self._rate_warned: str | None = None
        size = start.frame_size
        if len(size) != 2 or min(size) < 0 or max(size) > 16384:
            raise SacError(f"frame_size {list(size)} must be [width, height] in 0-16384")
        if min(size) > 0:
            self._prepare(int(size[0]), int(size[1]), warm_up=True)

    def _set_up_camera_info(self, start: SimpleNamespace) -> None:
        """The camera's CameraInfo beside its input (image_transport's convention), forwarded
        with each encoded frame under the frame's header (core/camera_info.py)."""
        self.camera_info = CameraInfoMatcher()
        self.info_pub = self.create_publisher(CameraInfo, LINK_CAMERA_INFO_TOPIC,
                                              qos(start.reliability, start.depth))
        self.create_subscription(CameraInfo, topic_beside(self.input_topic),
                                 lambda m: self.camera_info.add(stamp_ns(m.header), m),
                                 qos(start.reliability, 10))

    def _forward_camera_info(self, header, width: int, height: int) -> None:
        info = self.camera_info.match(stamp_ns(header), width, height)
        if info is not None:
            publish_camera_info(self.info_pub, info, header, self.camera_info.drops)

    # ------------------------------------------------------------- parameters
    def _on_parameters(self, params) -> SetParametersResult:
        updates = {p.name: p.value for p in params}
        if self.target_bitrate and ("roi_crf" in updates or "non_roi_crf" in updates):
            return SetParametersResult(successful=False, reason="the rate controller sets the "
                                       "CRFs while target_bitrate > 0")
        roi = float(updates.get("roi_crf", self.roi_crf))
        non = float(updates.get("non_roi_crf", self.non_roi_crf))
        for name, value in (("roi_crf", roi), ("non_roi_crf", non)):
            if not 0.0 <= value <= 51.0:
                return SetParametersResult(successful=False, reason=f"{name} must be in 0-51")
        self.roi_crf, self.non_roi_crf = roi, non
        self.publish_mask = bool(updates.get("publish_mask", self.publish_mask))
        if self.encoder is not None and ("roi_crf" in updates or "non_roi_crf" in updates):
            self.encoder.set_crfs(roi, non)
            self.get_logger().info(f"CRFs {roi:g} / {non:g} from the next key frame")
        return SetParametersResult(successful=True)

    # ------------------------------------------------------------- frames
    def _on_image(self, msg: Image) -> None:
        self.stats.received += 1
        self._worker.put(msg)

    def _on_error(self, msg: Image, exc: Exception) -> None:
        if isinstance(exc, SacError):
            self.stats.drop("bad_image")
            # One log per problem, not per frame: the message without its numbers (sizes).
            problem = re.sub(r"\d+", "#", str(exc))
            if problem not in self._bad_problems:
                self._bad_problems.add(problem)
                self.get_logger().error(f"dropping frames: {exc}")
        else:
            self.stats.drop("error")
            self.get_logger().error(f"frame failed: {exc!r}", throttle_duration_sec=5.0)

    def _process(self, msg: Image) -> None:
        if msg.width > MAX_DIMENSION or msg.height > MAX_DIMENSION:  # before any allocation
            raise SacError(f"image size {msg.width}x{msg.height} is over the "
                           f"{MAX_DIMENSION}x{MAX_DIMENSION} limit")
        rgb = image_to_rgb(msg)
        height, width = rgb.shape[:2]
        if self.encoder is None or (self.encoder.layout.width,
                                    self.encoder.layout.height) != (width, height):
            self._prepare(width, height)
        start = time.perf_counter()
        if self.segmenter is not None:
            blocks = self.segmenter.block_roi(rgb, key_frame=self.encoder.next_is_key)
        else:
            blocks = self._static_blocks
        segmentation_ms = (time.perf_counter() - start) * 1e3
        packet = self.encoder.encode(rgb, blocks, self.task.offsets(rgb, blocks))
        packet.segmentation_ms = segmentation_ms
        if self.rate is not None:
            self._control_rate(packet)
        self.packet_pub.publish(packet_to_msg(packet, msg.header))
        latency = (self.get_clock().now().nanoseconds - stamp_ns(msg.header)) / 1e6
        self.stats.done(packet.num_bytes, latency)
        self._forward_camera_info(msg.header, width, height)
        if self.video is not None:  # after the packet's latency: the video is an extra
            self.video.offer(msg.header, packet.roi.data, packet.roi.codec)
        if self.publish_mask:
            mono = expand_blocks(blocks, height, width).astype(np.uint8) * 255
            self.mask_pub.publish(rgb_to_image(mono, msg.header))

    def _control_rate(self, packet) -> None:
        decision = self.rate.observe(packet)
        if decision is not None:
            decision.apply_to(self.encoder)  # from the next key frame
            self.roi_crf, self.non_roi_crf = decision.roi_crf, decision.non_roi_crf
        if self.rate.warning and self.rate.warning != self._rate_warned:
            self._rate_warned = self.rate.warning
            self.get_logger().warning(self.rate.warning)

    def _prepare(self, width: int, height: int, warm_up: bool = False) -> None:
        """Encoders and the static mask for one frame size; optionally warm the segmenter."""
        if self.encoder is not None:
            self.encoder.close()
        self.encoder = SacEncoder(width, height, self.roi_crf, self.non_roi_crf, self.settings,
                                  self.mode, prefilter=self.task.prefilter)
        if self._rate_section is not None:
            self.rate = rate_controller(self._rate_section, self.target_bitrate,
                                        self.settings.fps, self.settings.gop, self.mode, width,
                                        height, self.encoder.layout.block_size)
            self.rate.decision.apply_to(self.encoder)
        grey = np.full((height, width, 3), 128, np.uint8)
        # The static polygon's block mask depends only on the frame size.
        self._static_blocks = block_mask(self.mask.roi_pixels(0, grey),
                                         self.encoder.layout.block_size)
        if warm_up and self.segmenter is not None:
            # The first inferences at a new shape allocate and plan: 50-100 ms on CPU.
            start = time.perf_counter()
            for _ in range(2):
                self.segmenter.block_roi(grey)
            self.segmenter.reset()  # the grey frames are no history to carry
            self.get_logger().info(f"segmenter warmed up for {width}x{height} in "
                                   f"{(time.perf_counter() - start) * 1e3:.0f} ms")

    def _publish_stats(self) -> None:
        header = Header(stamp=self.get_clock().now().to_msg())
        self.stats_pub.publish(self.stats.to_msg(self.get_fully_qualified_name(), header,
                                                 self.packet_pub.get_subscription_count()))

    def close(self) -> None:
        self._worker.stop()
        if self.segmenter is not None:
            self.segmenter.close()
        if self.encoder is not None:
            self.encoder.close()


def main(args=None) -> int:
    return run_node("sac_sensor", SensorNode, args)


if __name__ == "__main__":
    raise SystemExit(main())
