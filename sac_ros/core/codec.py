"""The one encoder/decoder wrapper over PyAV: one Annex-B packet per frame.

Encoders run x264/x265 with ``tune=zerolatency``, no B-frames, a fixed GOP with
no scene-cut key frames (so the ROI and non-ROI streams stay key-frame aligned)
and parameter sets (SPS/PPS, plus VPS for H.265) repeated in every key frame,
so a late joiner can start at any key frame.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from sac_ros.core.errors import SacError

# codec name -> (encoder, decoder, short label)
CODECS = {
    "h264": ("libx264", "h264", "x264"),
    "hevc": ("libx265", "hevc", "x265"),
}
CODEC_ALIASES = {"h264": "h264", "x264": "h264", "libx264": "h264", "avc": "h264",
                 "hevc": "hevc", "h265": "hevc", "x265": "hevc", "libx265": "hevc"}
PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium",
           "slow", "slower", "veryslow")


def canonical_codec(name: str) -> str:
    try:
        return CODEC_ALIASES[name.lower()]
    except KeyError:
        raise SacError(f"unknown codec '{name}'; use h264 (x264) or hevc (x265)") from None


def check_crf(crf: float, what: str = "crf") -> float:
    try:
        value = float(crf)
    except (TypeError, ValueError):
        raise SacError(f"{what} must be a number, got {crf!r}") from None
    if not 0.0 <= value <= 51.0:
        raise SacError(f"{what} {value:g} is outside 0-51")
    return value


@dataclass(frozen=True)
class EncoderSettings:
    codec: str = "h264"
    preset: str = "veryfast"
    gop: int = 30
    threads: int = 0  # 0 = the encoder's own choice
    fps: int = 30

    def __post_init__(self):
        object.__setattr__(self, "codec", canonical_codec(self.codec))
        if self.preset not in PRESETS:
            raise SacError(f"unknown preset '{self.preset}'; choose one of {', '.join(PRESETS)}")
        if not 1 <= int(self.gop) <= 1000:
            raise SacError(f"gop {self.gop} is outside 1-1000")
        if int(self.threads) < 0:
            raise SacError("threads must be >= 0")
        if not 1 <= int(self.fps) <= 1000:
            raise SacError(f"fps {self.fps} is outside 1-1000")


def _encoder_options(settings: EncoderSettings, crf: float) -> dict[str, str]:
    gop = int(settings.gop)
    gop_params = f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"
    options = {"crf": f"{crf:.3f}", "preset": settings.preset, "tune": "zerolatency"}
    if settings.codec == "h264":
        # x264 repeats SPS/PPS before every IDR by default.
        options["x264-params"] = gop_params
    else:
        options["x265-params"] = (f"{gop_params}:repeat-headers=1:rc-lookahead=0:"
                                  f"log-level=error:info=0")
    return options


class StreamEncoder:
    """Encodes padded I420 frames, returning exactly one Annex-B packet per frame.

    ``set_crf`` takes effect at the next key frame (the encoder is reopened there,
    so the GOP structure is unchanged).
    """

    def __init__(self, width: int, height: int, crf: float, settings: EncoderSettings):
        if width % 2 or height % 2:
            raise SacError(f"encoder size {width}x{height} must be even (4:2:0)")
        self.width, self.height, self.settings = width, height, settings
        self.crf = check_crf(crf)
        self._pending_crf: float | None = None
        self._frame_index = 0
        self._ctx = self._open()

    def _open(self) -> av.CodecContext:
        encoder_name = CODECS[self.settings.codec][0]
        ctx = av.CodecContext.create(encoder_name, "w")
        ctx.width, ctx.height = self.width, self.height
        ctx.pix_fmt = "yuv420p"
        ctx.time_base = Fraction(1, int(self.settings.fps))
        ctx.framerate = Fraction(int(self.settings.fps), 1)
        ctx.gop_size = int(self.settings.gop)
        ctx.max_b_frames = 0
        if self.settings.threads:
            ctx.thread_count = int(self.settings.threads)
        ctx.options = _encoder_options(self.settings, self.crf)
        ctx.open()
        return ctx

    def set_crf(self, crf: float) -> None:
        self._pending_crf = check_crf(crf)

    @property
    def next_is_key(self) -> bool:
        return self._frame_index % int(self.settings.gop) == 0

    def encode(self, i420: np.ndarray) -> tuple[bytes, bool]:
        """Encode one frame; returns (Annex-B bytes, key-frame flag)."""
        if self.next_is_key and self._pending_crf is not None:
            self.crf, self._pending_crf = self._pending_crf, None
            self._ctx = self._open()
            self._frame_index = 0
        frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
        frame.pts = self._frame_index
        packets = self._ctx.encode(frame)
        self._frame_index += 1
        if len(packets) != 1:
            raise RuntimeError(f"encoder returned {len(packets)} packets for one frame; "
                               "zero-latency settings were not honoured")
        packet = packets[0]
        return bytes(packet), bool(packet.is_keyframe)


class DecodeError(Exception):
    """A packet could not be decoded; the decoder now waits for a key frame."""


class StreamDecoder:
    """Decodes one stream packet by packet.

    Packets are dropped until a key frame arrives; after a decode error or a
    reported gap the decoder waits for the next key frame again.
    """

    def __init__(self, codec: str):
        self.codec = canonical_codec(codec)
        self._ctx: av.CodecContext | None = None
        self.synced = False

    def reset(self) -> None:
        """Forget the reference state: call after a lost packet."""
        self._ctx = None
        self.synced = False

    def decode(self, data: bytes, key_frame: bool) -> np.ndarray | None:
        """Returns the padded I420 frame, or None while waiting for a key frame."""
        if not self.synced:
            if not key_frame:
                return None
            self._ctx = av.CodecContext.create(CODECS[self.codec][1], "r")
            self.synced = True
        try:
            frames = self._ctx.decode(av.Packet(data))
        except av.error.FFmpegError as exc:
            self.reset()
            raise DecodeError(f"{self.codec} decode failed: {exc}") from None
        if len(frames) != 1:
            self.reset()
            raise DecodeError(f"{self.codec} decoder returned {len(frames)} frames for one packet")
        frame = frames[0]
        if frame.format.name != "yuv420p":
            frame = frame.reformat(format="yuv420p")
        return frame.to_ndarray()
