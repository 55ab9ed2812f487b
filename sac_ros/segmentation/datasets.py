"""Training data: Cityscapes and KITTI-STEP folders as distributed, and the hand-labelled set.

The dataset layouts are ``sac_ros.datasets``' (``cityscapes_pairs``, ``kitti_step_pairs``);
``evalset`` is the hand-labelled sample-footage frames (split ``train`` or ``heldout``).

Each sample is an RGB frame and a target map in the head's class ids (``four_class``:
0 ROI / 1 construction / 2 nature / 3 sky; ``binary``: 1 ROI / 0 non-ROI), 255 = ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
from PIL import Image

from sac_ros.core.errors import SacError
from sac_ros.core.mask import read_label_image
from sac_ros.datasets import cityscapes_pairs, kitti_step_pairs
from sac_ros.segmentation.classmaps import ClassMapAdapter, binary_lookup, four_class_lookup
from sac_ros.segmentation.evalset import load_labels, read_frames

DATASETS = ("cityscapes", "kitti_step", "evalset")
HEADS = ("four_class", "binary")


class SegmentationDataset:
    """Frame/target pairs, read from disk on demand (or held in memory)."""

    def __init__(self, name: str, items: list, lookup: np.ndarray | None):
        self.name = name
        self.items = items        # (image path, label path) or (rgb array, target array)
        self.lookup = lookup      # source label id -> head class id (None: already head ids)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        image, label = self.items[index]
        if isinstance(image, np.ndarray):
            return image, label
        try:
            with Image.open(image) as img:
                rgb = np.array(img.convert("RGB"))
        except OSError as exc:
            raise SacError(f"cannot read image {image}: {exc}") from None
        layout = "kitti_step" if self.name == "kitti_step" else "cityscapes"
        ids = read_label_image(label, layout)
        if ids.shape != rgb.shape[:2]:
            raise SacError(f"label {label} is {ids.shape[1]}x{ids.shape[0]} but image {image} "
                           f"is {rgb.shape[1]}x{rgb.shape[0]}")
        return rgb, self.lookup[ids]


def _target_lookup(source_map: str, head: str, non_roi_ids: Iterable[int] | None) -> np.ndarray:
    adapter = ClassMapAdapter(source_map, non_roi_ids)
    return four_class_lookup(adapter) if head == "four_class" else binary_lookup(adapter)


def cityscapes(root: Path, split: str, head: str,
               non_roi_ids: Iterable[int] | None = None) -> SegmentationDataset:
    return SegmentationDataset("cityscapes", cityscapes_pairs(root, split),
                               _target_lookup("cityscapes_label_ids", head, non_roi_ids))


def kitti_step(root: Path, split: str, head: str,
               non_roi_ids: Iterable[int] | None = None) -> SegmentationDataset:
    return SegmentationDataset("kitti_step", kitti_step_pairs(root, split),
                               _target_lookup("kitti_step", head, non_roi_ids))


def evalset(split: str, head: str, labels_path: Path | None = None) -> SegmentationDataset:
    frames = load_labels(labels_path, split)
    rgbs = read_frames(frames)
    targets = [frame.label_map() for frame in frames]
    if head == "binary":
        targets = [(t == 0).astype(np.uint8) for t in targets]
    return SegmentationDataset("evalset", list(zip(rgbs, targets, strict=True)), None)


def open_dataset(name: str, root: str | Path | None, split: str, head: str,
                 non_roi_ids: Iterable[int] | None = None) -> SegmentationDataset:
    if head not in HEADS:
        raise SacError(f"unknown head '{head}'; choose {' or '.join(HEADS)}")
    if name == "evalset":
        return evalset(split, head, Path(root) if root else None)
    if name not in DATASETS:
        raise SacError(f"unknown dataset '{name}'; choose one of {', '.join(DATASETS)}")
    if root is None:
        raise SacError(f"--data-root is required for the {name} dataset")
    root = Path(root)
    if not root.is_dir():
        raise SacError(f"dataset folder {root} does not exist")
    reader = cityscapes if name == "cityscapes" else kitti_step
    return reader(root, split, head, non_roi_ids)


def augment(rgb: np.ndarray, target: np.ndarray, crop: tuple[int, int],
            scale: tuple[float, float], rng: np.random.Generator,
            shadow_prob: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Random rescale (with a little aspect jitter), crop, flip, photometric jitter and,
    with probability ``shadow_prob``, cast shadows and sun patches.

    The crop window is chosen in source pixels and only that window is resampled, so
    the cost does not grow with the frame size.
    """
    crop_w, crop_h = crop
    height, width = target.shape
    scale_y = max(rng.uniform(*scale), crop_h / height)
    scale_x = max(scale_y * rng.uniform(0.9, 1.1), crop_w / width)
    win_w, win_h = crop_w / scale_x, crop_h / scale_y   # the window in source pixels
    x0 = rng.uniform(0, width - win_w)
    y0 = rng.uniform(0, height - win_h)
    box = (x0, y0, x0 + win_w, y0 + win_h)
    out = np.asarray(Image.fromarray(rgb).resize((crop_w, crop_h), Image.Resampling.BILINEAR,
                                                 box=box))
    labels = np.asarray(Image.fromarray(target).resize((crop_w, crop_h),
                                                       Image.Resampling.NEAREST, box=box))
    if rng.random() < 0.5:
        out, labels = out[:, ::-1], labels[:, ::-1]
    # photometric jitter: contrast, brightness, gamma and per-channel gain as one lookup
    # table per channel (cheap on uint8), then saturation and sensor noise in float
    levels = np.arange(256, dtype=np.float32)
    curve = (levels - 128.0) * rng.uniform(0.7, 1.3) + 128.0 * rng.uniform(0.7, 1.3)
    curve = 255.0 * (np.clip(curve, 0, 255) / 255.0) ** rng.uniform(0.7, 1.4)
    gains = rng.uniform(0.9, 1.1, size=(3, 1))
    tables = np.clip(curve[None, :] * gains, 0, 255).astype(np.float32)
    out = np.stack([tables[c][out[:, :, c]] for c in range(3)], axis=2)
    grey = out.mean(axis=2, keepdims=True)
    out = grey + (out - grey) * np.float32(rng.uniform(0.6, 1.4))
    if rng.random() < shadow_prob:
        out *= shadow_field(out.shape[0], out.shape[1], rng)[:, :, None]
    out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(rng.uniform(0, 6))
    return np.clip(out, 0, 255, out=out), np.ascontiguousarray(labels)


def shadow_field(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """A gain map of soft-edged shade and sunlit patches (dappled light under trees, the
    shadows of bridges and cars), so that the class does not follow the brightness."""
    cell = int(rng.choice([8, 16, 32, 64]))  # patch size in pixels
    noise = rng.random((max(2, height // cell), max(2, width // cell)), dtype=np.float32)
    noise = np.asarray(Image.fromarray(noise).resize((width, height),
                                                     Image.Resampling.BICUBIC))
    edge = np.float32(rng.uniform(8, 30))       # sharpness of the patch edges
    lit = 1.0 / (1.0 + np.exp((np.float32(rng.uniform(0.3, 0.7)) - noise) * edge))
    shade, sun = np.float32(rng.uniform(0.3, 0.8)), np.float32(rng.uniform(1.0, 1.6))
    return shade + (sun - shade) * lit
