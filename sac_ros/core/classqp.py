"""Class-level QP offsets: a segmenter's class map -> one QP offset per block (roi_qp).

Binary roi_qp codes a block at one of two QPs (ROI or not). Here each Cityscapes
category (``classes.CATEGORIES``: people, vehicles, road, ..., sky) has its own QP
offset from the base CRF, and a block takes the *smallest* offset of the classes in it,
as any ROI pixel makes a block ROI: a block with one pixel of a car is coded at the
car's quality. A class of a merged class map (the 4-class "roi", binary's two) covers
several categories and takes the smallest of their offsets. The class-to-category table
is the class maps' own (``classes.CLASS_CATEGORIES``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from sac_ros.core.classes import CATEGORIES, CLASS_CATEGORIES, get_class_map
from sac_ros.core.errors import SacError

MAX_OFFSET = 51.0


def check_offsets(offsets: Mapping[str, float], where: str = "class_qp.offsets") -> dict:
    """Every category with a QP offset in [-51, 51], and nothing else (else SacError)."""
    if not isinstance(offsets, Mapping):
        raise SacError(f"{where} must map categories ({', '.join(CATEGORIES)}) to QP offsets")
    unknown = sorted(set(offsets) - set(CATEGORIES))
    missing = [c for c in CATEGORIES if c not in offsets]
    if unknown or missing:
        raise SacError(f"{where} must give a QP offset for each of {', '.join(CATEGORIES)}"
                       + (f"; unknown: {', '.join(map(str, unknown))}" if unknown else "")
                       + (f"; missing: {', '.join(missing)}" if missing else ""))
    checked = {}
    for category in CATEGORIES:
        value = offsets[category]
        if (isinstance(value, bool) or not isinstance(value, (int, float))
                or not -MAX_OFFSET <= value <= MAX_OFFSET):
            raise SacError(f"{where}.{category} must be a QP offset in -51 to 51, "
                           f"got {value!r}")
        checked[category] = float(value)
    return checked


@dataclass(frozen=True)
class ClassQp:
    """Per-category QP offsets applied to one class map's ids."""

    offsets: Mapping[str, float]
    class_map: str
    block_size: int = 16

    def __post_init__(self):
        object.__setattr__(self, "offsets", check_offsets(self.offsets))
        get_class_map(self.class_map)  # an unknown name is a one-line error
        if self.block_size not in (16, 32, 64):
            raise SacError(f"class-level QP offsets need block_size 16, 32 or 64, got "
                           f"{self.block_size} (x264 sets one QP per 16x16 macroblock)")
        # Levels: the distinct offsets, ascending; each class id -> its level's rank, so
        # the per-block minimum is taken on small integers.
        per_id = np.full(256, self.offsets["void"], np.float32)
        for class_id, categories in CLASS_CATEGORIES[self.class_map].items():
            per_id[class_id] = min(self.offsets[c] for c in categories)
        levels = np.unique(per_id)
        object.__setattr__(self, "levels", levels.astype(np.float32))
        object.__setattr__(self, "_rank", np.searchsorted(levels, per_id).astype(np.uint8))

    def class_offset(self, class_id: int) -> float:
        """The QP offset of one class id."""
        return float(self.levels[self._rank[int(class_id)]])

    @property
    def roi_cap(self) -> float:
        """The largest offset an ROI block may get: the largest of the class map's ROI
        classes' (the papers' ROI: every id outside its non-ROI set)."""
        non_roi = get_class_map(self.class_map).non_roi_ids
        return max(self.class_offset(i) for i in CLASS_CATEGORIES[self.class_map]
                   if i not in non_roi)

    @property
    def background_floor(self) -> float:
        """The smallest offset a non-ROI block may get: the smallest of the class map's
        non-ROI classes'."""
        return min(self.class_offset(i) for i in get_class_map(self.class_map).non_roi_ids)

    def block_offsets(self, class_ids: np.ndarray,
                      roi_blocks: np.ndarray | None = None) -> np.ndarray:
        """(rows, cols) float32 QP offsets from an H x W class-id map: per block, the
        smallest offset of the classes in it (partial edge blocks: their real pixels).

        ``roi_blocks``: the binary block mask (block head, hysteresis) still decides ROI
        or not, the classes pick the level within each side: its ROI blocks take at most
        ``roi_cap``, its non-ROI blocks at least ``background_floor`` (a block the mask
        leaves out is not coded at a vehicle's QP for a few of its pixels, nor one it
        keeps at the sky's).
        """
        if class_ids.ndim != 2:
            raise SacError(f"a class map must be H x W ids, got shape {class_ids.shape}")
        if class_ids.dtype != np.uint8:
            if class_ids.size and (class_ids.min() < 0 or class_ids.max() > 255):
                raise SacError("class ids must be in 0-255")
            class_ids = class_ids.astype(np.uint8)
        b = self.block_size
        height, width = class_ids.shape
        rows, cols = -(-height // b), -(-width // b)
        ranks = self._rank[class_ids]
        if (rows * b, cols * b) != (height, width):
            padded = np.full((rows * b, cols * b), 255, np.uint8)  # above every real rank
            padded[:height, :width] = ranks
            ranks = padded
        lowest = ranks.reshape(rows, b, cols, b).min(axis=3).min(axis=1)
        offsets = self.levels[lowest]
        if roi_blocks is not None:
            if roi_blocks.shape != offsets.shape:
                raise SacError(f"ROI block mask is {roi_blocks.shape}, the class map's grid "
                               f"{offsets.shape}")
            np.minimum(offsets, self.roi_cap, out=offsets, where=roi_blocks)
            np.maximum(offsets, self.background_floor, out=offsets, where=~roi_blocks)
        return offsets

    def describe(self) -> str:
        return ", ".join(f"{c} {self.offsets[c]:+g}" for c in CATEGORIES)


class ClassMapTap:
    """A segmenter (anything with ``predict(rgb)`` -> ``.block_roi``, ``.class_map``) whose
    ``block_roi`` also keeps the class map of that same network run, so class-level
    offsets cost no second inference. Wrapped by a mask propagator that segments only some
    frames, ``class_map`` is the last segmented frame's (the offsets of carried frames
    still cap at ``roi_cap`` on the carried ROI blocks)."""

    def __init__(self, segmenter):
        self.segmenter = segmenter
        self.class_map: np.ndarray | None = None

    @property
    def name(self) -> str:
        return self.segmenter.name

    @property
    def class_adapter(self):
        return self.segmenter.class_adapter

    def block_roi(self, rgb: np.ndarray) -> np.ndarray:
        prediction = self.segmenter.predict(rgb)
        self.class_map = prediction.class_map
        return prediction.block_roi

    def close(self) -> None:
        self.segmenter.close()
