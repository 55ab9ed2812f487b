"""Raw camera buffers (sensor_msgs/Image layout) <-> RGB arrays, without ROS.

Supports rgb8, bgr8, rgba8, bgra8, mono8, mono16 and the 4:2:2 variants
(yuv422 / uyvy = UYVY, yuv422_yuy2 / yuyv = YUYV). Row padding (``step``) is
respected. Anything else raises SacError naming the encoding.
"""

from __future__ import annotations

import av
import numpy as np

from sac_ros.core.errors import SacError

CHANNELS = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "mono16": 2,
            "yuv422": 2, "uyvy": 2, "yuv422_yuy2": 2, "yuyv": 2}
SUPPORTED_ENCODINGS = tuple(CHANNELS)


def buffer_to_rgb(data, width: int, height: int, step: int, encoding: str,
                  big_endian: bool = False) -> np.ndarray:
    """A (height x width x 3) uint8 RGB view or copy of an image buffer."""
    encoding = encoding.lower()
    if encoding not in CHANNELS:
        raise SacError(f"unsupported image encoding '{encoding}'; supported: "
                       f"{', '.join(SUPPORTED_ENCODINGS)}")
    if width <= 0 or height <= 0:
        raise SacError(f"image size {width}x{height} is empty")
    bytes_per_pixel = CHANNELS[encoding]
    row_bytes = width * bytes_per_pixel
    if step < row_bytes:
        raise SacError(f"image step {step} is smaller than a {encoding} row ({row_bytes} bytes)")
    buf = np.frombuffer(data, dtype=np.uint8)
    if buf.size < step * (height - 1) + row_bytes:
        raise SacError(f"image data has {buf.size} bytes, a {width}x{height} {encoding} "
                       f"image with step {step} needs {step * height}")
    rows = np.lib.stride_tricks.as_strided(buf, shape=(height, row_bytes), strides=(step, 1))
    if encoding == "rgb8":
        return rows.reshape(height, width, 3)
    if encoding == "bgr8":
        return np.ascontiguousarray(rows.reshape(height, width, 3)[:, :, ::-1])
    if encoding == "rgba8":
        return np.ascontiguousarray(rows.reshape(height, width, 4)[:, :, :3])
    if encoding == "bgra8":
        return np.ascontiguousarray(rows.reshape(height, width, 4)[:, :, 2::-1])
    if encoding == "mono8":
        return np.repeat(rows[:, :, None], 3, axis=2)
    if encoding == "mono16":
        words = rows.reshape(height, width, 2)
        high = words[:, :, 0] if big_endian else words[:, :, 1]
        return np.repeat(high[:, :, None], 3, axis=2)
    if width % 2:
        raise SacError(f"{encoding} images need an even width, got {width}")
    pairs = rows.reshape(height, width, 2)
    if encoding in ("yuv422", "uyvy"):
        pairs = pairs[:, :, ::-1]  # UYVY -> YUYV byte order
    frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(pairs), format="yuyv422")
    return frame.reformat(format="rgb24").to_ndarray()
