"""Class map -> ROI pixels -> 16x16 macroblock mask, and the mask sources.

A block is ROI if any pixel in it is ROI. Partial blocks at the right and
bottom edges count (960x540 has a 4-row partial block row), so the block grid
is ceil(H/16) x ceil(W/16).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, ImageDraw

from sac_ros.core.classes import ClassMap, get_class_map
from sac_ros.core.errors import SacError

BLOCK_SIZE = 16


def block_grid(height: int, width: int, block_size: int = BLOCK_SIZE) -> tuple[int, int]:
    """Rows and columns of the block grid, partial edge blocks included."""
    return -(-height // block_size), -(-width // block_size)


def roi_pixels(class_map: np.ndarray, class_map_def: ClassMap,
               non_roi_ids: frozenset[int] | None = None) -> np.ndarray:
    """Boolean ROI map from an integer class map (H x W)."""
    if class_map.ndim != 2:
        raise SacError(f"class map must be 2-D, got shape {class_map.shape}")
    lookup = class_map_def.roi_lookup(non_roi_ids)
    return lookup[class_map.astype(np.uint8, copy=False)]


def block_mask(roi: np.ndarray, block_size: int = BLOCK_SIZE) -> np.ndarray:
    """Macroblock filter: (rows, cols) bool, True where any pixel of the block is ROI."""
    height, width = roi.shape
    rows, cols = block_grid(height, width, block_size)
    padded = np.zeros((rows * block_size, cols * block_size), dtype=bool)
    padded[:height, :width] = roi
    return padded.reshape(rows, block_size, cols, block_size).any(axis=(1, 3))


def expand_blocks(blocks: np.ndarray, height: int, width: int,
                  block_size: int = BLOCK_SIZE) -> np.ndarray:
    """Pixel mask (height x width) from a block mask, cropping partial edge blocks."""
    full = np.repeat(np.repeat(blocks, block_size, axis=0), block_size, axis=1)
    return full[:height, :width]


def pack_blocks(blocks: np.ndarray) -> bytes:
    """Row-major bit-packed block mask (1 bit per block) for the wire."""
    return np.packbits(blocks.astype(bool).ravel()).tobytes()


def unpack_blocks(data: bytes, rows: int, cols: int) -> np.ndarray:
    count = rows * cols
    if len(data) != -(-count // 8):
        raise SacError(f"packed mask has {len(data)} bytes, expected {-(-count // 8)} "
                       f"for a {rows}x{cols} block grid")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=count)
    return bits.reshape(rows, cols).astype(bool)


class BlockHysteresis:
    """Temporal hysteresis: a block stays ROI for ``hold_frames`` frames after its last ROI pixel.

    Blocks on the ROI boundary that flicker in and out from frame to frame cost bits
    (in dual_crf a switching block changes stream and loses its reference; in roi_qp
    its QP jumps). Holding them a few frames stops the flicker; 0 turns it off.
    """

    def __init__(self, hold_frames: int):
        if isinstance(hold_frames, bool) or not isinstance(hold_frames, int | np.integer):
            raise SacError(f"hysteresis hold must be a whole number of frames, got {hold_frames!r}")
        if not 0 <= hold_frames <= 1000:
            raise SacError(f"hysteresis hold {hold_frames} is outside 0-1000 frames")
        self.hold_frames = int(hold_frames)
        self._age: np.ndarray | None = None  # frames since each block's last ROI pixel
        self._held: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the history (a new camera stream or a size change)."""
        self._age = self._held = None

    def update(self, blocks: np.ndarray) -> np.ndarray:
        """This frame's held mask. The array is reused by the next call: copy it to keep it."""
        if self.hold_frames == 0:
            return blocks
        if self._age is None or self._age.shape != blocks.shape:
            self._age = np.full(blocks.shape, self.hold_frames + 1, np.int32)  # never seen
            self._held = np.empty(blocks.shape, bool)
        age = self._age
        np.add(age, 1, out=age)
        np.minimum(age, self.hold_frames + 1, out=age)  # saturate: no overflow on long runs
        np.copyto(age, 0, where=blocks)
        return np.less_equal(age, self.hold_frames, out=self._held)


def hold_blocks(masks: Sequence[np.ndarray], hold_frames: int) -> list[np.ndarray]:
    """Apply ``BlockHysteresis`` to a clip's masks; equal consecutive masks share one array."""
    hysteresis = BlockHysteresis(hold_frames)
    if hysteresis.hold_frames == 0:
        return list(masks)
    held: list[np.ndarray] = []
    for blocks in masks:
        current = hysteresis.update(blocks)
        if held and np.array_equal(held[-1], current):
            held.append(held[-1])
        else:
            held.append(current.copy())
    return held


# ---------------------------------------------------------------- sources

class MaskSource(Protocol):
    """Anything that yields the ROI pixel map for a frame.

    ``name`` is the frame's file name when the frames come from a folder, so
    label sources can find the matching label image. A segmenter backend is
    one more implementation of this protocol.
    """

    def roi_pixels(self, index: int, rgb: np.ndarray, name: str | None = None) -> np.ndarray:
        ...


class PolygonMaskSource:
    """A static ROI polygon, in coordinates normalised to [0, 1] (x right, y down)."""

    def __init__(self, polygon: Sequence[Sequence[float]]):
        points = [tuple(float(c) for c in p) for p in polygon]
        if len(points) < 3 or any(len(p) != 2 for p in points):
            raise SacError("roi_polygon needs at least three [x, y] points")
        if any(not (0.0 <= c <= 1.0) for p in points for c in p):
            raise SacError("roi_polygon coordinates must be normalised to [0, 1]")
        self.polygon = points
        self._cache: dict[tuple[int, int], np.ndarray] = {}

    def roi_pixels(self, index: int, rgb: np.ndarray, name: str | None = None) -> np.ndarray:
        height, width = rgb.shape[:2]
        cached = self._cache.get((height, width))
        if cached is None:
            canvas = Image.new("1", (width, height), 0)
            ImageDraw.Draw(canvas).polygon(
                [(x * width, y * height) for x, y in self.polygon], fill=1)
            cached = np.array(canvas, dtype=bool)
            self._cache[(height, width)] = cached
        return cached


def read_label_image(path: Path, layout: str) -> np.ndarray:
    """Read a label PNG as a 2-D class-id map.

    ``cityscapes``: gtFine ``*_labelIds.png`` (8-bit, one channel).
    ``kitti_step``: panoptic PNG, semantic id in the R channel.
    """
    try:
        with Image.open(path) as img:
            arr = np.array(img)
    except OSError as exc:
        raise SacError(f"cannot read label image {path}: {exc}") from None
    if layout == "kitti_step":
        if arr.ndim != 3 or arr.shape[2] < 3:
            raise SacError(f"{path}: a KITTI-STEP panoptic label must be an RGB PNG")
        return arr[:, :, 0]
    if arr.ndim != 2:
        raise SacError(f"{path}: a Cityscapes labelIds PNG must have one channel")
    return arr


LABEL_LAYOUTS = {"cityscapes": "cityscapes_label_ids", "kitti_step": "kitti_step"}


class LabelMaskSource:
    """ROI from ground-truth label images that match the frames by name.

    Cityscapes: frame ``X_leftImg8bit.png`` -> ``X_gtFine_labelIds.png``.
    KITTI-STEP: frame ``<seq>/000042.png`` -> label ``<seq>/000042.png``.
    A single label file is used as a static mask for every frame.
    """

    def __init__(self, path: str | Path, layout: str = "cityscapes",
                 non_roi_ids: Sequence[int] | None = None):
        if layout not in LABEL_LAYOUTS:
            raise SacError(f"unknown label layout '{layout}'; choose {', '.join(LABEL_LAYOUTS)}")
        self.layout = layout
        self.class_map = get_class_map(LABEL_LAYOUTS[layout])
        self.non_roi_ids = frozenset(non_roi_ids) if non_roi_ids is not None else None
        self.path = Path(path)
        if not self.path.exists():
            raise SacError(f"label path {self.path} does not exist")
        self._index: dict[str, Path] = {}
        if self.path.is_dir():
            for label in self.path.rglob("*.png"):
                self._index[self._key_of_label(label)] = label
            if not self._index:
                raise SacError(f"no label PNGs under {self.path}")

    def _key_of_label(self, label: Path) -> str:
        if self.layout == "cityscapes":
            return label.name.replace("_gtFine_labelIds.png", "")
        return f"{label.parent.name}/{label.stem}"

    def _key_of_frame(self, name: str) -> str:
        frame = Path(name)
        if self.layout == "cityscapes":
            return frame.name.replace("_leftImg8bit.png", "").replace(frame.suffix, "")
        return f"{frame.parent.name}/{frame.stem}"

    def roi_pixels(self, index: int, rgb: np.ndarray, name: str | None = None) -> np.ndarray:
        if self.path.is_file():
            label_path = self.path
        else:
            if name is None:
                raise SacError("label folders need image-folder input to match frames by name")
            label_path = self._index.get(self._key_of_frame(name))
            if label_path is None:
                raise SacError(f"no label for frame {name} under {self.path}")
        labels = read_label_image(label_path, self.layout)
        if labels.shape != rgb.shape[:2]:
            raise SacError(f"label {label_path.name} is {labels.shape[1]}x{labels.shape[0]} "
                           f"but the frame is {rgb.shape[1]}x{rgb.shape[0]}")
        return roi_pixels(labels, self.class_map, self.non_roi_ids)
