"""RGB <-> YUV 4:2:0 planes padded to the block grid, and per-block split/select.

Frames are kept as one I420 buffer of shape (H*3/2, W) - the layout PyAV's
``yuv420p`` ``from_ndarray``/``to_ndarray`` use - with H and W padded up to a
multiple of the block size. Chroma blocks are half the luma block size, so a
16x16 block owns exactly its 8x8 U and V samples and a block-snapped split
never straddles a chroma sample (no boundary "flash").
"""

from __future__ import annotations

import av
import numpy as np

from sac_ros.core.errors import SacError
from sac_ros.core.mask import BLOCK_SIZE, block_grid

# BT.601 limited-range black: what RGB (0, 0, 0) converts to.
BLACK_Y, BLACK_C = 16, 128


def as_rgb(frame: np.ndarray) -> np.ndarray:
    """Convert mono, RGBA or 16-bit frames to uint8 RGB (H x W x 3)."""
    arr = np.asarray(frame)
    if arr.dtype == np.uint16:
        arr = (arr >> 8).astype(np.uint8)
    elif arr.dtype != np.uint8:
        raise SacError(f"unsupported pixel type {arr.dtype}; expected 8- or 16-bit images")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    elif arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[:, :, :3]
    elif arr.ndim == 3 and arr.shape[2] == 1:
        arr = np.repeat(arr, 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise SacError(f"unsupported frame shape {arr.shape}; expected H x W x 3 RGB")
    return np.ascontiguousarray(arr)


class PlaneLayout:
    """Geometry of a frame of a given size on the padded block grid."""

    def __init__(self, height: int, width: int, block_size: int = BLOCK_SIZE):
        if height < 2 or width < 2:
            raise SacError(f"frame size {width}x{height} is too small")
        if block_size % 2:
            raise SacError("block size must be even for 4:2:0 chroma")
        self.height, self.width, self.block_size = height, width, block_size
        self.rows, self.cols = block_grid(height, width, block_size)
        self.padded_height = self.rows * block_size
        self.padded_width = self.cols * block_size
        self._rgb_pad = np.empty((self.padded_height, self.padded_width, 3), np.uint8)

    def new_i420(self) -> np.ndarray:
        return np.empty((self.padded_height * 3 // 2, self.padded_width), np.uint8)

    def planes(self, i420: np.ndarray):
        """Views of Y, U and V, each reshaped to (rows, b, cols, b) block tiles."""
        h, _w, b, rows, cols = (self.padded_height, self.padded_width, self.block_size,
                               self.rows, self.cols)
        y = i420[:h].reshape(rows, b, cols, b)
        quarter = h // 4
        u = i420[h:h + quarter].reshape(rows, b // 2, cols, b // 2)
        v = i420[h + quarter:].reshape(rows, b // 2, cols, b // 2)
        return y, u, v

    def rgb_to_i420(self, rgb: np.ndarray) -> np.ndarray:
        """Pad by edge replication to the block grid and convert to I420."""
        if rgb.shape[:2] != (self.height, self.width):
            raise SacError(f"frame is {rgb.shape[1]}x{rgb.shape[0]}, "
                           f"expected {self.width}x{self.height}")
        pad = self._rgb_pad
        h, w = self.height, self.width
        pad[:h, :w] = rgb
        pad[h:, :w] = rgb[h - 1:h, :]
        pad[:, w:] = pad[:, w - 1:w]
        frame = av.VideoFrame.from_ndarray(pad, format="rgb24")
        return frame.reformat(format="yuv420p").to_ndarray()

    def i420_to_rgb(self, i420: np.ndarray) -> np.ndarray:
        """Convert back to RGB and crop to exactly the input size."""
        frame = av.VideoFrame.from_ndarray(i420, format="yuv420p")
        rgb = frame.to_ndarray(format="rgb24")
        return np.ascontiguousarray(rgb[:self.height, :self.width])


def split(layout: PlaneLayout, src: np.ndarray, blocks: np.ndarray,
          roi_out: np.ndarray, non_roi_out: np.ndarray) -> None:
    """Write the ROI and non-ROI streams of ``src``, black outside each region."""
    keep = blocks[:, None, :, None]
    drop = ~keep
    for src_plane, roi_plane, non_plane, black in zip(
            layout.planes(src), layout.planes(roi_out), layout.planes(non_roi_out),
            (BLACK_Y, BLACK_C, BLACK_C), strict=False):
        roi_plane[...] = black
        np.copyto(roi_plane, src_plane, where=keep)
        non_plane[...] = black
        np.copyto(non_plane, src_plane, where=drop)


def select(layout: PlaneLayout, roi: np.ndarray, non_roi: np.ndarray,
           blocks: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Recombine per block: each block comes from the stream that owns it (no adding)."""
    out[...] = non_roi
    keep = blocks[:, None, :, None]
    for out_plane, roi_plane in zip(layout.planes(out), layout.planes(roi), strict=False):
        np.copyto(out_plane, roi_plane, where=keep)
    return out
