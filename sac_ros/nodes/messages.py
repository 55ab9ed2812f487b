"""rclpy messages <-> arrays and core packets, for the nodes (and the tests that drive them)."""

from __future__ import annotations

import numpy as np
from sensor_msgs.msg import Image

from sac_ros.core import wire
from sac_ros.core.imageconv import buffer_to_rgb
from sac_ros.core.sac import SacPacket
from sac_ros.msg import EncodedStream as EncodedStreamMsg
from sac_ros.msg import SacPacket as SacPacketMsg

try:  # cv_bridge when the ROS install has it; the package's own conversion otherwise
    from cv_bridge import CvBridge
    _BRIDGE = CvBridge()
except ImportError:  # pragma: no cover - depends on the install
    _BRIDGE = None


def image_to_rgb(msg: Image) -> np.ndarray:
    """RGB array of an Image message (rgb8, bgr8, mono8, yuv422 variants, ...)."""
    if _BRIDGE is not None and msg.encoding in ("rgb8", "bgr8", "mono8", "rgba8", "bgra8"):
        return _BRIDGE.imgmsg_to_cv2(msg, desired_encoding="rgb8")
    return buffer_to_rgb(msg.data, msg.width, msg.height, msg.step, msg.encoding,
                         bool(msg.is_bigendian))


def rgb_to_image(pixels: np.ndarray, header) -> Image:
    """An rgb8 Image from H x W x 3, or mono8 from H x W, uint8."""
    msg = Image()
    msg.header = header
    msg.height, msg.width = int(pixels.shape[0]), int(pixels.shape[1])
    msg.encoding = "rgb8" if pixels.ndim == 3 else "mono8"
    msg.is_bigendian = 0
    msg.step = msg.width * (3 if pixels.ndim == 3 else 1)
    msg.data = np.ascontiguousarray(pixels).tobytes()
    return msg


def packet_to_msg(packet: SacPacket, header) -> SacPacketMsg:
    """The E2E-protected rclpy message of a core packet (the wire module builds it)."""
    return wire.packet_to_msg(packet, header, SacPacketMsg, EncodedStreamMsg)
