"""Adapters from a model's class ids to ROI, and to the papers' 4 classes.

The class ids and their non-ROI sets are defined once, in ``sac_ros.core.classes``.
This module only adds what a segmenter needs on top: checking a model's output
channels against a class map, and (for training targets) folding non-ROI ids into
the papers' construction / nature / sky using the ``category`` field of the
Cityscapes label definitions in ``cityscapesscripts`` (KITTI-STEP uses Cityscapes
trainIds).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from sac_ros.core.classes import FOUR_CLASS_NAMES, ClassMap, get_class_map
from sac_ros.core.errors import SacError
from sac_ros.core.mask import roi_pixels

SEGMENTER_CLASS_MAPS = ("cityscapes_train_ids", "cityscapes_label_ids", "kitti_step",
                        "four_class", "binary")
IGNORE_ID = 255


class ClassMapAdapter:
    """A model's output class map, with its (possibly overridden) non-ROI ids."""

    def __init__(self, name: str, non_roi_ids: Iterable[int] | None = None):
        if name not in SEGMENTER_CLASS_MAPS:
            raise SacError(f"class map '{name}' is not a segmenter output; choose one of "
                           f"{', '.join(SEGMENTER_CLASS_MAPS)}")
        self.definition: ClassMap = get_class_map(name)
        self.non_roi_ids = (frozenset(int(i) for i in non_roi_ids) if non_roi_ids is not None
                            else self.definition.non_roi_ids)
        self.roi_table = self.definition.roi_lookup(self.non_roi_ids)

    @property
    def name(self) -> str:
        return self.definition.name

    @property
    def num_classes(self) -> int:
        return self.definition.num_classes

    def roi_channels(self) -> np.ndarray:
        """Indices of the output channels whose class is ROI."""
        return np.flatnonzero(self.roi_table[:self.num_classes])

    def check_channels(self, channels: int, model: str) -> None:
        """Fail clearly when a model's class output does not fit this class map."""
        if channels == self.num_classes:
            return
        if channels == 1 and self.name == "binary":
            return  # a single ROI logit
        fits = [n for n in SEGMENTER_CLASS_MAPS if get_class_map(n).num_classes == channels]
        hint = (f"; class maps with {channels} classes: {', '.join(fits)}" if fits
                else "; no known class map has that many classes")
        raise SacError(f"model {model} outputs {channels} classes but class map '{self.name}' "
                       f"has {self.num_classes}: set class_map in the segmentation config to "
                       f"the labels the model was trained on{hint}")

    def roi(self, class_ids: np.ndarray) -> np.ndarray:
        """Boolean ROI map from a class-id map (the core's rule, with the overrides)."""
        return roi_pixels(class_ids, self.definition, self.non_roi_ids)


def _category_table(name: str) -> dict[int, str]:
    """Class id -> Cityscapes category, from cityscapesscripts' label definitions."""
    try:
        from cityscapesscripts.helpers.labels import labels
    except ImportError:
        raise SacError("mapping Cityscapes / KITTI-STEP labels to the 4-class head needs "
                       "cityscapesscripts: pip install 'sac_ros[train]' or "
                       "pip install cityscapesscripts") from None
    if name == "cityscapes_label_ids":
        return {label.id: label.category for label in labels if label.id >= 0}
    # cityscapes_train_ids and KITTI-STEP (which uses Cityscapes trainIds)
    return {label.trainId: label.category for label in labels
            if 0 <= label.trainId < IGNORE_ID and not label.ignoreInEval}


def four_class_lookup(adapter: ClassMapAdapter, ignore: Iterable[int] = (IGNORE_ID,)
                      ) -> np.ndarray:
    """A 256-entry table from the adapter's ids to 0 ROI / 1 construction / 2 nature / 3 sky.

    ROI follows the core rule (every id that is not non-ROI). A non-ROI id takes its
    Cityscapes category; ``ignore`` ids map to 255 (no loss when training).
    """
    table = np.where(adapter.roi_table, 0, IGNORE_ID).astype(np.uint8)
    if adapter.name == "four_class":
        table[:4] = np.arange(4)
    elif adapter.name == "binary":
        raise SacError("binary labels cannot be expanded to four classes; train the binary head")
    else:
        categories = _category_table(adapter.name)
        for class_id in adapter.non_roi_ids:
            category = categories.get(class_id)
            if category not in FOUR_CLASS_NAMES[1:]:
                raise SacError(f"non-ROI id {class_id} of {adapter.name} has Cityscapes category "
                               f"'{category}'; the 4-class head knows construction, nature and "
                               "sky only: train the binary head instead")
            table[class_id] = FOUR_CLASS_NAMES.index(category)
    for class_id in ignore:
        table[class_id] = IGNORE_ID
    return table


def binary_lookup(adapter: ClassMapAdapter, ignore: Iterable[int] = (IGNORE_ID,)) -> np.ndarray:
    """A 256-entry table: 1 ROI, 0 non-ROI, 255 ignore (the ``binary`` class map's ids)."""
    table = adapter.roi_table.astype(np.uint8)
    for class_id in ignore:
        table[class_id] = IGNORE_ID
    return table
