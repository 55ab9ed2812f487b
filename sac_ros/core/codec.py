"""The one encoder/decoder wrapper over PyAV: one Annex-B packet per frame.

Encoders run x264/x265 with ``tune=zerolatency``, no B-frames, a fixed GOP with
no scene-cut key frames (so the ROI and non-ROI streams stay key-frame aligned)
and parameter sets (SPS/PPS, plus VPS for H.265) repeated in every key frame,
so a late joiner can start at any key frame.

A stream can also carry per-block QP offsets (``qp_offset``, the ``roi_qp`` mode):
FFmpeg's ``AVRegionOfInterest`` frame side data, honoured by libx264 per 16x16
macroblock and by libx265 per coding unit (``qg-size=16``, CTU 32 here). Both ignore it,
silently, when adaptive quantisation is off, so AQ is switched on where a preset
turns it off and an explicit ``aq_mode=0`` is refused.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from fractions import Fraction

import av
import av.filter
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


# Hardware encoders: not wrapped here, and they ignore AVRegionOfInterest (roi_qp).
HARDWARE_ENCODER_SUFFIXES = ("_nvenc", "_qsv", "_vaapi", "_amf", "_videotoolbox", "_v4l2m2m",
                             "_mf", "_omx")
# Presets whose adaptive quantisation is off, which makes the encoder drop QP offsets.
PRESETS_WITHOUT_AQ = {"h264": ("ultrafast",), "hevc": ("ultrafast", "superfast")}
AQ_MODES = {"h264": range(0, 4), "hevc": range(0, 5)}


def canonical_codec(name: str) -> str:
    try:
        return CODEC_ALIASES[name.lower()]
    except KeyError:
        if name.lower().endswith(HARDWARE_ENCODER_SUFFIXES):
            raise SacError(f"encoder '{name}' is not supported: sac_ros codes with libx264 or "
                           "libx265 (hardware encoders such as NVENC also ignore the per-block "
                           "QP offsets of roi_qp)") from None
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
    aq_mode: int | None = None  # adaptive quantisation mode; None = the preset's own

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
        modes = AQ_MODES[self.codec]
        if self.aq_mode is not None and self.aq_mode not in modes:
            raise SacError(f"aq_mode {self.aq_mode} is outside {modes[0]}-{modes[-1]} for "
                           f"{CODECS[self.codec][2]}")


@dataclass(frozen=True)
class Vbv:
    """A VBV cap on a CRF stream ("capped CRF"), in the encoders' kbit units.

    x264/x265 keep the stream inside a leaky bucket: over any window of T seconds it
    carries at most ``maxrate_kbps * T + bufsize_kbit`` kbit. ``StreamEncoder`` carries
    the bucket's level over when it reopens the encoder at a key frame.
    """

    maxrate_kbps: int
    bufsize_kbit: int

    def __post_init__(self):
        if int(self.maxrate_kbps) < 1 or int(self.bufsize_kbit) < 1:
            raise SacError(f"VBV maxrate {self.maxrate_kbps} kbit/s and buffer "
                           f"{self.bufsize_kbit} kbit must both be at least 1")


def _encoder_options(settings: EncoderSettings, crf: float, vbv: Vbv | None = None,
                     roi_qp: bool = False, vbv_init: float = 0.9) -> dict[str, str]:
    gop = int(settings.gop)
    params = [f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes=0"]
    if settings.aq_mode is not None:
        params.append(f"aq-mode={settings.aq_mode}")
    if roi_qp:
        params += _roi_qp_params(settings)
    if vbv is not None:
        params.append(f"vbv-maxrate={int(vbv.maxrate_kbps)}:vbv-bufsize={int(vbv.bufsize_kbit)}"
                      f":vbv-init={vbv_init:.3f}")  # a fraction of the buffer, < 1
    options = {"crf": f"{crf:.3f}", "preset": settings.preset, "tune": "zerolatency"}
    if settings.codec == "h264":
        # x264 repeats SPS/PPS before every IDR by default.
        options["x264-params"] = ":".join(params)
    else:
        params.append("repeat-headers=1:rc-lookahead=0:log-level=error:info=0")
        options["x265-params"] = ":".join(params)
    return options


def _roi_qp_params(settings: EncoderSettings) -> list[str]:
    """Encoder parameters without which x264/x265 would drop the per-block QP offsets."""
    label = CODECS[settings.codec][2]
    if settings.aq_mode == 0:
        raise SacError(f"roi_qp needs adaptive quantisation, but aq_mode is 0: {label} would "
                       "silently ignore the per-block QP offsets; use aq_mode 1 or leave it unset")
    params = []
    if settings.aq_mode is None and settings.preset in PRESETS_WITHOUT_AQ[settings.codec]:
        # The preset turns AQ off; switch it on (x265 also zeroes its strength).
        params.append("aq-mode=1" if settings.codec == "h264" else "aq-mode=1:aq-strength=1.0")
    if settings.codec == "hevc":
        # x265 codes each coding unit at the mean of the offsets it covers: QP groups of
        # 16 (the grid of the offsets) and CTUs of 32, not 64, keep region edges sharper
        # (ROI BD-rate on the sample: -17% instead of -15% at +6, -21% at +9).
        params.append("qg-size=16:ctu=32")
    return params


# AVRegionOfInterest: uint32 self_size; int top, bottom, left, right; AVRational qoffset.
ROI_FIELDS = 7
ROI_SIZE = 4 * ROI_FIELDS
ENCODER_BLOCK = 16  # x264 macroblock; x265 quantisation group with qg-size=16
# x264/x265 scale qoffset (a fraction of the QP range) by 51 for 8-bit video.
QOFFSET_DEN = 51 * 1000
MAX_QP_OFFSET = 51.0


def check_qp_offset(offset: float, what: str = "qp_offset") -> float:
    try:
        value = float(offset)
    except (TypeError, ValueError):
        raise SacError(f"{what} must be a number, got {offset!r}") from None
    if not -MAX_QP_OFFSET <= value <= MAX_QP_OFFSET:
        raise SacError(f"{what} {value:g} is outside -51 to +51")
    return value


def _input_frame(width: int, height: int, regions: int) -> av.VideoFrame:
    """A reusable yuv420p frame, carrying room for ``regions`` AVRegionOfInterest entries.

    PyAV cannot attach side data, but the ``addroi`` filter can (one region each), and
    the buffer it leaves is writable, so the regions are rewritten in place per frame.
    """
    if regions == 0:
        return av.VideoFrame(width, height, "yuv420p")
    graph = av.filter.Graph()
    source = last = graph.add_buffer(width=width, height=height, format="yuv420p",
                                     time_base=Fraction(1, 30))
    for _ in range(regions):
        node = graph.add("addroi", "x=0:y=0:w=0:h=0:qoffset=0")
        last.link_to(node)
        last = node
    sink = graph.add("buffersink")
    last.link_to(sink)
    graph.configure()
    source.push(av.VideoFrame(width, height, "yuv420p"))
    return sink.pull()


def block_runs(blocks: np.ndarray) -> np.ndarray:
    """Rectangles (top, bottom, left, right in blocks) covering the True blocks exactly.

    Row runs first, then runs with the same columns in consecutive rows are merged,
    so a typical road mask needs a handful of rectangles.
    """
    rows, cols = blocks.shape
    edges = np.diff(blocks.astype(np.int8), axis=1, prepend=0, append=0)
    row, left = np.nonzero(edges == 1)
    right = np.nonzero(edges == -1)[1]
    if not len(row):
        return np.empty((0, 4), np.int32)
    order = np.lexsort((row, right, left))
    row, left, right = row[order], left[order], right[order]
    new = np.ones(len(row), bool)
    new[1:] = (left[1:] != left[:-1]) | (right[1:] != right[:-1]) | (row[1:] != row[:-1] + 1)
    first = np.nonzero(new)[0]
    last = np.append(first[1:], len(row)) - 1
    return np.stack([row[first], row[last] + 1, left[first], right[first]], axis=1).astype(np.int32)


def offset_regions(offset_blocks: np.ndarray | None,
                   qp_offset: float) -> tuple[np.ndarray, np.ndarray]:
    """(rectangles in blocks, their QP offsets in thousandths) for the side data.

    ``offset_blocks``: a bool mask (its True blocks at ``qp_offset``) or per-block
    offsets (float, class-level roi_qp: one set of rectangles per distinct offset).
    """
    if offset_blocks is None:
        return np.empty((0, 4), np.int32), np.empty(0, np.int32)
    if offset_blocks.dtype == bool:
        rects = block_runs(offset_blocks) if qp_offset else np.empty((0, 4), np.int32)
        return rects, np.full(len(rects), round(qp_offset * 1000), np.int32)
    levels = np.unique(offset_blocks)
    if not np.isfinite(levels).all() or np.abs(levels).max(initial=0) > MAX_QP_OFFSET:
        raise SacError("per-block QP offsets must be finite and within -51 to +51")
    parts = [(block_runs(offset_blocks == level), level) for level in levels if level]
    if not parts:
        return np.empty((0, 4), np.int32), np.empty(0, np.int32)
    rects = np.concatenate([r for r, _ in parts])
    milli = np.concatenate([np.full(len(r), round(float(level) * 1000), np.int32)
                            for r, level in parts])
    return rects, milli


@functools.cache
def check_roi_qp_honoured(codec: str, preset: str, aq_mode: int | None) -> None:
    """Encode one small frame with and without a +20 QP offset; raise if nothing changed.

    Guards against an encoder build or preset that drops the offsets silently. About
    3 ms (x264) or 20 ms (x265), once per codec, preset and AQ mode.
    """
    settings = EncoderSettings(codec, preset, gop=1, threads=1, aq_mode=aq_mode)
    y, x = np.mgrid[0:64, 0:64]
    texture = ((x * 37 + y * 11) % 256).astype(np.uint8)
    i420 = np.concatenate([texture, np.full((32, 64), 128, np.uint8)])
    sizes = []
    for offset in (0.0, 20.0):
        encoder = StreamEncoder(64, 64, 26.0, settings, qp_offset=offset, verify=False)
        sizes.append(len(encoder.encode(i420, np.ones((4, 4), bool))[0]))
    if sizes[1] > 0.8 * sizes[0]:
        raise SacError(f"{CODECS[codec][0]} (preset {preset}) ignores per-block QP offsets "
                       f"({sizes[0]} bytes without, {sizes[1]} with +20 QP): roi_qp cannot "
                       "run with it; check that adaptive quantisation is on")


class StreamEncoder:
    """Encodes padded I420 frames, returning exactly one Annex-B packet per frame.

    ``set_crf``, ``set_vbv`` and ``set_qp_offset`` take effect at the next key frame
    (the encoder is reopened there for a new CRF or VBV, so the GOP structure is
    unchanged). With ``qp_offset`` given, the stream is a ROI-QP stream: the blocks
    passed to ``encode`` are coded ``qp_offset`` QP away from the rest.
    """

    def __init__(self, width: int, height: int, crf: float, settings: EncoderSettings,
                 vbv: Vbv | None = None, qp_offset: float | None = None, verify: bool = True):
        if width % 2 or height % 2:
            raise SacError(f"encoder size {width}x{height} must be even (4:2:0)")
        if qp_offset is not None and verify:
            check_roi_qp_honoured(settings.codec, settings.preset, settings.aq_mode)
        self.width, self.height, self.settings = width, height, settings
        self.crf = check_crf(crf)
        self.vbv = vbv
        self.roi_qp = qp_offset is not None
        self.qp_offset = check_qp_offset(qp_offset) if self.roi_qp else 0.0
        self._pending: dict[str, object] = {}
        self._frame_index = 0
        self._frame = _input_frame(width, height, 0)
        self._planes = self._plane_views()
        self._regions: np.ndarray | None = None  # int32 view of the side data
        self._written: tuple[bytes, float] | None = None  # what the side data holds now
        self._vbv_fill = 0.9  # our copy of the VBV buffer level, as a fraction of its size
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
        ctx.options = _encoder_options(self.settings, self.crf, self.vbv, self.roi_qp,
                                       min(max(self._vbv_fill, 0.01), 0.99))
        ctx.open()
        return ctx

    def _plane_views(self) -> list[np.ndarray]:
        """Writable views of the input frame's Y, U, V (without the line padding)."""
        views = []
        for plane in self._frame.planes:
            data = np.asarray(memoryview(plane)).reshape(-1, plane.line_size)
            views.append(data[:plane.height, :plane.width])
        return views

    def set_crf(self, crf: float) -> None:
        self._pending["crf"] = check_crf(crf)

    def set_vbv(self, vbv: Vbv | None) -> None:
        self._pending["vbv"] = vbv

    def set_qp_offset(self, offset: float) -> None:
        if not self.roi_qp:
            raise SacError("set_qp_offset needs a ROI-QP stream (created with qp_offset)")
        self._pending["qp_offset"] = check_qp_offset(offset)

    @property
    def next_is_key(self) -> bool:
        return self._frame_index % int(self.settings.gop) == 0

    def _apply_pending(self) -> None:
        pending, self._pending = self._pending, {}
        self.qp_offset = pending.pop("qp_offset", self.qp_offset)
        if "crf" in pending or "vbv" in pending:
            old = self.vbv
            self.crf = pending.get("crf", self.crf)
            self.vbv = pending.get("vbv", self.vbv)
            if old is not None and self.vbv is not None:
                # The bucket's level in bits survives a new size: a reopen must not refill it.
                self._vbv_fill *= old.bufsize_kbit / self.vbv.bufsize_kbit
            elif self.vbv is not None:
                self._vbv_fill = 0.9  # x264/x265's default start
            self._ctx = self._open()
            self._frame_index = 0

    def _write_regions(self, offset_blocks: np.ndarray | None) -> None:
        """Point the side data at ``offset_blocks`` (on a grid of 16-multiple blocks)."""
        block = ENCODER_BLOCK
        if offset_blocks is not None:
            rows, cols = offset_blocks.shape
            block = self.height // rows
            if (block * rows != self.height or block * cols != self.width
                    or block % ENCODER_BLOCK):
                raise SacError(f"a {rows}x{cols} block grid does not tile the {self.width}x"
                               f"{self.height} frame in blocks of a multiple of 16 px; roi_qp "
                               f"needs block_size 16, 32 or 64")
        key = (b"" if offset_blocks is None else offset_blocks.dtype.str.encode()
               + offset_blocks.tobytes(), self.qp_offset)
        if key == self._written:
            return  # same mask and offset as the last frame: the side data already holds it
        rects, milli = offset_regions(offset_blocks, self.qp_offset)
        if self._regions is None or len(rects) > len(self._regions):
            # Room for more regions: a new input frame (rare; powers of two, at least 16).
            slots = max(16, 1 << (len(rects) - 1).bit_length())
            self._frame = _input_frame(self.width, self.height, slots)
            self._planes = self._plane_views()
            side_data = self._frame.side_data[0]
            self._regions = np.asarray(memoryview(side_data)).view(np.int32).reshape(slots, -1)
        regions, count = self._regions, len(rects)
        regions[:, 0] = ROI_SIZE
        regions[:count, 1:5] = rects * block  # top, bottom, left, right in pixels
        regions[:count, 5] = milli
        regions[count:, 1:6] = 0  # unused slots: empty rectangles, offset 0
        regions[:, 6] = QOFFSET_DEN
        self._written = key

    def encode(self, i420: np.ndarray,
               offset_blocks: np.ndarray | None = None) -> tuple[bytes, bool]:
        """Encode one frame; returns (Annex-B bytes, key-frame flag).

        ``offset_blocks`` (ROI-QP streams only): the blocks coded at ``qp_offset`` (bool),
        or each block's own QP offset (float: class-level offsets, core/classqp.py).
        """
        if self.next_is_key and self._pending:
            self._apply_pending()
        if self.roi_qp:
            self._write_regions(offset_blocks)
        elif offset_blocks is not None:
            raise SacError("per-block QP offsets need a ROI-QP stream (created with qp_offset)")
        height = self.height
        y, u, v = self._planes
        np.copyto(y, i420[:height])
        np.copyto(u, i420[height:height + height // 4].reshape(u.shape))
        np.copyto(v, i420[height + height // 4:].reshape(v.shape))
        frame = self._frame  # reused: x264/x265 copy the picture before encode() returns
        frame.pts = self._frame_index
        packets = self._ctx.encode(frame)
        self._frame_index += 1
        if len(packets) != 1:
            raise RuntimeError(f"encoder returned {len(packets)} packets for one frame; "
                               "zero-latency settings were not honoured")
        packet = packets[0]
        data = bytes(packet)
        if self.vbv is not None:
            # Leaky bucket: fills at maxrate, drains by each frame's bits, never overflows.
            size = self.vbv.bufsize_kbit * 1000.0
            fill = self._vbv_fill * size + self.vbv.maxrate_kbps * 1000.0 / self.settings.fps
            self._vbv_fill = min(fill - 8.0 * len(data), size) / size
        return data, bool(packet.is_keyframe)


MAX_DECODE_PIXELS = 8192 * 8192  # the wire's largest frame (sac.MAX_DIMENSION squared)


class DecodeError(Exception):
    """A packet could not be decoded; the decoder now waits for a key frame."""


class StreamDecoder:
    """Decodes one stream packet by packet.

    Packets are dropped until a key frame arrives; after a decode error or a
    reported gap the decoder waits for the next key frame again.

    ``export_motion``: the context opened at the next key frame exports the motion
    vectors (FFmpeg ``export_mvs``; H.264 only, HEVC exports none); ``last_vectors``
    then holds the last frame's (PyAV's structured array), else None.
    """

    def __init__(self, codec: str):
        self.codec = canonical_codec(codec)
        self._ctx: av.CodecContext | None = None
        self.synced = False
        self.export_motion = False
        self.exporting = False  # the open context exports vectors
        self.last_vectors: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the reference state: call after a lost packet."""
        self._ctx = None
        self.synced = False

    def decode(self, data: bytes, key_frame: bool,
               size: tuple[int, int] | None = None) -> np.ndarray | None:
        """Returns the padded I420 frame, or None while waiting for a key frame.

        ``size`` (width, height): the frame size the packet promises; a bitstream that
        decodes to another size is a DecodeError before its pixels are copied.
        """
        if key_frame:
            # A fresh context per key frame: whatever garbage came before (a corrupt
            # packet that still parsed) leaves no state behind.
            self._ctx = None
        elif not self.synced:
            return None
        if self._ctx is None:
            self._ctx = av.CodecContext.create(CODECS[self.codec][1], "r")
            # A hostile SPS must not make the decoder allocate more than the largest frame.
            options = {"max_pixels": str(MAX_DECODE_PIXELS)}
            if self.export_motion:
                options["flags2"] = "+export_mvs"
            self._ctx.options = options
            self.exporting = self.export_motion
            self.synced = True
        self.last_vectors = None
        try:
            frames = self._ctx.decode(av.Packet(data))
            if len(frames) != 1:
                raise DecodeError(f"{self.codec} decoder returned {len(frames)} frames for "
                                  "one packet")
            frame = frames[0]
            if size is not None and (frame.width, frame.height) != size:
                raise DecodeError(f"{self.codec} stream is {frame.width}x{frame.height}, the "
                                  f"packet says {size[0]}x{size[1]}")
            if self.exporting:
                vectors = frame.side_data.get("MOTION_VECTORS")
                self.last_vectors = None if vectors is None else vectors.to_ndarray()
            if frame.format.name != "yuv420p":
                frame = frame.reformat(format="yuv420p")
            return frame.to_ndarray()
        except DecodeError:
            self.reset()
            raise
        except (av.error.FFmpegError, ValueError, TypeError, MemoryError) as exc:
            # FFmpeg errors, and PyAV's own on frames it cannot convert.
            self.reset()
            raise DecodeError(f"{self.codec} decode failed: {exc}") from None
