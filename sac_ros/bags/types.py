"""The one place where sac_ros's message types meet ``rosbags``.

``typestore()`` is rosbags' ROS 2 Kilted store plus the custom types, registered
from the package's own ``msg/*.msg`` files (the source tree's, or the installed
``share/sac_ros/msg``), so bags carry the same definitions and RIHS01 hashes as
the rclpy messages; and ``foxglove_msgs/msg/CompressedVideo`` (the nodes' standard video
out), which rosbags' store lacks: its four fields are its definition (and its hash).
"""

from __future__ import annotations

import os
import sys
from functools import lru_cache
from pathlib import Path

from sac_ros.core.errors import SacError

PACKAGE = "sac_ros"
IMAGE = "sensor_msgs/msg/Image"
CAMERA_INFO = "sensor_msgs/msg/CameraInfo"
CLOCK = "rosgraph_msgs/msg/Clock"
PACKET = "sac_ros/msg/SacPacket"
SAC_STATS = "sac_ros/msg/SacStats"
PERCEPTION_STATS = "sac_ros/msg/PerceptionStats"
COMPRESSED_VIDEO = "foxglove_msgs/msg/CompressedVideo"
# Field for field upstream foxglove_msgs/msg/CompressedVideo.msg (comments left out).
COMPRESSED_VIDEO_DEFINITION = """\
builtin_interfaces/Time timestamp
string frame_id
uint8[] data
string format
"""


def msg_dir() -> Path:
    """The folder holding sac_ros's ``*.msg`` files."""
    source = Path(__file__).resolve().parent.parent.parent / "msg"
    if (source / "SacPacket.msg").is_file():
        return source
    for prefix in [sys.prefix, *os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)]:
        candidate = Path(prefix) / "share" / PACKAGE / "msg"
        if prefix and (candidate / "SacPacket.msg").is_file():
            return candidate
    raise SacError("cannot find sac_ros's msg/*.msg definitions (source tree or "
                   "share/sac_ros/msg)")


@lru_cache(maxsize=1)
def typestore():
    """rosbags' Kilted typestore with sac_ros/msg/* and CompressedVideo registered."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore

    store = get_typestore(Stores.ROS2_KILTED)
    types = dict(get_types_from_msg(COMPRESSED_VIDEO_DEFINITION, COMPRESSED_VIDEO))
    for path in sorted(msg_dir().glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(encoding="utf-8"),
                                        f"{PACKAGE}/msg/{path.stem}"))
    store.register(types)
    return store


def message_class(msgtype: str):
    """The rclpy (rosidl Python) class of ``pkg/msg/Type``, or None if it is not installed."""
    import importlib

    parts = msgtype.split("/")
    if len(parts) != 3:
        return None
    package, kind, name = parts
    try:
        module = importlib.import_module(f"{package}.{kind}")
    except ImportError:
        return None
    return getattr(module, name, None)
