"""The one reader of the dataset layouts: Cityscapes, KITTI-STEP (and raw KITTI), videos.

``find_source`` / ``iter_source`` read image sequences or a video in time order (``sac bag
convert``, ``sac reproduce``); ``cityscapes_pairs`` / ``kitti_step_pairs`` list the
labelled frames of a split (segmentation training). Frame rates: ``RATES_HZ``.

Layouts (checked before anything is written):

- **Cityscapes** ``<root>/leftImg8bit_sequence/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png``
  (30-frame snippets at 17 Hz), labels ``<root>/gtFine/<split>/<city>/<city>_<seq>_<frame>
  _gtFine_labelIds.png`` for the frames that have them (the 20th of each snippet).
  Frames of one ``<city>_<seq>`` whose numbers jump by less than a snippet (30) are
  missing frames; larger jumps are snippet boundaries and keep their real time gap.
- **Cityscapes, labelled frames** ``<root>/leftImg8bit/<split>/<city>/<name>_leftImg8bit.png``
  with ``<root>/gtFine/<split>/<city>/<name>_gtFine_labelIds.png`` (label ids, 0-33).
- **KITTI-STEP** ``<root>/images/<split>/<seq>/<frame>.png`` (10 Hz), panoptic labels
  ``<root>/panoptic_maps/<split>/<seq>/<frame>.png`` (semantic id in R). The raw KITTI
  tracking layout ``image_02/<seq>/<frame>.png`` is read the same way, without labels.
  Frame numbers of a sequence must be consecutive.
- **Any other image folder**: its images (``.png``, ``.jpg``, ...) in file-name order, as
  ``sac eval`` reads them, at 30 Hz (``--fps`` sets another rate), without labels.

The input may be the dataset root, the sequence folder, or any folder in between.
Frames are read by ``sac_ros.core.io.iter_frames`` (the core's reader), one folder at
a time; labels by ``sac_ros.core.mask`` rules.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from sac_ros.core.errors import SacError
from sac_ros.core.io import IMAGE_SUFFIXES, iter_frames, resolve_input, video_fps
from sac_ros.core.mask import read_label_image

CITYSCAPES_RATE = 17.0   # Hz: Cityscapes sequences
KITTI_RATE = 10.0        # Hz: KITTI / KITTI-STEP
RATES_HZ = {"cityscapes": CITYSCAPES_RATE, "kitti_step": KITTI_RATE}
CITYSCAPES_SNIPPET = 30
CITYSCAPES_NAME = re.compile(r"^(?P<city>.+)_(?P<seq>\d{6})_(?P<frame>\d{6})_leftImg8bit\.png$")
KITTI_NAME = re.compile(r"^(?P<frame>\d{6})\.png$")
KITTI_IMAGE_DIRS = ("images", "image_02", "image_03")
SPLIT_ALIASES = {"training": "train", "validation": "val", "testing": "test"}
LAYOUT_HELP = ("Cityscapes leftImg8bit_sequence/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit"
               ".png or KITTI-STEP images/<split>/<seq>/<frame>.png")


@dataclass
class FrameFile:
    path: Path
    number: int
    label: Path | None = None


@dataclass
class Sequence:
    """Consecutively numbered frames of one recording (a Cityscapes city_seq, a KITTI seq)."""

    name: str
    folder: Path               # the folder iter_frames reads
    frames: list[FrameFile] = field(default_factory=list)


@dataclass
class Source:
    kind: str                   # cityscapes | kitti_step | images | video
    path: Path
    rate_hz: float
    sequences: list[Sequence] = field(default_factory=list)
    label_layout: str | None = None   # cityscapes | kitti_step (sac_ros.core.mask layouts)
    width: int = 0
    height: int = 0

    @property
    def num_frames(self) -> int:
        return sum(len(s.frames) for s in self.sequences)

    @property
    def num_labels(self) -> int:
        return sum(f.label is not None for s in self.sequences for f in s.frames)


def _anchor(path: Path, names: tuple[str, ...]) -> Path | None:
    """The ancestor-or-self folder named one of ``names``, or such a child of ``path``."""
    for candidate in (path, *path.parents):
        if candidate.name in names:
            return candidate
    for name in names:
        if (path / name).is_dir():
            return path / name
    return None


def _split_of(relative: Path) -> str | None:
    return relative.parts[0] if len(relative.parts) > 1 else None


def _cityscapes(path: Path, anchor: Path) -> Source:
    scope = path if path.is_relative_to(anchor) else anchor
    root = anchor.parent
    groups: dict[tuple[Path, str], list[FrameFile]] = {}
    for file in sorted(scope.rglob("*_leftImg8bit.png")):
        match = CITYSCAPES_NAME.match(file.name)
        if match is None:
            raise SacError(f"{file.name} does not follow <city>_<seq>_<frame>_leftImg8bit.png")
        key = (file.parent, f"{match['city']}_{match['seq']}")
        groups.setdefault(key, []).append(FrameFile(file, int(match["frame"])))
    if not groups:
        raise SacError(f"no *_leftImg8bit.png frames under {scope}")
    source = Source("cityscapes", path, CITYSCAPES_RATE, label_layout="cityscapes")
    for (folder, name), frames in groups.items():
        frames.sort(key=lambda f: f.number)
        for prev, cur in zip(frames, frames[1:], strict=False):
            if cur.number == prev.number:
                raise SacError(f"frame {name}_{cur.number:06d} appears twice")
            if 1 < cur.number - prev.number < CITYSCAPES_SNIPPET:
                gap = _missing(prev.number, cur.number, f"{name}_", "_leftImg8bit.png")
                raise SacError(f"missing frames in sequence {name}: {gap}")
        relative = folder.relative_to(anchor)
        labels = root / "gtFine" / relative
        for frame in frames:
            label = labels / frame.path.name.replace("_leftImg8bit.png", "_gtFine_labelIds.png")
            frame.label = label if label.is_file() else None
        source.sequences.append(Sequence(name, folder, frames))
    return source


def _missing(prev: int, cur: int, prefix: str = "", suffix: str = ".png") -> str:
    gap = list(range(prev + 1, cur))
    shown = ", ".join(f"{prefix}{n:06d}{suffix}" for n in gap[:3])
    more = f" and {len(gap) - 3} more" if len(gap) > 3 else ""
    return f"{shown}{more} (between frames {prev} and {cur})"


def _kitti(path: Path, anchor: Path) -> Source:
    scope = path if path.is_relative_to(anchor) else anchor
    root = anchor.parent
    folders: dict[Path, list[FrameFile]] = {}
    for file in sorted(scope.rglob("*.png")):
        match = KITTI_NAME.match(file.name)
        if match is None:
            raise SacError(f"{file} is not named <frame>.png with six digits (KITTI layout)")
        folders.setdefault(file.parent, []).append(FrameFile(file, int(match["frame"])))
    if not folders:
        raise SacError(f"no <frame>.png images under {scope}")
    labelled = anchor.name == "images"
    source = Source("kitti_step", path, KITTI_RATE,
                    label_layout="kitti_step" if labelled else None)
    for folder, frames in folders.items():
        relative = folder.relative_to(anchor)
        name = "/".join(relative.parts)
        for prev, cur in zip(frames, frames[1:], strict=False):
            if cur.number != prev.number + 1:
                raise SacError(f"missing frames in sequence {name}: "
                               f"{_missing(prev.number, cur.number)}")
        if labelled:
            split = _split_of(relative)
            candidates = [root / "panoptic_maps" / relative]
            if split in SPLIT_ALIASES:
                candidates.append(root / "panoptic_maps" / SPLIT_ALIASES[split]
                                  / Path(*relative.parts[1:]))
            for frame in frames:
                for labels in candidates:
                    if (labels / frame.path.name).is_file():
                        frame.label = labels / frame.path.name
                        break
        source.sequences.append(Sequence(name, folder, frames))
    return source


def _image_folder(spec: str, path: Path) -> Source:
    """A folder in neither dataset layout: its images in file-name order, as one sequence
    (the order and rate ``sac eval`` reads it with)."""
    files = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SacError(f"{spec} holds no images ({', '.join(IMAGE_SUFFIXES)}) and is in "
                       f"neither dataset layout ({LAYOUT_HELP}); videos are files")
    frames = [FrameFile(file, number) for number, file in enumerate(files)]
    return Source("images", path, video_fps(path), [Sequence(path.name, path, frames)])


def find_source(spec: str, mixed_sizes_ok: bool = False) -> Source:
    """The frames to convert: a dataset folder in one of the two layouts, any other image
    folder, or a video.

    Frame sizes must agree unless ``mixed_sizes_ok`` (every frame will be resized).
    """
    path = resolve_input(spec)
    if path.is_file():
        return Source("video", path, video_fps(path))
    path = path.resolve()
    city = _anchor(path, ("leftImg8bit_sequence",))
    if city is not None:
        source = _cityscapes(path, city)
    else:
        kitti = _anchor(path, KITTI_IMAGE_DIRS)
        source = _kitti(path, kitti) if kitti is not None else _image_folder(spec, path)
    _check_sizes(source, mixed_sizes_ok)
    return source


def _check_sizes(source: Source, mixed_sizes_ok: bool) -> None:
    """All frames share one size and every label matches its frame (headers only)."""
    first = None
    for seq in source.sequences:
        for frame in seq.frames:
            size = _image_size(frame.path)
            if first is None:
                first, first_path = size, frame.path
            elif size != first and not mixed_sizes_ok:
                raise SacError(
                    f"mixed image sizes: {frame.path.name} is {size[0]}x{size[1]}, "
                    f"{first_path.name} is {first[0]}x{first[1]} (convert one size at a time, "
                    "or pass --size WxH to resize every frame)")
            if frame.label is not None and _image_size(frame.label) != size:
                label = _image_size(frame.label)
                raise SacError(f"label {frame.label.name} is {label[0]}x{label[1]} but its frame "
                               f"is {size[0]}x{size[1]}")
    source.width, source.height = first


def _image_size(path: Path) -> tuple[int, int]:
    try:
        with Image.open(path) as img:
            return img.size
    except OSError as exc:
        raise SacError(f"cannot read image {path}: {exc}") from None


def iter_source(source: Source, max_frames: int | None = None
                ) -> Iterator[tuple[Sequence | None, FrameFile | None, np.ndarray]]:
    """(sequence, frame file, RGB) in order; sequence and file are None for videos.

    Each folder is read once by the core's ``iter_frames`` (a Cityscapes city folder
    holds several sequences, in file-name order).
    """
    if source.kind == "video":
        for rgb, _ in iter_frames(source.path, 0, max_frames):
            yield None, None, rgb
        return
    order: list[tuple[Sequence, FrameFile]] = [(s, f) for s in source.sequences
                                               for f in s.frames][:max_frames]
    position = 0
    while position < len(order):
        folder = order[position][0].folder
        wanted = {}
        for seq, frame in order[position:]:
            if seq.folder != folder:
                break
            wanted[frame.path.relative_to(folder).as_posix()] = (seq, frame)
        done = 0
        for rgb, name in iter_frames(folder):
            item = wanted.get(name)
            if item is None:
                continue
            yield item[0], item[1], rgb
            done += 1
            if done == len(wanted):
                break
        if done != len(wanted):
            raise SacError(f"{folder}: read {done} of {len(wanted)} frames")
        position += done


def read_label(path: Path, layout: str) -> np.ndarray:
    """The label image as stored: Cityscapes labelIds (H x W), KITTI-STEP panoptic (H x W x 3)."""
    semantic = read_label_image(path, layout)  # validates the format (core rule)
    if layout == "cityscapes":
        return semantic
    with Image.open(path) as img:
        return np.array(img.convert("RGB"))


def _split_dirs(root: Path, split: str, name: str, images: str,
                labels: str) -> tuple[Path, Path]:
    images_dir, labels_dir = root / images / split, root / labels / split
    if not images_dir.is_dir() or not labels_dir.is_dir():
        raise SacError(f"{root} is not a {name} folder: expected {images}/{split}/ and "
                       f"{labels}/{split}/")
    return images_dir, labels_dir


def cityscapes_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(frame, labelIds) of every labelled Cityscapes frame of ``split``."""
    images_dir, labels_dir = _split_dirs(root, split, "Cityscapes", "leftImg8bit", "gtFine")
    items = []
    for image in sorted(images_dir.glob("*/*_leftImg8bit.png")):
        stem = image.name[:-len("_leftImg8bit.png")]
        label = labels_dir / image.parent.name / f"{stem}_gtFine_labelIds.png"
        if label.is_file():
            items.append((image, label))
    if not items:
        raise SacError(f"no labelled Cityscapes frames (…_leftImg8bit.png with a matching "
                       f"…_gtFine_labelIds.png) under {images_dir}")
    return items


def kitti_step_pairs(root: Path, split: str) -> list[tuple[Path, Path]]:
    """(frame, panoptic map) of every labelled KITTI-STEP frame of ``split``."""
    images_dir, labels_dir = _split_dirs(root, split, "KITTI-STEP", "images", "panoptic_maps")
    items = [(image, labels_dir / image.parent.name / image.name)
             for image in sorted(images_dir.glob("*/*.png"))]
    items = [(image, label) for image, label in items if label.is_file()]
    if not items:
        raise SacError(f"no KITTI-STEP frames with panoptic maps under {images_dir}")
    return items
