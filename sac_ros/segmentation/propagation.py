"""A segmenter that runs on key frames and every N-th frame, and carries its mask in between.

Seed 003 segments the I-frames fully and propagates the result through the P-frames. Here
the sensor does the same with its 16x16 ROI block mask: a frame is fully segmented when
it is a key frame of the encoder (the decoder restarts there, so the mask does too), when
``segment_every`` frames have passed since the last full segmentation, or when there is
nothing to carry (the first frame, a new frame size). In between, the last mask is moved
along the block motion between consecutive frames (``sac_ros.core.blockmatch``), which
costs a fraction of a network run. The config's hysteresis (``BlockHysteresis``) is
applied to every frame's mask, segmented or carried, so boundary blocks do not flicker.
"""

from __future__ import annotations

import numpy as np

from sac_ros.core.blockmatch import (
    BlockMatcher,
    blocks_of_cells,
    cells_of_blocks,
    near_boundary,
    warp_cells,
)
from sac_ros.core.errors import SacError
from sac_ros.core.mask import BlockHysteresis, expand_blocks

MAX_SEGMENT_EVERY = 1000
CARRIES = ("motion", "still")  # how a mask is carried between full segmentations


def check_segment_every(value) -> int:
    """``segment_every`` must be a whole number of frames in 1-1000 (1 = every frame)."""
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or not (
            1 <= value <= MAX_SEGMENT_EVERY):
        raise SacError(f"segment_every must be a whole number of frames in "
                       f"1-{MAX_SEGMENT_EVERY}, got {value!r}")
    return int(value)


class PropagatingSegmenter:
    """``block_roi(rgb, key_frame)`` as a ``Segmenter``'s, segmenting only when it must.

    ``segmented`` says whether the last call ran the network; ``segmented_frames`` and
    ``carried_frames`` count the calls of each kind.
    """

    def __init__(self, segmenter, segment_every: int = 1, hold_frames: int = 0,
                 matcher: BlockMatcher | None = None, carry: str = "motion"):
        if carry not in CARRIES:
            raise SacError(f"unknown mask carry '{carry}'; choose {' or '.join(CARRIES)}")
        self.segmenter = segmenter
        self.segment_every = check_segment_every(segment_every)
        self.carry = carry  # motion: along the block motion; still: the last mask as it was
        self.matcher = matcher or BlockMatcher()
        self._hysteresis = BlockHysteresis(hold_frames)
        self.segmented = False
        self.segmented_frames = 0
        self.carried_frames = 0
        self._cells: np.ndarray | None = None  # the carried mask at 1/4 size
        self._luma: np.ndarray | None = None   # the previous frame, as the matcher sees it
        self._blocks: np.ndarray | None = None  # the previous frame's mask, before hysteresis
        self._size: tuple[int, int] | None = None
        self._since_segmented = 0

    @property
    def name(self) -> str:
        every = ("every frame" if self.segment_every == 1
                 else f"every {self.segment_every} frames and key frames, carried in between"
                 + (" (held still)" if self.carry == "still" else ""))
        return f"{self.segmenter.name}, segmented {every}"

    def reset(self) -> None:
        """Forget the carried mask and the hysteresis: the next frame is segmented."""
        self._cells = self._luma = self._blocks = None
        self._hysteresis.reset()

    def block_roi(self, rgb: np.ndarray, key_frame: bool = False) -> np.ndarray:
        """(ceil(H/16), ceil(W/16)) bool macroblock mask of this frame (a new array)."""
        if self.segment_every == 1:
            blocks = self.segmenter.block_roi(rgb)
            self._count(True)
            return self._hysteresis.update(blocks).copy()
        size = (rgb.shape[0], rgb.shape[1])
        full = (key_frame or self._blocks is None or self._size != size
                or self._since_segmented >= self.segment_every)
        luma = self.matcher.luma(rgb) if self.carry == "motion" else None
        cell = self.matcher.cell
        if full:
            blocks = self.segmenter.block_roi(rgb)
            self._cells = cells_of_blocks(blocks, cell) if luma is not None else None
            self._since_segmented = 1
        elif luma is None:  # held still: the last mask as it was
            blocks = self._blocks
            self._since_segmented += 1
        else:
            # Blocks far from the ROI boundary cannot change: refine the motion near it.
            active = near_boundary(self._blocks, -(-self.matcher.reach // cell))
            vectors = self.matcher.motion(luma, self._luma, active)
            self._cells = warp_cells(self._cells, vectors, cell)
            blocks = blocks_of_cells(self._cells, cell)
            self._since_segmented += 1
        self._luma, self._blocks, self._size = luma, blocks, size
        self._count(full)
        return self._hysteresis.update(blocks).copy()

    def _count(self, segmented: bool) -> None:
        self.segmented = segmented
        if segmented:
            self.segmented_frames += 1
        else:
            self.carried_frames += 1

    def close(self) -> None:
        self.segmenter.close()


class PropagatingMaskSource:
    """The ``MaskSource`` protocol over a ``PropagatingSegmenter``, for offline runs that
    code the clip with key frames every ``gop`` frames from frame 0."""

    def __init__(self, propagating: PropagatingSegmenter, gop: int):
        if gop < 1:
            raise SacError(f"gop must be at least 1, got {gop}")
        self.propagating = propagating
        self.gop = int(gop)

    def roi_pixels(self, index: int, rgb: np.ndarray, name: str | None = None) -> np.ndarray:
        blocks = self.propagating.block_roi(rgb, key_frame=index % self.gop == 0)
        return expand_blocks(blocks, rgb.shape[0], rgb.shape[1])


def propagating_mask_source(model: str, non_roi_classes: dict, segment_every: int,
                            gop: int, carry: str = "motion"
                            ) -> tuple[PropagatingMaskSource, str]:
    """A segmenter segmenting every ``segment_every``-th frame and the key frames, as the
    mask source of an offline run (``sac eval --model``); (mask source, description).
    The hysteresis is left to the caller (``hold_blocks``), as for the other sources."""
    from sac_ros.segmentation.loader import segmenter_mask_source

    source, _ = segmenter_mask_source(model, non_roi_classes)
    propagating = PropagatingSegmenter(source.segmenter, segment_every, carry=carry)
    return PropagatingMaskSource(propagating, gop), f"segmenter {propagating.name}"
