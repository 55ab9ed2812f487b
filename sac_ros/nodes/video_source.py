"""sac_video_source: a camera stand-in that publishes a video or image folder as Images.

Frames are published at the source's frame rate (or ``fps``), stamped with the
node clock when sent. A bounded or looped run decodes one pass of the source
before publishing starts (up to ``preload_mb``), so that the stand-in's own
decoding does not compete for the CPU with the nodes it feeds, as a real
camera's would not. With ``wait_for_subscribers`` > 0 it waits until that many
subscribers are matched (discovery), so no frame is published into the void.
"""

from __future__ import annotations

import time

import av
import numpy as np
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from sac_ros.core.errors import SacError
from sac_ros.core.io import iter_frames, resolve_input, video_fps
from sac_ros.core.wire import INPUT_TOPIC
from sac_ros.nodes.common import QOS_CHOICES, NodeStats, check_parameter_names, declare, qos
from sac_ros.nodes.diagnostics import Diagnostics, declare_diagnostics
from sac_ros.nodes.messages import rgb_to_image


class VideoSourceNode(Node):
    def __init__(self):
        super().__init__("sac_video_source")
        d = lambda *a, **k: declare(self, *a, **k)  # noqa: E731
        self.source = d("input", "sample", "Video file, image folder, or sample[:clip].",
                        read_only=True)
        topic = d("topic", INPUT_TOPIC, "Image output topic.", read_only=True)
        self.frame_id = d("frame_id", "camera", "frame_id of the published images.",
                          read_only=True)
        fps = d("fps", 0.0, "Publish rate; 0 = the source's own rate.", low=0.0, high=1000.0,
                read_only=True)
        self.max_frames = d("max_frames", 0, "Stop after this many frames; 0 = whole source.",
                            low=0, high=10_000_000, read_only=True)
        self.loop = d("loop", False, "Restart at the end of the source.", read_only=True)
        self.width = d("width", 0, "Resize width; 0 = keep.", low=0, high=8192, read_only=True)
        self.height = d("height", 0, "Resize height; 0 = keep.", low=0, high=8192,
                        read_only=True)
        self.wait_for = d("wait_for_subscribers", 0, "Wait for this many subscribers before "
                          "publishing.", low=0, high=100, read_only=True)
        self.start_delay = d("start_delay", 1.0, "After the subscribers are matched, wait this "
                             "long before the first frame: a reader can match a new writer "
                             "later than the writer matches it, and frames sent before are "
                             "lost to it.", low=0.0, high=60.0, read_only=True)
        self.wait_timeout = d("wait_timeout", 30.0, "Give up waiting after this many seconds.",
                              low=0.0, high=3600.0, read_only=True)
        self.preload_mb = d("preload_mb", 2048, "Decode and resize up to this many MB of "
                            "frames before publishing starts, so that decoding the source does "
                            "not share the CPU with the pipeline it feeds (needs max_frames; "
                            "0 = decode while publishing).", low=0, high=65536, read_only=True)
        reliability = d("qos_reliability", "reliable", "QoS reliability (sensor_data: ROS's "
                        "profile, best effort, depth 5).", choices=QOS_CHOICES, read_only=True)
        thresholds = declare_diagnostics(self)
        check_parameter_names(self)
        self.path = resolve_input(self.source)
        self.fps = fps or video_fps(self.path)
        self.publisher = self.create_publisher(Image, topic, qos(reliability, 10))
        self.published = 0
        # It does not spin: the publishing loop ticks the diagnostics (frames sent as
        # "received", so the rate check watches the output rate).
        self.stats = NodeStats()
        self.diagnostics = Diagnostics(self, thresholds, self.stats.sample,
                                       rate_name="output rate", timer=False)

    def _one_pass(self):
        """Image messages of one pass of the source; the stamp is set when each is sent."""
        for rgb, _ in iter_frames(self.path):
            yield rgb_to_image(self._resize(rgb), Header(frame_id=self.frame_id))

    def _publishing_order(self, one_pass):
        """``max_frames`` messages (0 = all) from passes of ``one_pass()``, looping if asked."""
        count = 0
        while True:
            empty = True
            for image in one_pass():
                if self.max_frames and count >= self.max_frames:
                    return
                empty = False
                count += 1
                yield image
            if not self.loop or empty:
                return

    def _resize(self, rgb: np.ndarray) -> np.ndarray:
        if not self.width and not self.height:
            return rgb
        width = self.width or round(rgb.shape[1] * self.height / rgb.shape[0])
        height = self.height or round(rgb.shape[0] * self.width / rgb.shape[1])
        frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
        return frame.reformat(width=width, height=height).to_ndarray()

    def _preloaded(self):
        """One pass of the source decoded up front when it fits in preload_mb, else None.

        Without ``loop`` only ``max_frames`` of it are needed; a looped run cycles it.
        """
        if not self.preload_mb or not (self.max_frames or self.loop):
            return None
        images, total = [], 0
        for image in self._one_pass():
            if self.max_frames and len(images) >= self.max_frames:
                break
            total += len(image.data)
            if total > self.preload_mb * 1e6:
                self.get_logger().info(f"the source exceeds preload_mb={self.preload_mb}: "
                                       "decoding while publishing")
                return None
            images.append(image)
        return images

    def run(self) -> None:
        images = self._preloaded()
        deadline = time.monotonic() + self.wait_timeout
        while self.publisher.get_subscription_count() < self.wait_for:
            self.diagnostics.tick()
            if time.monotonic() > deadline:
                raise SacError(f"no {self.wait_for} subscriber(s) after {self.wait_timeout:g} s")
            time.sleep(0.05)
        if self.wait_for:
            time.sleep(self.start_delay)
        period = 1.0 / self.fps
        self.get_logger().info(f"publishing {self.path} at {self.fps:g} fps"
                               + (f" ({len(images)} frames preloaded"
                                  f"{', looped' if self.loop else ''})" if images else ""))
        next_time = time.monotonic()
        source = self._one_pass if images is None else lambda: images
        for image in self._publishing_order(source):
            self.diagnostics.tick()
            delay = next_time - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            next_time += period
            image.header.stamp = self.get_clock().now().to_msg()  # a looped frame: new stamp
            self.publisher.publish(image)
            self.published += 1
            self.stats.received += 1
            self.stats.done(len(image.data), None)
        self.get_logger().info(f"published {self.published} frames")


def main(args=None) -> int:
    import signal
    import sys

    import rclpy
    from rclpy.duration import Duration
    from rclpy.exceptions import ParameterException

    # The runner stops nodes with SIGTERM: leave the publishing loop as Ctrl-C does.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    rclpy.init(args=args)
    try:
        node = VideoSourceNode()
        node.run()
        # Let reliable transports deliver the last frames before the publisher goes.
        node.publisher.wait_for_all_acked(Duration(seconds=5.0))
        node.destroy_node()
    except (SacError, ParameterException) as exc:
        print(f"sac_video_source: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        pass
    except Exception:
        if rclpy.ok():
            raise  # stopped while starting: see run_node
    finally:
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
