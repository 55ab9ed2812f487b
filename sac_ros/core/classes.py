"""Class maps and their ROI sets: the one definition shared by every tool.

The method (seed 001) marks a pixel ROI unless its class is construction,
nature or sky. Each class map below lists its *non-ROI* ids; every other id,
including "ignore" labels, is ROI.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sac_ros.core.errors import SacError


@dataclass(frozen=True)
class ClassMap:
    name: str
    description: str
    non_roi_ids: frozenset[int]
    num_classes: int  # ids are expected in [0, num_classes), plus 255 = ignore

    def roi_lookup(self, non_roi_ids: frozenset[int] | None = None) -> np.ndarray:
        """A 256-entry table: True where the id is ROI."""
        ids = self.non_roi_ids if non_roi_ids is None else non_roi_ids
        table = np.ones(256, dtype=bool)
        for class_id in ids:
            if not 0 <= class_id <= 255:
                raise SacError(f"class id {class_id} is outside 0-255")
            table[class_id] = False
        return table


# Cityscapes labelIds: building 11, wall 12, fence 13, guard rail 14, bridge 15,
# tunnel 16 (construction); vegetation 21, terrain 22 (nature); sky 23.
CITYSCAPES_LABEL_IDS = ClassMap(
    "cityscapes_label_ids",
    "Cityscapes gtFine *_labelIds.png (ids 0-33)",
    frozenset({11, 12, 13, 14, 15, 16, 21, 22, 23}),
    34,
)
# Cityscapes trainIds: building 2, wall 3, fence 4, vegetation 8, terrain 9, sky 10.
CITYSCAPES_TRAIN_IDS = ClassMap(
    "cityscapes_train_ids",
    "Cityscapes 19-class trainIds (0-18, 255 ignore)",
    frozenset({2, 3, 4, 8, 9, 10}),
    19,
)
# The authors' KITTI-STEP choice: building 2, vegetation 8, sky 10.
KITTI_STEP_TRAIN_IDS = ClassMap(
    "kitti_step",
    "KITTI-STEP trainIds (semantic id in the R channel of the panoptic PNG)",
    frozenset({2, 8, 10}),
    19,
)
# The papers' 4-class segmenter output: 0 ROI, 1 construction, 2 nature, 3 sky.
FOUR_CLASS = ClassMap(
    "four_class",
    "The papers' 4-class output: 0 ROI, 1 construction, 2 nature, 3 sky",
    frozenset({1, 2, 3}),
    4,
)
# A binary ROI output: 1 ROI, 0 non-ROI.
BINARY = ClassMap("binary", "Binary ROI map: 1 ROI, 0 non-ROI", frozenset({0}), 2)

CLASS_MAPS: dict[str, ClassMap] = {
    m.name: m
    for m in (CITYSCAPES_LABEL_IDS, CITYSCAPES_TRAIN_IDS, KITTI_STEP_TRAIN_IDS, FOUR_CLASS, BINARY)
}
FOUR_CLASS_NAMES = ("roi", "construction", "nature", "sky")


def get_class_map(name: str) -> ClassMap:
    try:
        return CLASS_MAPS[name]
    except KeyError:
        raise SacError(
            f"unknown class map '{name}'; choose one of: {', '.join(sorted(CLASS_MAPS))}"
        ) from None


# Categories (Cityscapes' eight, as in cityscapesscripts' label table) of each class map's
# ids: what class-level QP offsets are given for (core/classqp.py). A merged class (the
# 4-class "roi", binary's two) covers several; an id listed nowhere is "void".
CATEGORIES = ("flat", "human", "vehicle", "object", "construction", "nature", "sky", "void")
_TRAIN_ID_CATEGORIES = {0: ("flat",), 1: ("flat",), 2: ("construction",), 3: ("construction",),
                        4: ("construction",), 5: ("object",), 6: ("object",), 7: ("object",),
                        8: ("nature",), 9: ("nature",), 10: ("sky",), 11: ("human",),
                        12: ("human",), **{i: ("vehicle",) for i in range(13, 19)}}
ROI_CATEGORIES = ("flat", "human", "vehicle", "object", "void")
CLASS_CATEGORIES: dict[str, dict[int, tuple[str, ...]]] = {
    "cityscapes_label_ids": {**{i: ("void",) for i in range(7)},
                             **{i: ("flat",) for i in range(7, 11)},
                             **{i: ("construction",) for i in range(11, 17)},
                             **{i: ("object",) for i in range(17, 21)},
                             21: ("nature",), 22: ("nature",), 23: ("sky",), 24: ("human",),
                             25: ("human",), **{i: ("vehicle",) for i in range(26, 34)}},
    "cityscapes_train_ids": _TRAIN_ID_CATEGORIES,
    "kitti_step": _TRAIN_ID_CATEGORIES,
    "four_class": {0: ROI_CATEGORIES, 1: ("construction",), 2: ("nature",), 3: ("sky",)},
    "binary": {1: ROI_CATEGORIES, 0: ("construction", "nature", "sky")},
}


def class_categories(name: str, class_id: int) -> tuple[str, ...]:
    """The categories class ``class_id`` of class map ``name`` covers ("void" if unlisted)."""
    get_class_map(name)  # an unknown name is a SacError listing the known ones
    return CLASS_CATEGORIES[name].get(int(class_id), ("void",))
