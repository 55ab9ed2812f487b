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

    def block_offsets(self, class_ids: np.ndarray) -> np.ndarray:
        """(rows, cols) float32 QP offsets from an H x W class-id map: per block, the
        smallest offset of the classes in it (partial edge blocks: their real pixels)."""
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
        return self.levels[lowest]

    def describe(self) -> str:
        return ", ".join(f"{c} {self.offsets[c]:+g}" for c in CATEGORIES)
