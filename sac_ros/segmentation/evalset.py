"""The hand-labelled evaluation set: 4-class polygons on frames of the sample clips.

``data/evalset/labels.json`` lists, per frame, the clip, the frame index, the split
(``train`` or ``heldout``) and polygon layers in the frame's pixel coordinates. Every
pixel starts as ROI (0) and the layers are painted in order (later layers win), so a
car traced after a "nature" hillside is ROI again. The frames themselves are not in
the repository: they are decoded from the installed sample clips by index (and cached
as PNGs under the user's cache folder).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw

from sac_ros.core.classes import FOUR_CLASS_NAMES
from sac_ros.core.errors import SacError
from sac_ros.core.io import sample_video

LABELS_PATH = Path(__file__).resolve().parent / "data" / "evalset" / "labels.json"
SPLITS = ("train", "heldout", "all")


@dataclass(frozen=True)
class LabelledFrame:
    clip: str
    index: int
    split: str
    width: int
    height: int
    layers: tuple[tuple[int, tuple[tuple[float, float], ...]], ...]  # (class id, polygon)

    @property
    def key(self) -> str:
        return f"{self.clip}_{self.index:05d}"

    def label_map(self) -> np.ndarray:
        """Rasterise the polygons: uint8 H x W, 0 ROI / 1 construction / 2 nature / 3 sky."""
        canvas = Image.new("L", (self.width, self.height), 0)
        draw = ImageDraw.Draw(canvas)
        for class_id, points in self.layers:
            draw.polygon(points, fill=class_id)
        return np.array(canvas)


def load_labels(path: str | Path | None = None, split: str = "all") -> list[LabelledFrame]:
    """Read and validate labels.json; ``split`` is train, heldout or all."""
    if split not in SPLITS:
        raise SacError(f"unknown split '{split}'; choose one of {', '.join(SPLITS)}")
    path = Path(path) if path else LABELS_PATH
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SacError(f"cannot read evaluation labels {path}: {exc.strerror}") from None
    except json.JSONDecodeError as exc:
        raise SacError(f"evaluation labels {path} are not valid JSON: {exc}") from None
    frames = []
    for entry in data.get("frames", []):
        try:
            layers = tuple((FOUR_CLASS_NAMES.index(layer["class"]),
                            tuple((float(x), float(y)) for x, y in layer["points"]))
                           for layer in entry["layers"])
            frame = LabelledFrame(str(entry["clip"]), int(entry["index"]), str(entry["split"]),
                                  int(entry["width"]), int(entry["height"]), layers)
        except (KeyError, ValueError, TypeError) as exc:
            raise SacError(f"{path}: malformed frame entry {entry.get('clip')}:"
                           f"{entry.get('index')} ({exc})") from None
        if frame.split not in ("train", "heldout"):
            raise SacError(f"{path}: {frame.key} has split '{frame.split}'")
        if split in ("all", frame.split):
            frames.append(frame)
    if not frames:
        raise SacError(f"{path} has no frames in split '{split}'")
    return frames


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sac_ros" / "evalset"


def read_frames(frames: list[LabelledFrame], use_cache: bool = True) -> list[np.ndarray]:
    """Decode the labelled frames (RGB uint8) from the installed sample clips."""
    found: dict[str, np.ndarray] = {}
    wanted: dict[str, dict[int, LabelledFrame]] = {}
    for frame in frames:
        cached = _cache_path(frame) if use_cache else None
        if cached is not None and cached.is_file():
            with Image.open(cached) as img:
                found[frame.key] = np.array(img.convert("RGB"))
        else:
            wanted.setdefault(frame.clip, {})[frame.index] = frame
    for clip, by_index in wanted.items():
        last = max(by_index)
        with av.open(str(sample_video(clip))) as container:
            for index, decoded in enumerate(container.decode(video=0)):
                if index in by_index:  # convert only the frames we keep
                    rgb = decoded.to_ndarray(format="rgb24")
                    frame = by_index[index]
                    if rgb.shape[:2] != (frame.height, frame.width):
                        raise SacError(f"{frame.key}: the clip is {rgb.shape[1]}x{rgb.shape[0]}"
                                       f" but the labels are {frame.width}x{frame.height}")
                    found[frame.key] = rgb
                    if use_cache:
                        path = _cache_path(frame)
                        path.parent.mkdir(parents=True, exist_ok=True)
                        tmp = path.with_suffix(".tmp.png")
                        Image.fromarray(rgb).save(tmp)
                        tmp.replace(path)  # atomic: a parallel reader never sees half a file
                if index >= last:
                    break
        missing = [f.key for f in by_index.values() if f.key not in found]
        if missing:
            raise SacError(f"sample clip {clip} has no frame(s) {', '.join(missing)}")
    return [found[f.key] for f in frames]


def _cache_path(frame: LabelledFrame) -> Path:
    size = sample_video(frame.clip).stat().st_size  # a different clip file -> a new folder
    return cache_dir() / f"{frame.clip}-{size}" / f"{frame.index:05d}.png"
