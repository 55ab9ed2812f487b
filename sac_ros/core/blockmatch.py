"""Block motion between consecutive raw frames, and a block mask carried along it (ROS-free).

Between two full segmentations the sensor moves its 16x16 ROI block mask with the
picture instead of running the network. The motion comes from block matching on
downscaled luma, two levels:

- coarse: luma at 1/8 size, one vector per macroblock (a 2x2 cell), every candidate in
  +-``search`` steps (+-16 full-size pixels at the default 2) scored over the 5x5 blocks
  around it, on the whole frame at once; then a 3x3 median of the vector field;
- fine: luma at 1/4 size, the coarse vector doubled and refined by +-2 steps (4 full-size
  pixels a step), matched over the block and 2 pixels around it; only for the blocks a
  move can change (near the ROI boundary, ``near_boundary``) when the caller says which.

Scores are sums of absolute differences; a small penalty per step of motion keeps flat,
ambiguous blocks still.

The mask is carried at 1/4 size (4x4 cells per macroblock): each cell takes the value of
the cell its block's vector points to in the previous frame, so motion of less than a
block adds up over frames; a block is ROI when at least half of its cells are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy.ndimage import binary_dilation, median_filter

from sac_ros.core.errors import SacError
from sac_ros.core.mask import BLOCK_SIZE, block_grid

FINE_SCALE = 4       # the fine level works on luma at 1/4 size
COARSE_SCALE = 8     # the coarse level at 1/8 size
REFINE_RADIUS = 2     # the fine level's search around the doubled coarse vector
MOTION_PENALTY = 0.25  # SAD per window pixel added per step of motion: unsure blocks stay still


def small_luma(rgb: np.ndarray, rows: int, cols: int, block_size: int = BLOCK_SIZE) -> np.ndarray:
    """Luma at 1/4 size, edge-padded to the block grid (rows x cols blocks), float32.

    Cheap on purpose: the green channel (most of luma), the mean of 4 of each 4x4 pixels'
    16. Good enough to match blocks on; not a picture.
    """
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise SacError(f"block matching needs an RGB uint8 frame, got shape {rgb.shape} "
                       f"{rgb.dtype}")
    if rgb.shape[0] < block_size or rgb.shape[1] < block_size:
        raise SacError(f"frame {rgb.shape[1]}x{rgb.shape[0]} is smaller than one block")
    cell = block_size // FINE_SCALE
    height, width = rgb.shape[0] // FINE_SCALE, rgb.shape[1] // FINE_SCALE
    green = rgb[:height * FINE_SCALE, :width * FINE_SCALE, 1]
    total = green[0::4, 0::4].astype(np.float32)  # strided views: no pass over the frame
    total += green[0::4, 2::4]
    total += green[2::4, 0::4]
    total += green[2::4, 2::4]
    luma = total * np.float32(0.25)
    return np.pad(luma, ((0, rows * cell - height), (0, cols * cell - width)), mode="edge")


def _halve(image: np.ndarray) -> np.ndarray:
    """2x2 means (the sides are even)."""
    total = image[0::2, 0::2] + image[0::2, 1::2]
    total += image[1::2, 0::2]
    total += image[1::2, 1::2]
    return total * np.float32(0.25)


def _window_costs(diffs: np.ndarray, cell: int, reach: int) -> np.ndarray:
    """Per candidate and block: the absolute differences summed over the block and the
    ``reach`` blocks around it (edges replicated). diffs: (k, H, W) -> (k, rows, cols)."""
    # Strided slices added up: much faster than a reshaped sum over inner axes.
    columns = diffs[:, :, 0::cell].copy()
    for offset in range(1, cell):
        columns += diffs[:, :, offset::cell]
    sums = columns[:, 0::cell].copy()
    for offset in range(1, cell):
        sums += columns[:, offset::cell]
    rows, cols = sums.shape[1:]
    if reach == 0:
        return sums
    # a box sum is separable: along the rows, then along the columns
    padded = np.pad(sums, ((0, 0), (reach, reach), (0, 0)), mode="edge")
    across = padded[:, :rows].copy()
    for dy in range(1, 2 * reach + 1):
        across += padded[:, dy:dy + rows]
    padded = np.pad(across, ((0, 0), (0, 0), (reach, reach)), mode="edge")
    total = padded[:, :, :cols].copy()
    for dx in range(1, 2 * reach + 1):
        total += padded[:, :, dx:dx + cols]
    return total


def _choose(costs: np.ndarray, vectors: np.ndarray, window_pixels: int) -> np.ndarray:
    """The candidate vector of least cost per block, after a penalty per step of motion.
    costs (k, rows, cols); vectors (k, rows, cols, 2) or (k, 2)."""
    if vectors.ndim == 2:
        vectors = vectors[:, None, None, :]
    costs = costs + (MOTION_PENALTY * window_pixels) * np.abs(vectors).sum(axis=-1)
    best = costs.argmin(axis=0)
    vectors = np.broadcast_to(vectors, (*costs.shape, 2))
    return np.take_along_axis(vectors, best[None, ..., None], axis=0)[0]


def _coarse_search(current: np.ndarray, previous: np.ndarray, cell: int,
                   search: int) -> np.ndarray:
    """Every vector in +-search for every block of ``cell`` pixels, matched over the 5x5
    blocks around it (the coarse image is smooth: small windows match it badly);
    (rows, cols, 2)."""
    height, width = current.shape
    shifted = sliding_window_view(np.pad(previous, search, mode="edge"), (height, width))
    side = 2 * search + 1
    diffs = np.abs(shifted.reshape(side * side, height, width) - current)
    steps = np.arange(-search, search + 1)
    vectors = np.stack(np.meshgrid(steps, steps, indexing="ij"), axis=-1).reshape(-1, 2)
    return _choose(_window_costs(diffs, cell, 2), vectors, (5 * cell) ** 2)


def _refine(current: np.ndarray, previous: np.ndarray, base: np.ndarray, cell: int,
            rows: np.ndarray, cols: np.ndarray, radius: int = REFINE_RADIUS) -> np.ndarray:
    """The base vectors of the blocks at (rows, cols) refined by +-radius pixels each way,
    matched over the block and 2 pixels around it. (n, 2)."""
    margin = 2
    window = cell + 2 * margin
    base = base[rows, cols]
    reach = int(np.abs(base).max(initial=0)) + radius + margin
    top, left = rows * cell, cols * cell
    mine = sliding_window_view(np.pad(current, margin, mode="edge"),
                               (window, window))[top, left]               # n x w x w
    side = window + 2 * radius
    theirs = sliding_window_view(np.pad(previous, reach, mode="edge"), (side, side))
    theirs = theirs[top + reach - margin - radius + base[:, 0],
                    left + reach - margin - radius + base[:, 1]]          # n x side x side
    steps = [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)]
    costs = np.stack([np.abs(theirs[:, radius + dy:radius + dy + window,
                                    radius + dx:radius + dx + window] - mine).sum(axis=(1, 2))
                      for dy, dx in steps])                               # k x n
    vectors = base[None] + np.array(steps)[:, None, :]                    # k x n x 2
    costs += (MOTION_PENALTY * window * window) * np.abs(vectors).sum(axis=-1)
    return vectors[costs.argmin(axis=0), np.arange(len(rows))]


def _smooth(vectors: np.ndarray) -> np.ndarray:
    """3x3 median of each component: one wrong block among right ones follows them."""
    return np.stack([median_filter(vectors[..., i], size=3, mode="nearest")
                     for i in range(2)], axis=-1)


@dataclass(frozen=True)
class BlockMatcher:
    """Backward motion per macroblock: for each block of the current frame, where its
    content was in the previous frame, in 1/4-size pixels (multiply by 4 for full size)."""

    search: int = 2          # coarse range in 1/8-size pixels: +-2 = +-16 full-size pixels
    block_size: int = BLOCK_SIZE

    def __post_init__(self):
        if not 1 <= self.search <= 8:
            raise SacError(f"block-matching search range {self.search} is outside 1-8")
        if self.block_size % COARSE_SCALE:
            raise SacError(f"block matching needs blocks of a multiple of {COARSE_SCALE} "
                           f"pixels, got {self.block_size}")

    @property
    def cell(self) -> int:
        """Pixels of one block at 1/4 size."""
        return self.block_size // FINE_SCALE

    @property
    def reach(self) -> int:
        """The longest vector, in 1/4-size pixels."""
        return 2 * self.search + REFINE_RADIUS

    def luma(self, rgb: np.ndarray) -> np.ndarray:
        rows, cols = block_grid(rgb.shape[0], rgb.shape[1], self.block_size)
        return small_luma(rgb, rows, cols, self.block_size)

    def motion(self, current: np.ndarray, previous: np.ndarray,
               active: np.ndarray | None = None) -> np.ndarray:
        """(rows, cols, 2) int vectors (dy, dx) at 1/4 size from two ``luma`` images.
        ``active`` (rows, cols) bool: refine only these blocks (the others keep the
        coarse vector); all by default."""
        if current.shape != previous.shape:
            raise SacError(f"frames of different sizes ({current.shape} and {previous.shape}) "
                           "cannot be matched")
        vectors = 2 * _smooth(_coarse_search(_halve(current), _halve(previous),
                                             self.cell // 2, self.search))
        if active is None:
            active = np.ones(vectors.shape[:2], bool)
        rows, cols = np.nonzero(active)
        if rows.size:
            vectors[rows, cols] = _refine(current, previous, vectors, self.cell, rows, cols)
        return vectors


def warp_cells(cells: np.ndarray, vectors: np.ndarray, cell: int) -> np.ndarray:
    """Move a 1/4-size map along backward block vectors: each pixel of a block takes the
    value at (its position + the block's vector) in ``cells``, clamped to the edges."""
    height, width = cells.shape
    rows, cols = vectors.shape[:2]
    if (rows * cell, cols * cell) != (height, width):
        raise SacError(f"a {width}x{height} map does not fit {cols}x{rows} blocks of {cell}")
    ys = np.arange(height)[:, None] + np.repeat(vectors[..., 0], cell, axis=0).repeat(cell, 1)
    xs = np.arange(width)[None, :] + np.repeat(vectors[..., 1], cell, axis=0).repeat(cell, 1)
    return cells[np.clip(ys, 0, height - 1), np.clip(xs, 0, width - 1)]


def cells_of_blocks(blocks: np.ndarray, cell: int) -> np.ndarray:
    """A block mask at the 1/4-size cell resolution (each block a cell x cell square)."""
    return np.repeat(np.repeat(blocks, cell, axis=0), cell, axis=1)


def blocks_of_cells(cells: np.ndarray, cell: int) -> np.ndarray:
    """A block is ROI when at least half of its cells are."""
    height, width = cells.shape
    counts = cells.reshape(height // cell, cell, width // cell, cell).sum(axis=(1, 3))
    return counts * 2 >= cell * cell


def near_boundary(blocks: np.ndarray, radius: int) -> np.ndarray:
    """Blocks within ``radius`` blocks of both an ROI and a non-ROI block: the only ones a
    move of up to ``radius`` blocks can change."""
    square = np.ones((2 * radius + 1, 2 * radius + 1), bool)
    return binary_dilation(blocks, square) & binary_dilation(~blocks, square)
