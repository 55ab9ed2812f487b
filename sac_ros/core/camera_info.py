"""CameraInfo through the pipeline, ROS-free: bounds checks, and pairing with frames by stamp.

The sensor forwards the camera's calibration with every encoded frame
(``wire.LINK_CAMERA_INFO_TOPIC``, the frame's header); the ECU republishes it beside each
reconstructed image (``wire.OUTPUT_CAMERA_INFO_TOPIC``) with exactly that image's header,
so that image_proc-style consumers downstream pair them as they would a camera's.

Matching rule at the sensor (``CameraInfoMatcher``): the info stamped like the frame if it
has arrived, else the newest info received. Cameras publish CameraInfo with every frame,
at a lower rate, or once (latched); the calibration rarely changes, so the newest one is
right in all three cases, and waiting for an exact partner would hold frames back for
cameras that never send one.

A "message" is any object with ``sensor_msgs/CameraInfo``'s fields. Everything that
arrives is hostile until checked: oversized arrays or strings, non-finite numbers, a size
that is not the frame's, are dropped and counted by reason, never raised.
"""

from __future__ import annotations

import math
import posixpath
import threading
from collections import Counter

from sac_ros.core.sac import MAX_DIMENSION
from sac_ros.core.stamps import BoundedStampMap
from sac_ros.core.wire import CAMERA_INFO_TOPIC

MAX_DISTORTION = 16      # coefficients: plumb_bob 5, rational_polynomial 8, thin prism 12
MAX_MODEL_CHARS = 64
MAX_FRAME_ID = 256
KEEP = 60                # infos / frames waiting for their partner, per map
FIXED = {"k": 9, "r": 9, "p": 12}
MALFORMED = "malformed"
SIZE_MISMATCH = "size_mismatch"
UNMATCHED = "unmatched"  # the ECU: an info whose image never came, or came without it


def topic_beside(image_topic: str) -> str:
    """The CameraInfo topic beside an image topic (image_transport's convention):
    ``/front/image_raw`` -> ``/front/camera_info``, ``image_raw`` -> ``camera_info``."""
    return posixpath.join(posixpath.dirname(image_topic), CAMERA_INFO_TOPIC)


def check(msg) -> str | None:
    """Why the message cannot be used whatever the frame (a drop reason), or None."""
    try:
        model, d = msg.distortion_model, msg.d
        if not isinstance(model, str) or len(model) > MAX_MODEL_CHARS:
            return MALFORMED
        if not isinstance(msg.header.frame_id, str) or len(msg.header.frame_id) > MAX_FRAME_ID:
            return MALFORMED
        if len(d) > MAX_DISTORTION:
            return MALFORMED
        arrays = [d] + [getattr(msg, name) for name in FIXED]
        if any(len(getattr(msg, name)) != n for name, n in FIXED.items()):
            return MALFORMED
        if not all(math.isfinite(float(v)) for a in arrays for v in a):
            return MALFORMED
        width, height = int(msg.width), int(msg.height)
        if not (0 < width <= MAX_DIMENSION and 0 < height <= MAX_DIMENSION):
            return MALFORMED
        roi = msg.roi
        if (int(roi.x_offset) + int(roi.width) > width
                or int(roi.y_offset) + int(roi.height) > height):
            return MALFORMED
        if not (0 <= int(msg.binning_x) <= MAX_DIMENSION
                and 0 <= int(msg.binning_y) <= MAX_DIMENSION):
            return MALFORMED
    except (AttributeError, TypeError, ValueError, OverflowError):
        return MALFORMED
    return None


def fits(msg, width: int, height: int) -> bool:
    """The info describes a frame of this size."""
    return (int(msg.width), int(msg.height)) == (int(width), int(height))


class CameraInfoMatcher:
    """The sensor's side: infos as they arrive (any thread), the one for a frame."""

    def __init__(self, keep: int = KEEP):
        self._by_stamp: BoundedStampMap[object] = BoundedStampMap(keep)
        self._latest = None
        self._lock = threading.Lock()
        self.received = 0
        self.forwarded = 0
        self.drops: Counter[str] = Counter()

    def add(self, stamp_ns: int, msg) -> bool:
        """Keep a checked info; False (and counted) when it is dropped."""
        self.received += 1
        reason = check(msg)
        if reason:
            self.drops[reason] += 1
            return False
        with self._lock:
            self._by_stamp.put(stamp_ns, msg)
            self._latest = msg
        return True

    def match(self, stamp_ns: int, width: int, height: int):
        """The info for a frame (exact stamp, else the newest), or None; a size mismatch is
        counted and gives None."""
        with self._lock:
            msg = self._by_stamp.pop(stamp_ns)
            msg = self._latest if msg is None else msg
            self._by_stamp.prune_before(stamp_ns)  # older frames are gone by now
        if msg is None:
            return None
        if not fits(msg, width, height):
            self.drops[SIZE_MISMATCH] += 1
            return None
        self.forwarded += 1
        return msg


class CameraInfoPairing:
    """The ECU's side: infos and published images by stamp, whichever arrives first.

    ``on_image`` returns the info to publish after the image (it came first), or keeps
    the image's header until ``on_info`` brings it. Both maps are bounded.
    """

    def __init__(self, keep: int = KEEP):
        self._infos: BoundedStampMap[object] = BoundedStampMap(keep)
        self._images: BoundedStampMap[tuple[object, int, int]] = BoundedStampMap(keep)
        self.received = 0
        self.forwarded = 0
        self.drops: Counter[str] = Counter()

    def on_info(self, stamp_ns: int, msg):
        """An info from the link: the (info, image header) pair to publish now, or None."""
        self.received += 1
        reason = check(msg)
        if reason:
            self.drops[reason] += 1
            return None
        waiting = self._images.pop(stamp_ns)
        if waiting is None:
            self._unmatched(len(self._infos.put(stamp_ns, msg)))
            return None
        return self._paired(msg, *waiting)

    def on_image(self, stamp_ns: int, header, width: int, height: int):
        """An image just published: the (info, header) pair to publish now, or None."""
        msg = self._infos.pop(stamp_ns)
        # Images come out in order: an info stamped earlier lost its image.
        before = len(self._infos)
        self._infos.prune_before(stamp_ns)
        self._unmatched(before - len(self._infos))
        if msg is None:
            self._images.put(stamp_ns, (header, width, height))
            return None
        return self._paired(msg, header, width, height)

    def _unmatched(self, count: int) -> None:
        if count:
            self.drops[UNMATCHED] += count

    def _paired(self, msg, header, width: int, height: int):
        if not fits(msg, width, height):
            self.drops[SIZE_MISMATCH] += 1
            return None
        self.forwarded += 1
        return msg, header
