"""The one owner of the SacPacket wire format: message <-> core packet, with E2E protection.

ROS-free: a "message" is any object with ``msg/SacPacket.msg``'s fields (rclpy's generated
class, or a rosbags dataclass read from a bag), so the ECU, the bag tools, the report and
the tests convert through the same code.

Everything from the network or a bag is hostile until checked here. ``packet_from_msg``
bounds every field before anything is allocated (frame size, block grid, mask length,
codec, CRF, stream count, payload size) and checks the end-to-end CRC, in the spirit of
AUTOSAR E2E: the sensor computes a CRC-32 over every field of the message (header
included) and the receiver drops a mismatch as ``corrupt``. A message recorded before the
checksum existed (an older bag) still converts, with the check reported as ``absent``.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from types import SimpleNamespace

from sac_ros.core.errors import PacketError
from sac_ros.core.sac import (
    MALFORMED,
    U64_MAX,
    EncodedStream,
    SacPacket,
    check_geometry,
    check_stream,
)

MAX_FRAME_ID = 256             # characters of header.frame_id

E2E_NONE = 0    # unprotected: a message from before the checksum (old bags)
E2E_CRC32 = 1   # e2e_crc is zlib's CRC-32 of the fields, see ``e2e_crc``
# Drop reasons of the wire check besides MALFORMED (the receiver adds its own).
CORRUPT = "corrupt"
UNPROTECTED = "unprotected"


# ------------------------------------------------------------------ topic names
# Each camera's topics, relative to its namespace (``topic_in`` makes them absolute).
# The nodes' topic parameters default to these; everything else names them from here.
INPUT_TOPIC = "image_raw"                  # the camera's frames (sensor input)
PACKET_TOPIC = "sac/packets"               # SacPacket, sensor -> ECU
IMAGE_TOPIC = "sac/image"                  # reconstructed frames, ECU -> perception
ROI_MASK_TOPIC = "sac/roi_mask"            # the sensor's block mask (mono8, optional)
SENSOR_STATS_TOPIC = "sac/sensor_stats"
ECU_STATS_TOPIC = "sac/ecu_stats"
PERCEPTION_STATS_TOPIC = "sac/perception_stats"
CLASS_MAP_TOPIC = "sac/perception/class_map"
OVERLAY_TOPIC = "sac/perception/overlay"
LABELS_TOPIC = "labels"                    # ground truth in converted and recorded bags
CAMERA_INFO_TOPIC = "camera_info"         # the camera's CameraInfo, beside image_raw
LINK_CAMERA_INFO_TOPIC = "sac/link/camera_info"  # CameraInfo per encoded frame, sensor -> ECU
OUTPUT_CAMERA_INFO_TOPIC = "sac/camera_info"     # beside sac/image, the image's stamp (ECU)
VIDEO_TOPIC = "sac/video"                  # foxglove_msgs/CompressedVideo (roi_qp / uniform
                                           # from the sensor; dual_crf re-encoded by the ECU)
MOTION_TOPIC = "sac/motion"                # SacMotion, per-block motion (ECU, optional)
DIAGNOSTICS_TOPIC = "/diagnostics"         # diagnostic_msgs/DiagnosticArray, every node


def topic_in(namespace: str, name: str) -> str:
    """The absolute topic ``name`` in a camera ``namespace`` ("/front", "front", "/" or "")."""
    prefix = namespace.strip("/")
    return f"/{prefix}/{name}" if prefix else f"/{name}"


@dataclass
class Received:
    """A checked packet with what the wire said about it."""

    packet: SacPacket
    stamp_ns: int
    e2e: str  # "ok" or "absent"


def saturate_u64(value: int) -> int:
    """Clamp a counter into a uint64 message field (a counter must never kill a publish)."""
    return min(max(int(value), 0), U64_MAX)


def _bytes_len(data) -> int:
    return len(data) if data is not None else 0


def _str(value, what: str, limit: int) -> str:
    if not isinstance(value, str):
        raise PacketError(MALFORMED, f"{what} is not a string")
    if len(value) > limit:
        raise PacketError(MALFORMED, f"{what} has {len(value)} characters (limit {limit})")
    return value


def _packed_header(msg) -> bytes:
    """The protected non-array fields, in a fixed little-endian layout."""
    header = msg.header
    frame_id = str(header.frame_id).encode("utf-8", "surrogatepass")
    mode = str(msg.mode).encode("utf-8", "surrogatepass")
    parts = [struct.pack("<iIH", int(header.stamp.sec), int(header.stamp.nanosec),
                         len(frame_id)), frame_id,
             struct.pack("<QH", int(msg.seq), len(mode)), mode,
             struct.pack("<IIHHHII", int(msg.width), int(msg.height), int(msg.block_size),
                         int(msg.block_rows), int(msg.block_cols), _bytes_len(msg.roi_mask),
                         len(msg.non_roi)),
             struct.pack("<ffB", float(msg.segmentation_ms), float(msg.encode_ms),
                         int(msg.e2e_profile))]
    return b"".join(parts)


def _packed_stream(stream) -> bytes:
    codec = str(stream.codec).encode("utf-8", "surrogatepass")
    return struct.pack("<H", len(codec)) + codec + struct.pack(
        "<f?I", float(stream.crf), bool(stream.key_frame), _bytes_len(stream.data))


def e2e_crc(msg) -> int:
    """CRC-32 over every field of the message except ``e2e_crc`` itself.

    Lengths are covered, so a cut or a byte moved between fields changes the CRC; a
    single flipped byte (any burst of up to 32 bits) is always detected.
    """
    crc = zlib.crc32(_packed_header(msg))
    crc = zlib.crc32(msg.roi_mask, crc)
    for stream in [msg.roi, *msg.non_roi]:
        crc = zlib.crc32(_packed_stream(stream), crc)
        crc = zlib.crc32(stream.data, crc)
    return crc & 0xFFFFFFFF


def stamp_ns(header) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def packet_to_msg(packet: SacPacket, header, packet_cls, stream_cls, blob=bytes):
    """The E2E-protected message of a core packet.

    ``packet_cls`` / ``stream_cls``: the message classes to build (rclpy's, or a rosbags
    typestore's); ``blob`` turns bytes into what their uint8[] fields hold.
    """
    def stream(s: EncodedStream):
        return stream_cls(codec=s.codec, crf=float(s.crf), key_frame=bool(s.key_frame),
                          data=blob(s.data))

    fields = dict(
        header=header, seq=packet.seq, mode=packet.mode, width=packet.width,
        height=packet.height, block_size=packet.block_size, block_rows=packet.block_rows,
        block_cols=packet.block_cols, roi_mask=blob(packet.roi_mask), roi=stream(packet.roi),
        non_roi=[stream(packet.non_roi)] if packet.non_roi is not None else [],
        segmentation_ms=float(packet.segmentation_ms), encode_ms=float(packet.encode_ms),
        e2e_profile=E2E_CRC32)
    return packet_cls(**fields, e2e_crc=e2e_crc(SimpleNamespace(**fields)))


def _e2e_state(msg, require_e2e: bool) -> str:
    profile = getattr(msg, "e2e_profile", None)
    if profile is None or int(profile) == E2E_NONE:
        if require_e2e:
            raise PacketError(UNPROTECTED, "packet carries no end-to-end checksum")
        return "absent"
    if int(profile) != E2E_CRC32:
        raise PacketError(MALFORMED, f"unknown E2E profile {int(profile)}")
    crc = e2e_crc(msg)
    if crc != int(msg.e2e_crc):
        raise PacketError(CORRUPT, f"E2E CRC mismatch (computed {crc:08x}, "
                                 f"carried {int(msg.e2e_crc):08x})")
    return "ok"


def packet_from_msg(msg, require_e2e: bool = False) -> Received:
    """Check a message and turn it into the core packet; ``PacketError`` says why not.

    ``require_e2e``: a message without a checksum is dropped as ``unprotected`` (live
    traffic); without it, it converts with ``e2e="absent"`` (older bags).
    """
    try:
        # Cheap shape checks first: a CRC over a payload of absurd size is work wasted.
        mode = _str(msg.mode, "mode", 32)
        roi = msg.roi
        non_roi = list(msg.non_roi)
        if len(non_roi) > 1:
            raise PacketError(MALFORMED, f"{len(non_roi)} non-ROI streams")
        streams = [roi, *non_roi]
        check_geometry(mode, int(msg.width), int(msg.height), int(msg.block_size),
                       int(msg.block_rows), int(msg.block_cols), _bytes_len(msg.roi_mask),
                       len(streams))
        for s in streams:
            check_stream(_str(s.codec, "codec", 16), float(s.crf), _bytes_len(s.data))
        if not 0 <= int(msg.seq) <= U64_MAX:  # rclpy only checks types when asked to
            raise PacketError(MALFORMED, f"sequence number {int(msg.seq)} is not a uint64")
        _str(msg.header.frame_id, "frame_id", MAX_FRAME_ID)
        if not 0 <= int(msg.header.stamp.nanosec) < 1_000_000_000:
            raise PacketError(MALFORMED, f"stamp nanosec {int(msg.header.stamp.nanosec)} "
                                       "is out of range")
        e2e = _e2e_state(msg, require_e2e)

        def stream(s) -> EncodedStream:
            return EncodedStream(str(s.codec), float(s.crf), bool(s.key_frame), bytes(s.data))

        packet = SacPacket(
            seq=int(msg.seq), mode=mode, width=int(msg.width), height=int(msg.height),
            block_size=int(msg.block_size), block_rows=int(msg.block_rows),
            block_cols=int(msg.block_cols), roi_mask=bytes(msg.roi_mask), roi=stream(roi),
            non_roi=stream(non_roi[0]) if non_roi else None,
            encode_ms=float(msg.encode_ms), segmentation_ms=float(msg.segmentation_ms))
        return Received(packet, stamp_ns(msg.header), e2e)
    except PacketError:
        raise
    except (AttributeError, TypeError, ValueError, OverflowError, struct.error) as exc:
        # A definition from another sac_ros version, or a field of the wrong type.
        raise PacketError(MALFORMED, f"unreadable packet message: {exc}") from None
