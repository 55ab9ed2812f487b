"""Non-ROI pre-filtering: low-pass the non-ROI blocks before they are encoded.

MPEG's Video Coding for Machines resamples the background before coding it; here the
frame's padded I420 planes are low-passed (``blur``: a Gaussian of ``strength`` luma
pixels) or resampled (``downscale``: box-averaged by a factor of ``strength``, then
bilinearly back up), and only the non-ROI blocks take the result: ROI blocks are left
untouched bit for bit, on the same block grid as the split and the QP offsets. Less
high-frequency detail costs the encoder fewer bits at the same CRF / QP. Chroma is
filtered at half the luma strength of ``blur`` (its planes are half the size).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from sac_ros.core.errors import SacError
from sac_ros.core.frames import PlaneLayout

NONROI_FILTERS = ("none", "blur", "downscale")
# strength: blur = Gaussian sigma in luma pixels; downscale = the resampling factor.
STRENGTH_RANGES = {"none": (0.0, 64.0), "blur": (0.1, 32.0), "downscale": (1.0, 16.0)}


@dataclass(frozen=True)
class Prefilter:
    kind: str = "none"
    strength: float = 2.0

    def __post_init__(self):
        if self.kind not in NONROI_FILTERS:
            raise SacError(f"unknown nonroi_filter '{self.kind}'; choose one of "
                           f"{', '.join(NONROI_FILTERS)}")
        low, high = STRENGTH_RANGES[self.kind]
        try:
            strength = float(self.strength)
        except (TypeError, ValueError):
            raise SacError(f"nonroi_filter_strength must be a number, got "
                           f"{self.strength!r}") from None
        if not low <= strength <= high:
            what = "Gaussian sigma in pixels" if self.kind == "blur" else "resampling factor"
            raise SacError(f"nonroi_filter_strength {strength:g} is outside {low:g}-{high:g} "
                           f"for {self.kind} (the {what})")
        object.__setattr__(self, "strength", strength)

    @property
    def active(self) -> bool:
        return self.kind != "none"

    def describe(self) -> str:
        if not self.active:
            return "none"
        return (f"blur sigma {self.strength:g} px" if self.kind == "blur"
                else f"downscale x{self.strength:g}")

    def filter_plane(self, plane: np.ndarray, chroma: bool = False) -> np.ndarray:
        """The whole plane low-passed (uint8, same shape)."""
        image = Image.fromarray(plane)
        height, width = plane.shape
        if self.kind == "blur":
            sigma = self.strength / 2 if chroma else self.strength
            return np.asarray(image.filter(ImageFilter.GaussianBlur(sigma)))
        small = (max(1, round(width / self.strength)), max(1, round(height / self.strength)))
        reduced = image.resize(small, Image.Resampling.BOX)
        return np.asarray(reduced.resize((width, height), Image.Resampling.BILINEAR))

    def margin(self) -> int:
        """Luma pixels around the non-ROI blocks that the filter reads."""
        return int(np.ceil(3 * self.strength if self.kind == "blur" else 2 * self.strength))

    def apply(self, layout: PlaneLayout, i420: np.ndarray, blocks: np.ndarray) -> None:
        """Low-pass the non-ROI blocks of a padded I420 frame in place (``blocks``: True =
        ROI, kept exactly)."""
        if not self.active or blocks.all():
            return
        drop = ~blocks
        # Filter only the window the non-ROI blocks (plus the filter's reach) cover: the
        # sky and trees are usually the top part of the frame.
        rows, cols = np.flatnonzero(drop.any(axis=1)), np.flatnonzero(drop.any(axis=0))
        b, m = layout.block_size, self.margin()
        window = (max(0, rows[0] * b - m), min(layout.padded_height, (rows[-1] + 1) * b + m),
                  max(0, cols[0] * b - m), min(layout.padded_width, (cols[-1] + 1) * b + m))
        height = layout.padded_height
        quarter = height // 4
        planes = (i420[:height], i420[height:height + quarter].reshape(height // 2, -1),
                  i420[height + quarter:].reshape(height // 2, -1))
        where = drop[:, None, :, None]
        for index, (plane, tiles) in enumerate(zip(planes, layout.planes(i420), strict=True)):
            top, bottom, left, right = (v // (1 + (index > 0)) for v in window)
            filtered = plane.copy()
            filtered[top:bottom, left:right] = self.filter_plane(
                plane[top:bottom, left:right], chroma=index > 0)
            np.copyto(tiles, filtered.reshape(tiles.shape), where=where)
