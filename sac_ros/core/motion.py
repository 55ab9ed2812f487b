"""Motion from the bitstream: per-16x16-block vectors, residuals and the class-map warp.

The ECU's H.264 decoders export the motion vectors they decode (FFmpeg ``export_mvs``,
see ``codec.StreamDecoder(export_motion=True)``): one entry per inter-coded partition,
with the partition's centre in the current frame (``dst``), where it came from in the
reference (``src``), and the motion in 1/``motion_scale`` pixels. ``block_motion``
turns those into one vector per 16x16 block (partitions averaged by area), ``merge``
takes each block from the stream it was coded in (dual_crf: ROI blocks from the ROI
stream, the rest from the non-ROI stream), and ``MotionField`` is what msg/SacMotion.msg
carries:

- ``dx``, ``dy`` (int16, quarter pixels): content(x, y, t) ~ content(x + dx/4, y + dy/4, t-1);
- ``unreliable`` (bool): no usable vector (intra-coded, a future reference, a key frame,
  or a stream without exported vectors: FFmpeg's HEVC decoder exports none);
- ``residual`` (uint8): mean absolute luma error of the block after applying its vector
  (rounded to whole pixels) to the previous reconstruction; 255 when there is none.

``warp_class_map`` carries a class map from t-1 to t with the field (nearest pixel;
unreliable blocks keep what they had, the caller decides whether to re-segment).

FFmpeg does not say which reference frame a vector points at: with more than one
reference (x264 preset ``faster`` and slower) a vector may point two frames back. The
residual catches those (it is measured against the previous frame only).
"""

from __future__ import annotations

import array
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

MOTION_BLOCK = 16          # the motion grid: H.264 macroblocks
NO_RESIDUAL = 255          # residual of a block with nothing to compare against
MAX_QUARTER_PEL = 32767    # int16 on the wire
# A block needs at least this share of its area covered by inter partitions to get a
# vector (an H.264 macroblock is all inter or all intra; partial cover is a frame edge).
MIN_COVER = 0.5


def grid(width: int, height: int, block: int = MOTION_BLOCK) -> tuple[int, int]:
    """(rows, cols) of the motion grid of a width x height frame."""
    return -(-height // block), -(-width // block)


@dataclass
class MotionField:
    """One frame's motion on the 16x16 block grid (mirrors msg/SacMotion.msg)."""

    rows: int
    cols: int
    key_frame: bool
    dx: np.ndarray          # (rows, cols) int16, quarter pixels
    dy: np.ndarray          # (rows, cols) int16, quarter pixels
    unreliable: np.ndarray  # (rows, cols) bool
    residual: np.ndarray    # (rows, cols) uint8
    block_size: int = MOTION_BLOCK
    seq: int = 0

    @classmethod
    def still(cls, rows: int, cols: int, key_frame: bool = True) -> MotionField:
        """No motion known: every block unreliable, nothing to compare against."""
        shape = (rows, cols)
        return cls(rows, cols, key_frame, np.zeros(shape, np.int16), np.zeros(shape, np.int16),
                   np.ones(shape, bool), np.full(shape, NO_RESIDUAL, np.uint8))

    def refresh_blocks(self, max_residual: float) -> np.ndarray:
        """Blocks whose vector cannot be trusted: unreliable, or residual above the bound."""
        return self.unreliable | (self.residual > max_residual)


def block_motion(vectors: np.ndarray | None, rows: int, cols: int,
                 block: int = MOTION_BLOCK) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(dx, dy, unreliable) per block from FFmpeg's exported vectors (quarter pixels).

    ``vectors``: the structured array of PyAV's ``MotionVectors.to_ndarray()`` (fields
    source, w, h, dst_x, dst_y, motion_x, motion_y, motion_scale), or None when the
    stream exported none (a key frame, or a decoder without ``export_mvs``).
    """
    shape = (rows, cols)
    if vectors is None or len(vectors) == 0:
        return np.zeros(shape, np.int16), np.zeros(shape, np.int16), np.ones(shape, bool)
    # Past references only (source < 0); there are no B-frames, but a stream from
    # elsewhere might have them.
    past = vectors[vectors["source"] < 0]
    col = np.clip(past["dst_x"].astype(np.int64) // block, 0, cols - 1)
    row = np.clip(past["dst_y"].astype(np.int64) // block, 0, rows - 1)
    index = row * cols + col
    area = past["w"].astype(np.float64) * past["h"]
    # motion / motion_scale pixels = src - dst: where the content was in the previous frame.
    scale = np.maximum(past["motion_scale"].astype(np.float64), 1.0)
    qx = past["motion_x"] * 4.0 / scale
    qy = past["motion_y"] * 4.0 / scale
    n = rows * cols
    cover = np.bincount(index, area, n)
    with np.errstate(invalid="ignore", divide="ignore"):
        dx = np.bincount(index, area * qx, n) / cover
        dy = np.bincount(index, area * qy, n) / cover
    unreliable = cover < MIN_COVER * block * block
    dx = np.where(unreliable, 0.0, dx)
    dy = np.where(unreliable, 0.0, dy)
    dx = np.clip(np.rint(dx), -MAX_QUARTER_PEL, MAX_QUARTER_PEL).astype(np.int16)
    dy = np.clip(np.rint(dy), -MAX_QUARTER_PEL, MAX_QUARTER_PEL).astype(np.int16)
    return dx.reshape(shape), dy.reshape(shape), unreliable.reshape(shape)


def roi_on_motion_grid(blocks: np.ndarray, mask_block: int, rows: int, cols: int,
                       block: int = MOTION_BLOCK) -> np.ndarray:
    """The ROI mask (on the packet's grid of ``mask_block`` px) on the motion grid.

    A 16 px block covered by coarser mask blocks takes their value; one that spans
    finer (8 px) mask blocks is ROI when any of them is (it holds ROI-stream pixels).
    """
    if mask_block == block and blocks.shape == (rows, cols):
        return blocks
    # Sample the mask at every pixel row/column the motion grid covers, then reduce.
    ys = np.minimum(np.arange(rows * block) // mask_block, blocks.shape[0] - 1)
    xs = np.minimum(np.arange(cols * block) // mask_block, blocks.shape[1] - 1)
    step = min(mask_block, block)
    fine = blocks[ys[::step]][:, xs[::step]]
    k = block // step
    return fine.reshape(rows, k, cols, k).any(axis=(1, 3))


def merge(roi: tuple[np.ndarray, np.ndarray, np.ndarray],
          non_roi: tuple[np.ndarray, np.ndarray, np.ndarray] | None,
          roi_blocks: np.ndarray | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each block's (dx, dy, unreliable) from the stream it was coded in.

    ``roi_blocks`` on the motion grid (``roi_on_motion_grid``); ``non_roi`` None for the
    one-stream modes (uniform, roi_qp), where the ROI stream codes every block.
    """
    if non_roi is None:
        return roi
    keep = roi_blocks.astype(bool)
    return tuple(np.where(keep, a, b) for a, b in zip(roi, non_roi, strict=True))


def whole_pixels(quarter: np.ndarray) -> np.ndarray:
    """Quarter-pixel vectors rounded to whole pixels (int64)."""
    return np.floor_divide(quarter.astype(np.int64) + 2, 4)


def _shifted_blocks(image: np.ndarray, dx: np.ndarray, dy: np.ndarray,
                    block: int) -> np.ndarray:
    """(rows, cols, block, block): each block of ``image`` (H x W) taken from where its
    vector says, whole pixels, the frame's edge repeated outside it."""
    height, width = image.shape
    rows, cols = dx.shape
    # A vector longer than the frame lands on its edge either way: clamping it keeps the
    # padding small whatever a (hostile) message says.
    dx_px = np.clip(whole_pixels(dx), -width, width)
    dy_px = np.clip(whole_pixels(dy), -height, height)
    margin = int(max(np.abs(dx_px).max(initial=0), np.abs(dy_px).max(initial=0)))
    # Edge padding = clamping the source coordinates; the grid may overhang the frame.
    padded = np.pad(image, ((margin, margin + max(0, rows * block - height)),
                            (margin, margin + max(0, cols * block - width))), mode="edge")
    windows = np.lib.stride_tricks.sliding_window_view(padded, (block, block))
    top = (np.arange(rows) * block)[:, None] + margin + dy_px
    left = (np.arange(cols) * block)[None, :] + margin + dx_px
    return windows[top, left]  # one fancy index per block, not per pixel


def shift_blocks(image: np.ndarray, dx: np.ndarray, dy: np.ndarray,
                 block: int = MOTION_BLOCK) -> np.ndarray:
    """``image`` (H x W) moved per block: out(x, y) = image(x + dx/4, y + dy/4).

    Vectors are rounded to whole pixels (nearest neighbour, no new values: what a class
    map needs); sources outside the frame are clamped to its edge.
    """
    height, width = image.shape
    rows, cols = dx.shape
    blocks = _shifted_blocks(image, dx, dy, block)
    return blocks.swapaxes(1, 2).reshape(rows * block, cols * block)[:height, :width]


def residual(current_y: np.ndarray, previous_y: np.ndarray, dx: np.ndarray, dy: np.ndarray,
             block: int = MOTION_BLOCK) -> np.ndarray:
    """Per block: mean |current - previous moved by (dx, dy)| of the luma, 0-255 (uint8).

    Both planes are the padded luma (at least the grid's extent); only the
    ``rows x cols`` blocks of ``dx`` are measured.
    """
    rows, cols = dx.shape
    cur = current_y[:rows * block, :cols * block].reshape(rows, block, cols, block)
    predicted = _shifted_blocks(previous_y[:rows * block, :cols * block], dx, dy, block)
    cur = cur.swapaxes(1, 2)
    # |a - b| in uint8 without widening whole frames: max - min.
    error = np.maximum(cur, predicted) - np.minimum(cur, predicted)
    sums = error.reshape(rows, cols, block * block).sum(axis=2, dtype=np.uint32)
    return ((sums + block * block // 2) // (block * block)).astype(np.uint8)


def motion_field(roi_vectors: np.ndarray | None, non_roi_vectors: np.ndarray | None,
                 dual: bool, roi_blocks: np.ndarray | None, mask_block: int,
                 width: int, height: int, key_frame: bool, current_y: np.ndarray,
                 previous_y: np.ndarray | None, seq: int = 0) -> MotionField:
    """The whole ECU step: vectors of one or two streams -> merged field with residuals.

    ``current_y`` / ``previous_y``: the combined reconstruction's padded luma now and one
    frame earlier (``previous_y`` None after a gap: every residual is then 255).
    """
    rows, cols = grid(width, height)
    if key_frame:
        dx = dy = np.zeros((rows, cols), np.int16)
        unreliable = np.ones((rows, cols), bool)
    else:
        roi = block_motion(roi_vectors, rows, cols)
        non_roi = block_motion(non_roi_vectors, rows, cols) if dual else None
        grid_roi = (roi_on_motion_grid(roi_blocks, mask_block, rows, cols) if dual else None)
        dx, dy, unreliable = merge(roi, non_roi, grid_roi)
    if previous_y is None or previous_y.shape != current_y.shape \
            or current_y.shape[0] < rows * MOTION_BLOCK or current_y.shape[1] < cols * MOTION_BLOCK:
        res = np.full((rows, cols), NO_RESIDUAL, np.uint8)
    else:
        res = residual(current_y, previous_y, dx, dy)
    return MotionField(rows, cols, key_frame, dx, dy, unreliable, res, MOTION_BLOCK, seq)


def warp_class_map(class_map: np.ndarray, field: MotionField) -> np.ndarray:
    """The class map of t-1 carried to t (unreliable blocks keep their old classes).

    ``class_map`` at frame resolution (its grid must be the field's).
    """
    height, width = class_map.shape[:2]
    if grid(width, height, field.block_size) != (field.rows, field.cols):
        raise ValueError(f"class map {width}x{height} does not fit a {field.rows}x"
                         f"{field.cols} motion grid of {field.block_size} px blocks")
    dx = np.where(field.unreliable, 0, field.dx)
    dy = np.where(field.unreliable, 0, field.dy)
    return shift_blocks(class_map, dx, dy, field.block_size)


# --- the message, duck-typed (core stays ROS-free; the nodes pass sac_ros.msg.SacMotion) ---

def fill_msg(msg, field: MotionField):
    """Write ``field`` into a SacMotion message (header left to the caller)."""
    msg.seq = int(field.seq)
    msg.block_size = int(field.block_size)
    msg.cols, msg.rows = int(field.cols), int(field.rows)
    msg.key_frame = bool(field.key_frame)
    # array.array: what the generated messages store, filled from bytes without a loop.
    msg.dx = array.array("h", field.dx.astype(np.int16).tobytes())
    msg.dy = array.array("h", field.dy.astype(np.int16).tobytes())
    msg.unreliable = array.array("B", field.unreliable.astype(np.uint8).tobytes())
    msg.residual = array.array("B", field.residual.astype(np.uint8).tobytes())
    return msg


def field_from_msg(msg) -> MotionField:
    """A SacMotion message as a MotionField; ValueError if its arrays do not fit its grid."""
    rows, cols, block = int(msg.rows), int(msg.cols), int(msg.block_size)
    if block != MOTION_BLOCK or not (1 <= rows <= 8192 and 1 <= cols <= 8192):
        raise ValueError(f"motion grid {rows}x{cols} of {block} px blocks is not supported")
    n = rows * cols
    arrays = [np.asarray(a) for a in (msg.dx, msg.dy, msg.unreliable, msg.residual)]
    if any(a.size != n for a in arrays):
        raise ValueError(f"motion arrays of sizes {[a.size for a in arrays]} for {rows}x{cols} "
                         "blocks")
    dx, dy, unreliable, res = arrays
    return MotionField(rows, cols, bool(msg.key_frame),
                       dx.astype(np.int16).reshape(rows, cols),
                       dy.astype(np.int16).reshape(rows, cols),
                       unreliable.astype(bool).reshape(rows, cols),
                       res.astype(np.uint8).reshape(rows, cols), block, int(msg.seq))


# --- propagation of a class map between full segmentations (seed 003) ---

PROPAGATED = "propagated"
# Why a frame was segmented in full instead ("due" = its turn in segment_every).
FULL_REASONS = ("first", "key_frame", "due", "no_motion", "gap", "unreliable", "grid")


class ClassMapPropagator:
    """Decides per frame: warp the last class map with the frame's motion, or segment.

    A frame is segmented in full at a key frame, every ``segment_every`` frames, when
    its motion is missing, when the motion does not follow the last class map's frame
    (a sequence gap: frames dropped or superseded in between), or when more than
    ``resegment_share`` of its blocks are unreliable or have a residual above
    ``max_residual`` (the vectors do not explain the picture: a cut, occlusions, fast
    motion). Otherwise the last map is warped (``warp_class_map``). ``counts`` holds
    how many frames went which way (``PROPAGATED`` or one of ``FULL_REASONS``).
    """

    def __init__(self, segment_every: int = 1, max_residual: float = 24.0,
                 resegment_share: float = 0.4):
        if int(segment_every) < 1:
            raise ValueError(f"segment_every {segment_every} must be at least 1")
        if not 0.0 <= float(resegment_share) <= 1.0:
            raise ValueError(f"resegment_share {resegment_share} is outside 0-1")
        self.segment_every = int(segment_every)
        self.max_residual = float(max_residual)
        self.resegment_share = float(resegment_share)
        self.counts: dict[str, int] = dict.fromkeys((PROPAGATED, *FULL_REASONS), 0)
        self._map: np.ndarray | None = None
        self._seq: int | None = None
        self._since_full = 0

    @property
    def last_seq(self) -> int | None:
        """Sequence number of the frame the current class map belongs to (None: unknown)."""
        return self._seq

    def plan(self, field: MotionField | None, shape: tuple[int, int],
             between: Sequence[MotionField] = ()) -> str:
        """``PROPAGATED`` or the reason to segment a frame of ``shape`` (H, W) in full.

        ``between``: the motion of the frames skipped since the last class map (a busy
        node's superseded frames), oldest first; with all of them the map is carried
        across the skipped frames too, else the jump in ``seq`` is a "gap".
        """
        if self._map is None:
            return "first"
        if self.segment_every == 1:
            return "due"
        if field is None:
            return "no_motion"
        if field.key_frame:
            return "key_frame"
        steps = [*between, field]
        if self._seq is None or [f.seq for f in steps] != list(
                range(self._seq + 1, self._seq + 1 + len(steps))) \
                or any(f.key_frame for f in between):
            return "gap"
        # Drift grows with every frame of video, processed or skipped.
        if self._since_full + len(steps) >= self.segment_every:
            return "due"
        if any(grid(shape[1], shape[0], f.block_size) != (f.rows, f.cols) for f in steps) \
                or self._map.shape != shape:
            return "grid"
        if any(f.refresh_blocks(self.max_residual).mean() > self.resegment_share
               for f in steps):
            return "unreliable"
        return PROPAGATED

    def propagate(self, field: MotionField, between: Sequence[MotionField] = ()) -> np.ndarray:
        """The last class map warped to the frame of ``field`` (after ``plan`` said so),
        through the skipped frames' motion ``between``."""
        for step in (*between, field):
            self._map = warp_class_map(self._map, step)
        self._seq = field.seq
        self._since_full += 1 + len(between)
        self.counts[PROPAGATED] += 1
        return self._map

    def segmented(self, class_map: np.ndarray, field: MotionField | None, reason: str) -> None:
        """A full segmentation of the frame of ``field`` (None: its motion is unknown)."""
        self._map = class_map
        self._seq = None if field is None else field.seq
        self._since_full = 0
        self.counts[reason] = self.counts.get(reason, 0) + 1

    @property
    def full(self) -> int:
        """Frames segmented in full."""
        return sum(n for reason, n in self.counts.items() if reason != PROPAGATED)
