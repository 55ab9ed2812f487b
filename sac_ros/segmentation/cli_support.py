"""Glue for ``sac eval --model``: a segmenter as the mask source, from the config."""

from __future__ import annotations

from sac_ros.segmentation.segmenter import SegmenterMaskSource


def segmenter_mask_source(model: str, non_roi_classes: dict) -> tuple[SegmenterMaskSource, str]:
    """(mask source, description); ``non_roi_classes`` are sac.yaml's overrides."""
    from sac_ros.config import load_segmentation_config
    from sac_ros.segmentation.loader import load_segmenter

    segmenter = load_segmenter(load_segmentation_config(), model)
    overrides = non_roi_classes.get(segmenter.class_adapter.name)
    if overrides is not None:  # sac.yaml mask.non_roi_classes applies to the model's labels
        segmenter.set_non_roi_ids(overrides)
    return segmenter.mask_source(), f"segmenter {segmenter.name}"
