"""Annex-B H.264 / H.265 access units, read as viewers read them: NAL unit types, key
frames, parameter sets, and the ``foxglove_msgs/CompressedVideo`` format names.

Foxglove (and Lichtblick) decode a ``CompressedVideo`` topic from its first key frame,
which must carry the parameter sets (SPS/PPS, plus VPS for H.265) in the same message.
``entry_point`` checks exactly that on the bytes themselves, not on a flag beside them.
"""

from __future__ import annotations

from sac_ros.core.codec import canonical_codec

START_CODE = b"\x00\x00\x01"  # a 4-byte start code ends in the same three bytes

# Our codec names (core/codec.py) -> CompressedVideo.format
FOXGLOVE_FORMATS = {"h264": "h264", "hevc": "h265"}

# H.264 (ITU-T H.264 table 7-1)
H264_SLICE, H264_IDR, H264_SEI, H264_SPS, H264_PPS = 1, 5, 6, 7, 8
# H.265 (ITU-T H.265 table 7-1): IRAP pictures are types 16-23 (BLA, IDR, CRA)
H265_IRAP = range(16, 24)
H265_VPS, H265_SPS, H265_PPS = 32, 33, 34


def foxglove_format(codec: str) -> str:
    """``CompressedVideo.format`` of a codec name ("h264", "x265", "hevc", ...)."""
    return FOXGLOVE_FORMATS[canonical_codec(codec)]


def nal_types(data: bytes, codec: str) -> list[int]:
    """The NAL unit types of an Annex-B access unit, in order.

    Emulation prevention guarantees that 00 00 01 occurs only as a start code, so
    a byte search finds every unit.
    """
    hevc = canonical_codec(codec) == "hevc"
    types = []
    start = data.find(START_CODE)
    while start >= 0:
        header = start + len(START_CODE)
        if header >= len(data):
            break
        byte = data[header]
        types.append((byte >> 1) & 0x3F if hevc else byte & 0x1F)
        start = data.find(START_CODE, header)
    return types


def is_annexb(data: bytes) -> bool:
    """Starts with a start code (Annex B), not a length prefix (AVCC / HVCC)."""
    return data[:3] == START_CODE or data[:4] == b"\x00" + START_CODE


def is_key_frame(data: bytes, codec: str) -> bool:
    """The access unit holds an IDR (H.264) or IRAP (H.265) picture."""
    types = nal_types(data, codec)
    if canonical_codec(codec) == "hevc":
        return any(t in H265_IRAP for t in types)
    return H264_IDR in types


def has_parameter_sets(data: bytes, codec: str) -> bool:
    """SPS and PPS (and VPS for H.265) are in the access unit."""
    types = set(nal_types(data, codec))
    if canonical_codec(codec) == "hevc":
        return {H265_VPS, H265_SPS, H265_PPS} <= types
    return {H264_SPS, H264_PPS} <= types


def entry_point(data: bytes, codec: str) -> bool:
    """A viewer joining here can decode: Annex B, a key frame, its parameter sets in it."""
    return is_annexb(data) and is_key_frame(data, codec) and has_parameter_sets(data, codec)
