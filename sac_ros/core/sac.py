"""SacEncoder / SacDecoder: RGB frame + block mask -> SacPacket -> RGB frame.

``mode="dual_crf"`` is the papers' method: an ROI stream at ``roi_crf`` and a
non-ROI stream at ``non_roi_crf``, each black outside its blocks, encoded in
two threads. ``mode="uniform"`` sends one stream at ``roi_crf`` for the whole
frame; it is the baseline every comparison is made against. ``mode="roi_qp"``
sends one stream at CRF ``roi_crf`` whose non-ROI blocks are coded
``non_roi_crf - roi_crf`` QP higher (per-block QP offsets, see codec.py); the
decoder needs nothing extra for it, as the packet has one stream.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from sac_ros.core.codec import (
    ENCODER_BLOCK,
    DecodeError,
    EncoderSettings,
    StreamDecoder,
    StreamEncoder,
    Vbv,
    check_crf,
)
from sac_ros.core.errors import PacketError, SacError
from sac_ros.core.frames import PlaneLayout, as_rgb, select, split
from sac_ros.core.mask import BLOCK_SIZE, pack_blocks, unpack_blocks
from sac_ros.core.motion import MotionField, motion_field
from sac_ros.core.prefilter import Prefilter

MODES = ("dual_crf", "uniform", "roi_qp")

# Bounds of a packet from outside (the network, a bag), checked before anything of its
# shape is allocated: a packet that breaks one is dropped as MALFORMED.
MALFORMED = "malformed"
MAX_DIMENSION = 8192           # pixels, width and height
BLOCK_SIZES = (8, 16, 32, 64)  # the mask sizes the encoder can be configured with
CODEC_NAMES = ("h264", "hevc")
MAX_STREAM_BYTES = 16 << 20    # one access unit; far above any CRF-coded 8192x8192 frame
CRF_RANGE = (0.0, 51.0)
U64_MAX = (1 << 64) - 1


def check_geometry(mode: str, width: int, height: int, block_size: int, block_rows: int,
                   block_cols: int, mask_bytes: int, streams: int) -> None:
    """A packet's shape is within bounds and self-consistent (else PacketError)."""
    if mode not in MODES:
        raise PacketError(MALFORMED, f"unknown mode '{str(mode)[:32]}'")
    if not (2 <= width <= MAX_DIMENSION and 2 <= height <= MAX_DIMENSION):
        raise PacketError(MALFORMED, f"frame size {width}x{height} is outside "
                                     f"2-{MAX_DIMENSION}")
    if block_size not in BLOCK_SIZES:
        raise PacketError(MALFORMED, f"block size {block_size} is not one of "
                                     f"{', '.join(map(str, BLOCK_SIZES))}")
    rows, cols = -(-height // block_size), -(-width // block_size)
    if (block_rows, block_cols) != (rows, cols):
        raise PacketError(MALFORMED, f"block grid {block_rows}x{block_cols} does not fit "
                                     f"{width}x{height} in {block_size}x{block_size} blocks")
    if mask_bytes != -(-rows * cols // 8):
        raise PacketError(MALFORMED, f"ROI mask has {mask_bytes} bytes for {rows}x{cols} "
                                     "blocks")
    wanted = 2 if mode == "dual_crf" else 1
    if streams != wanted:
        raise PacketError(MALFORMED, f"mode {mode} with {streams} streams (needs {wanted})")


def check_stream(codec: str, crf: float, size: int) -> None:
    if codec not in CODEC_NAMES:
        raise PacketError(MALFORMED, f"unknown codec '{str(codec)[:32]}'")
    if not (math.isfinite(crf) and CRF_RANGE[0] <= crf <= CRF_RANGE[1]):
        raise PacketError(MALFORMED, f"CRF {crf} is outside {CRF_RANGE[0]:g}-{CRF_RANGE[1]:g}")
    if size == 0:
        raise PacketError(MALFORMED, "empty stream payload")
    if size > MAX_STREAM_BYTES:
        raise PacketError(MALFORMED, f"stream payload of {size} bytes is over the "
                                     f"{MAX_STREAM_BYTES} byte limit")


@dataclass
class EncodedStream:
    codec: str
    crf: float
    key_frame: bool
    data: bytes


@dataclass
class SacPacket:
    """Everything needed to decode one frame on its own (mirrors msg/SacPacket.msg)."""

    seq: int
    mode: str
    width: int
    height: int
    block_size: int
    block_rows: int
    block_cols: int
    roi_mask: bytes  # bit-packed, row-major, 1 = ROI block
    roi: EncodedStream  # the one stream in uniform and roi_qp modes
    non_roi: EncodedStream | None
    encode_ms: float = 0.0
    segmentation_ms: float = 0.0
    qp_offset: float = 0.0  # roi_qp: QP offset of the non-ROI blocks (informative)

    @property
    def key_frame(self) -> bool:
        return self.roi.key_frame

    @property
    def num_bytes(self) -> int:
        """Payload bytes of both streams (the mask and header are reported apart)."""
        return len(self.roi.data) + (len(self.non_roi.data) if self.non_roi else 0)

    def blocks(self) -> np.ndarray:
        return unpack_blocks(self.roi_mask, self.block_rows, self.block_cols)

    def check(self) -> None:
        """Within the wire's bounds (PacketError if not): the decoder's own guard."""
        if not isinstance(self.seq, int) or not 0 <= self.seq <= U64_MAX:
            raise PacketError(MALFORMED, f"sequence number {self.seq!r} is not a uint64")
        streams = [self.roi] + ([self.non_roi] if self.non_roi is not None else [])
        check_geometry(self.mode, self.width, self.height, self.block_size, self.block_rows,
                       self.block_cols, len(self.roi_mask), len(streams))
        for stream in streams:
            check_stream(stream.codec, float(stream.crf), len(stream.data))


@dataclass
class DecodedFrame:
    seq: int
    rgb: np.ndarray
    blocks: np.ndarray
    roi_stream_rgb: np.ndarray | None = None
    non_roi_stream_rgb: np.ndarray | None = None
    decode_ms: float = 0.0
    motion: MotionField | None = None  # with SacDecoder.export_motion, once vectors flow


class SacEncoder:
    def __init__(self, width: int, height: int, roi_crf: float, non_roi_crf: float | None = None,
                 settings: EncoderSettings | None = None, mode: str = "dual_crf",
                 parallel: bool = True, block_size: int = BLOCK_SIZE,
                 prefilter: Prefilter | None = None):
        if mode not in MODES:
            raise SacError(f"unknown mode '{mode}'; choose one of {', '.join(MODES)}")
        self.mode = mode
        self.settings = settings or EncoderSettings()
        # Non-ROI pre-filter (core/prefilter.py); uniform coding has no non-ROI to filter.
        self.prefilter = prefilter if prefilter is not None and mode != "uniform" else None
        self.layout = PlaneLayout(height, width, block_size)
        roi_crf = check_crf(roi_crf, "roi_crf")
        dual = mode == "dual_crf"
        if mode == "roi_qp" and block_size % ENCODER_BLOCK:
            raise SacError(f"roi_qp needs block_size 16, 32 or 64, got {block_size} "
                           "(x264 sets one QP per 16x16 macroblock)")
        if dual and parallel and not self.settings.threads:
            # Two encoders run side by side: split the cores between them rather than
            # letting each spawn a thread per core (measured faster on 2 cores).
            per_stream = max(1, (os.cpu_count() or 2) // 2)
            self.settings = dataclasses.replace(self.settings, threads=per_stream)
        pw, ph = self.layout.padded_width, self.layout.padded_height
        qp_offset = None
        if mode == "roi_qp":
            qp_offset = 0.0 if non_roi_crf is None else (
                check_crf(non_roi_crf, "non_roi_crf") - roi_crf)
            self._non_blocks = np.empty((self.layout.rows, self.layout.cols), bool)
        self._roi_encoder = StreamEncoder(pw, ph, roi_crf, self.settings, qp_offset=qp_offset)
        self._non_roi_encoder = None
        self._pool = None
        if dual:
            non_roi_crf = check_crf(roi_crf if non_roi_crf is None else non_roi_crf,
                                    "non_roi_crf")
            self._non_roi_encoder = StreamEncoder(pw, ph, non_roi_crf, self.settings)
            self._roi_buf, self._non_buf = self.layout.new_i420(), self.layout.new_i420()
            if parallel:
                self._pool = ThreadPoolExecutor(max_workers=1)
        self._all_roi = np.ones((self.layout.rows, self.layout.cols), bool)
        self._seq = 0

    @property
    def roi_crf(self) -> float:
        return self._roi_encoder.crf

    @property
    def non_roi_crf(self) -> float | None:
        """dual_crf: the non-ROI stream's CRF; roi_qp: ROI CRF + non-ROI QP offset."""
        if self.mode == "roi_qp":
            return self._roi_encoder.crf + self._roi_encoder.qp_offset
        return self._non_roi_encoder.crf if self._non_roi_encoder else None

    @property
    def qp_offset(self) -> float:
        """roi_qp: the non-ROI blocks' QP offset (0 in the other modes)."""
        return self._roi_encoder.qp_offset

    @property
    def next_is_key(self) -> bool:
        return self._roi_encoder.next_is_key

    def set_crfs(self, roi_crf: float, non_roi_crf: float | None = None) -> None:
        """New CRFs, applied at the next key frame of both streams.

        roi_qp: the non-ROI QP offset becomes ``non_roi_crf - roi_crf``; without
        ``non_roi_crf`` the offset is kept (dual_crf: the non-ROI CRF is kept).
        """
        roi_crf = check_crf(roi_crf, "roi_crf")
        if non_roi_crf is not None:
            non_roi_crf = check_crf(non_roi_crf, "non_roi_crf")
        self._roi_encoder.set_crf(roi_crf)
        if self.mode == "roi_qp" and non_roi_crf is not None:
            self._roi_encoder.set_qp_offset(non_roi_crf - roi_crf)
        if self._non_roi_encoder is not None and non_roi_crf is not None:
            self._non_roi_encoder.set_crf(non_roi_crf)

    def set_vbv(self, roi_vbv: Vbv | None, non_roi_vbv: Vbv | None = None) -> None:
        """VBV caps (capped CRF) from the next key frame; None lifts a cap.

        ``roi_vbv`` caps the one stream of uniform / roi_qp, or the ROI stream of dual_crf.
        """
        self._roi_encoder.set_vbv(roi_vbv)
        if self._non_roi_encoder is not None:
            self._non_roi_encoder.set_vbv(non_roi_vbv)

    def encode(self, rgb: np.ndarray, blocks: np.ndarray | None = None,
               qp_offsets: np.ndarray | None = None) -> SacPacket:
        """Encode one RGB frame with its (rows, cols) ROI block mask.

        ``qp_offsets`` (roi_qp only): each block's own QP offset (class-level offsets,
        core/classqp.py) instead of ``qp_offset`` on the non-ROI blocks.
        """
        start = time.perf_counter()
        layout = self.layout
        if blocks is None or self.mode == "uniform":
            blocks = self._all_roi
        elif blocks.shape != (layout.rows, layout.cols):
            raise SacError(f"block mask is {blocks.shape}, expected "
                           f"{(layout.rows, layout.cols)} for {layout.width}x{layout.height}")
        i420 = layout.rgb_to_i420(as_rgb(rgb))
        if self.prefilter is not None:
            self.prefilter.apply(layout, i420, blocks)
        non_roi = None
        if self.mode == "roi_qp" and qp_offsets is not None:
            if qp_offsets.shape != blocks.shape:
                raise SacError(f"QP offsets are {qp_offsets.shape}, expected {blocks.shape}")
            roi_data, roi_key = self._roi_encoder.encode(
                i420, np.asarray(qp_offsets, np.float32))
        elif self.mode == "roi_qp":
            # One stream; the non-ROI blocks get the QP offset through the side data.
            offset_blocks = np.logical_not(blocks, out=self._non_blocks)
            roi_data, roi_key = self._roi_encoder.encode(i420, offset_blocks)
        elif self._non_roi_encoder is None:
            roi_data, roi_key = self._roi_encoder.encode(i420)
        else:
            split(layout, i420, blocks, self._roi_buf, self._non_buf)
            if self._pool is not None:
                # PyAV releases the GIL while encoding, so the two streams run in parallel.
                future = self._pool.submit(self._non_roi_encoder.encode, self._non_buf)
                roi_data, roi_key = self._roi_encoder.encode(self._roi_buf)
                non_data, non_key = future.result()
            else:
                roi_data, roi_key = self._roi_encoder.encode(self._roi_buf)
                non_data, non_key = self._non_roi_encoder.encode(self._non_buf)
            non_roi = EncodedStream(self.settings.codec, self._non_roi_encoder.crf,
                                    non_key, non_data)
        packet = SacPacket(
            seq=self._seq, mode=self.mode, width=layout.width, height=layout.height,
            block_size=layout.block_size, block_rows=layout.rows, block_cols=layout.cols,
            roi_mask=pack_blocks(blocks),
            roi=EncodedStream(self.settings.codec, self._roi_encoder.crf, roi_key, roi_data),
            non_roi=non_roi,
            encode_ms=(time.perf_counter() - start) * 1e3,
            qp_offset=self._roi_encoder.qp_offset,
        )
        self._seq = (self._seq + 1) & U64_MAX  # a uint64 on the wire
        return packet

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _decode_stream(decoder: StreamDecoder, stream: EncodedStream, size: tuple[int, int]):
    """(padded I420 frame or None, error message or None)."""
    try:
        return decoder.decode(stream.data, stream.key_frame, size), None
    except DecodeError as exc:
        return None, str(exc)


class SacDecoder:
    """Decodes packets of any mode and size; recovers at the next key frame after a gap.

    ``decode`` returns None (and sets ``last_drop_reason``) for packets it must drop.
    ``export_motion``: frames carry the merged per-block motion (core/motion.py) from the
    next key frame on (the decoders are reopened there); off, it costs nothing.
    """

    def __init__(self, keep_streams: bool = False, parallel: bool = True,
                 export_motion: bool = False):
        self.keep_streams = keep_streams
        self.export_motion = export_motion
        self._previous_y: np.ndarray | None = None  # last reconstruction's luma (motion)
        self.motion_errors = 0
        self.last_motion_error: str | None = None
        self._pool = ThreadPoolExecutor(max_workers=1) if parallel else None
        self._layout: PlaneLayout | None = None
        self._decoders: dict[str, StreamDecoder] = {}
        self._last_seq: int | None = None
        self._out: np.ndarray | None = None
        self.last_drop_reason: str | None = None

    def _stream_decoder(self, role: str, codec: str) -> StreamDecoder:
        decoder = self._decoders.get(role)
        if decoder is None or decoder.codec != codec:
            decoder = self._decoders[role] = StreamDecoder(codec)
        decoder.export_motion = self.export_motion
        return decoder

    def _prepare(self, packet: SacPacket) -> None:
        layout = self._layout
        if (layout is None or (layout.width, layout.height, layout.block_size)
                != (packet.width, packet.height, packet.block_size)):
            self._layout = PlaneLayout(packet.height, packet.width, packet.block_size)
            self._out = self._layout.new_i420()
            for decoder in self._decoders.values():
                decoder.reset()
        if (self._layout.rows, self._layout.cols) != (packet.block_rows, packet.block_cols):
            raise SacError(f"packet block grid {packet.block_rows}x{packet.block_cols} does not "
                           f"match its {packet.width}x{packet.height} frame")

    def decode(self, packet: SacPacket) -> DecodedFrame | None:
        """The frame, or None with ``last_drop_reason``; PacketError for a malformed packet."""
        start = time.perf_counter()
        self.last_drop_reason = None
        packet.check()
        if self._last_seq is not None and packet.seq != self._last_seq + 1:
            for decoder in self._decoders.values():
                decoder.reset()  # lost or reordered packets: resync at the next key frame
            self._previous_y = None
        self._last_seq = packet.seq
        self._prepare(packet)
        blocks = packet.blocks()
        streams = [("roi", packet.roi)] + ([("non_roi", packet.non_roi)]
                                             if packet.non_roi is not None else [])
        size = (self._layout.padded_width, self._layout.padded_height)
        jobs = {role: (self._stream_decoder(role, stream.codec), stream, size)
                for role, stream in streams}
        results = {}
        if len(jobs) == 2 and self._pool is not None:
            # Both decoders release the GIL: run the non-ROI stream on the helper thread.
            future = self._pool.submit(_decode_stream, *jobs["non_roi"])
            results["roi"] = _decode_stream(*jobs["roi"])
            results["non_roi"] = future.result()
        else:
            results = {role: _decode_stream(*job) for role, job in jobs.items()}
        planes = {}
        for role, (plane, error) in results.items():
            if error is not None:
                self.last_drop_reason = f"decode_error: {error}"
                return None
            if plane is None:
                self.last_drop_reason = "waiting_for_key_frame"
                return None
            if plane.shape != self._out.shape:
                self.last_drop_reason = "stream_size_mismatch"
                for decoder in self._decoders.values():
                    decoder.reset()
                return None
            planes[role] = plane
        layout = self._layout
        if packet.non_roi is None:
            combined = planes["roi"]
        else:
            combined = select(layout, planes["roi"], planes["non_roi"], blocks, self._out)
        frame = DecodedFrame(seq=packet.seq, rgb=layout.i420_to_rgb(combined), blocks=blocks)
        frame.motion = self._motion(packet, blocks, combined)
        if self.keep_streams and packet.non_roi is not None:
            frame.roi_stream_rgb = layout.i420_to_rgb(planes["roi"])
            frame.non_roi_stream_rgb = layout.i420_to_rgb(planes["non_roi"])
        frame.decode_ms = (time.perf_counter() - start) * 1e3
        return frame

    def _motion(self, packet: SacPacket, blocks: np.ndarray,
                combined: np.ndarray) -> MotionField | None:
        """The merged motion of this frame, while every stream's decoder exports it."""
        roles = ("roi", "non_roi") if packet.non_roi is not None else ("roi",)
        if not (self.export_motion and all(self._decoders[r].exporting for r in roles)):
            self._previous_y = None
            return None
        layout = self._layout
        current_y = combined[:layout.padded_height]
        non_roi = self._decoders["non_roi"].last_vectors if packet.non_roi is not None else None
        try:
            field = motion_field(self._decoders["roi"].last_vectors, non_roi,
                                 packet.non_roi is not None, blocks, packet.block_size,
                                 packet.width, packet.height, packet.key_frame, current_y,
                                 self._previous_y, packet.seq)
        except (ValueError, IndexError, TypeError) as exc:
            # Motion is a by-product: a vector table it cannot read costs the motion of
            # this frame, never the frame itself.
            self.motion_errors += 1
            self.last_motion_error = f"{type(exc).__name__}: {exc}"
            self._previous_y = None
            return None
        if self._previous_y is None or self._previous_y.shape != current_y.shape:
            self._previous_y = np.empty_like(current_y)
        np.copyto(self._previous_y, current_y)  # combined may be a reused buffer
        return field

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
