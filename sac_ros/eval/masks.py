"""Per-frame ROI block masks of a clip: from the static polygon, label PNGs or a segmenter."""

from __future__ import annotations

import numpy as np

from sac_ros.config import MaskConfig
from sac_ros.core.io import Clip
from sac_ros.core.mask import LabelMaskSource, PolygonMaskSource, block_mask, hold_blocks


def clip_blocks(clip: Clip, mask_cfg: MaskConfig, model: str | None = None,
                labels: str | None = None, label_layout: str = "cityscapes",
                segment_every: int | None = None,
                gop: int = 1) -> tuple[list[np.ndarray], str]:
    """(one block mask per frame, a description of the source), config ``mask`` settings.

    The source is the segmenter ``model`` or the ``labels`` folder (one of them at most),
    else the config's static polygon; the config's hysteresis is applied. A segmenter
    runs on every ``segment_every``-th frame (default: the config's) and on the key
    frames (every ``gop`` frames from frame 0), as in the sensor; its mask is carried
    along the block motion in between.
    """
    non_roi = mask_cfg.non_roi_classes
    if model:
        from sac_ros.segmentation.propagation import propagating_mask_source

        every = mask_cfg.segment_every if segment_every is None else segment_every
        source, description = propagating_mask_source(model, non_roi, every, gop,
                                                      mask_cfg.carry)
    elif labels:
        class_map = "cityscapes_label_ids" if label_layout == "cityscapes" else "kitti_step"
        source = LabelMaskSource(labels, label_layout, non_roi.get(class_map))
        description = f"labels {labels} ({label_layout})"
    else:
        source = PolygonMaskSource(mask_cfg.roi_polygon)
        description = "static ROI polygon from config"
    size = mask_cfg.block_size
    blocks, cache = [], {}
    for index, (frame, name) in enumerate(zip(clip.frames, clip.names, strict=False)):
        roi = source.roi_pixels(index, frame, name)
        key = roi.tobytes() if isinstance(source, PolygonMaskSource) else None
        if key is not None and key in cache:
            blocks.append(cache[key])  # static mask: share one array across frames
            continue
        block = block_mask(roi, size)
        if key is not None:
            cache[key] = block
        blocks.append(block)
    hold = mask_cfg.hysteresis_frames
    if hold:
        description += f", hysteresis {hold} frames"
    return hold_blocks(blocks, hold), description


def clip_class_offsets(clip: Clip, model: str, offsets: dict, blocks) -> list[np.ndarray]:
    """Per frame: the class-level QP offsets of each block (core/classqp.py) from the
    segmenter ``model``'s class map, blocks the mask ``blocks`` keeps as ROI capped at the
    ROI classes' offset."""
    from sac_ros.core.classqp import ClassQp
    from sac_ros.segmentation.loader import load_segmenter

    segmenter = load_segmenter(model=model)
    try:
        class_qp = ClassQp(offsets, segmenter.class_adapter.name)
        return [class_qp.block_offsets(segmenter.class_map(frame), roi)
                for frame, roi in zip(clip.frames, blocks, strict=True)]
    finally:
        segmenter.close()
