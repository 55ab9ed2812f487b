"""A run as a video people can watch: an MP4 (H.264 through PyAV) of 2x2 tiles,

    original        | reconstruction
    ROI-mask overlay | error heatmap

each labelled, at camera time (every frame shown at its own time stamp). ``sac eval
--video`` and ``sac report --video`` write it; the crop figures (``eval/plots.py``) use
the same error map and colours, so a picture reads the same in both.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import binary_erosion

# The heatmap saturates at 32 levels: codec error is mostly under 10 there, so smears and
# boundary flashes (> 40 levels, the flash metric) stand out at full colour.
ERROR_VMAX = 32.0
ERROR_CMAP = "inferno"
ROI_OUTLINE = (255, 255, 0)      # yellow, as the figures draw the ROI block outline
ROI_TINT = np.array([0, 255, 0], np.float32)
ROI_ALPHA = 0.35                 # enough green to see, little enough to see the road through
LABELS = ("original", "reconstruction", "ROI blocks (green, yellow edge)",
          f"error |original - reconstruction|, 0-{ERROR_VMAX:g} levels")
VIDEO_CRF = 18                   # near-transparent: the error shown is SAC's, not this file's
TIME_BASE = Fraction(1, 90000)   # the MPEG clock: exact for 25, 30, 29.97 and 17 fps


def error_map(original: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Per-pixel error, the largest absolute difference over the channels (float32)."""
    diff = np.abs(original.astype(np.int16) - test.astype(np.int16))
    return (diff.max(axis=2) if diff.ndim == 3 else diff).astype(np.float32)


def _lut() -> np.ndarray:
    from matplotlib import colormaps

    return (colormaps[ERROR_CMAP](np.linspace(0.0, 1.0, 256))[:, :3] * 255).astype(np.uint8)


_LUT = _lut()


def heatmap(original: np.ndarray, test: np.ndarray) -> np.ndarray:
    """The error map in ``ERROR_CMAP``, 0 to ``ERROR_VMAX`` levels (uint8 RGB)."""
    index = np.clip(error_map(original, test) * (255.0 / ERROR_VMAX), 0, 255)
    return _LUT[index.astype(np.uint8)]


def roi_edge(mask: np.ndarray) -> np.ndarray:
    """The ROI's pixels that touch non-ROI pixels (the outline, inside the ROI)."""
    return mask & ~binary_erosion(mask, border_value=1)


def roi_overlay(frame: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``frame`` with the ROI tinted green and outlined in yellow."""
    out = frame.astype(np.float32)
    out[mask] = (1.0 - ROI_ALPHA) * out[mask] + ROI_ALPHA * ROI_TINT
    out = out.astype(np.uint8)
    out[roi_edge(mask)] = ROI_OUTLINE
    return out


def _label(image: np.ndarray, text: str) -> np.ndarray:
    """``text`` at the top left, white on a black box, sized to the frame."""
    picture = Image.fromarray(image)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(9, image.shape[0] // 28))
    box = draw.textbbox((3, 2), text, font=font)
    draw.rectangle((0, 0, box[2] + 3, box[3] + 2), fill=(0, 0, 0))
    draw.text((3, 2), text, fill=(255, 255, 255), font=font)
    return np.asarray(picture)


def tile(original: np.ndarray, test: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The 2x2 picture of one frame (twice the frame's height and width)."""
    quads = [original, test, roi_overlay(original, mask), heatmap(original, test)]
    quads = [_label(q, text) for q, text in zip(quads, LABELS, strict=True)]
    return np.vstack([np.hstack(quads[:2]), np.hstack(quads[2:])])


class TileVideo:
    """Writes tiles to an MP4 as they come: nothing but the encoder's state is held."""

    def __init__(self, path: str | Path, preset: str = "veryfast"):
        self.path = Path(path)
        self.preset = preset
        self.frames = 0
        self._container = None
        self._stream = None
        self._last_pts = -1

    def add(self, original: np.ndarray, test: np.ndarray, mask: np.ndarray,
            time_s: float) -> None:
        """One frame at ``time_s`` seconds of camera time from the run's start."""
        picture = tile(original, test, mask)
        if self._stream is None:
            self._open(picture.shape[1], picture.shape[0])
        frame = av.VideoFrame.from_ndarray(picture, format="rgb24")
        # Stamps that stand still or go back (a replayed dataset's next sequence) still
        # need increasing presentation times.
        self._last_pts = max(int(round(time_s / TIME_BASE)), self._last_pts + 1)
        frame.pts, frame.time_base = self._last_pts, TIME_BASE
        for packet in self._stream.encode(frame):
            self._container.mux(packet)
        self.frames += 1

    def _open(self, width: int, height: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._container = av.open(str(self.path), "w")
        stream = self._container.add_stream("libx264")
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.codec_context.time_base = TIME_BASE
        stream.options = {"crf": str(VIDEO_CRF), "preset": self.preset}
        self._stream = stream

    def close(self) -> None:
        if self._container is None:
            return
        for packet in self._stream.encode():
            self._container.mux(packet)
        self._container.close()
        self._container = None

