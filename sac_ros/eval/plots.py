"""PNG figures for ``sac eval``: rate-distortion curves and a side-by-side crop."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sac_ros.eval.coder import RunResult, SweepPoint  # noqa: E402


def rd_curves(path: Path, title: str, curves: dict[str, list[SweepPoint]],
              markers: list[RunResult]) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, key, label in ((axes[0], "roi_psnr", "ROI PSNR (dB)"),
                           (axes[1], "non_roi_psnr", "non-ROI PSNR (dB)")):
        for name, points in curves.items():
            style = "o-" if name.startswith("uniform") else "s--"
            ax.plot([p.kb_per_frame for p in points], [getattr(p, key) for p in points],
                    style, label=name)
        for run in markers:
            ax.plot(run.kb_per_frame, getattr(run, key), "*", markersize=12, label=run.method)
        ax.set_xlabel("kB / frame")
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def crop_window(blocks_px: np.ndarray, crop_h: int, crop_w: int) -> tuple[int, int]:
    """Top-left of a crop centred on the ROI boundary near the middle column."""
    height, width = blocks_px.shape
    edge_rows = np.nonzero(np.diff(blocks_px[:, width // 2].astype(np.int8)))[0]
    centre_row = int(edge_rows[0]) if len(edge_rows) else height // 2
    top = int(np.clip(centre_row - crop_h // 2, 0, max(height - crop_h, 0)))
    left = int(np.clip(width // 2 - crop_w // 2, 0, max(width - crop_w, 0)))
    return top, left


def side_by_side(path: Path, original: np.ndarray, panels: list[tuple[str, np.ndarray]],
                 blocks_px: np.ndarray, crop: tuple[int, int] = (200, 320)) -> None:
    crop_h, crop_w = min(crop[0], original.shape[0]), min(crop[1], original.shape[1])
    top, left = crop_window(blocks_px, crop_h, crop_w)
    window = (slice(top, top + crop_h), slice(left, left + crop_w))
    images = [("original", original)] + panels
    fig, axes = plt.subplots(1, len(images), figsize=(4.2 * len(images), 3.2),
                             constrained_layout=True)
    for ax, (title, image) in zip(axes, images, strict=False):
        ax.imshow(image[window], interpolation="nearest")
        ax.contour(blocks_px[window], levels=[0.5], colors="yellow", linewidths=0.6)
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.savefig(path, dpi=130)
    plt.close(fig)


def rate_trace(path: Path, title: str, series: dict[str, np.ndarray], fps: float,
               band: tuple[float, float]) -> None:
    """Bitrate of each sliding 1-s window (relative to the target) over time, with the band."""
    fig, ax = plt.subplots(figsize=(9, 3.8), constrained_layout=True)
    for name, values in series.items():
        ax.plot(np.arange(len(values)) / fps, 100 * np.asarray(values), label=name)
    for level in band:
        ax.axhline(100 * level, color="grey", linestyle=":", linewidth=1)
    ax.axhline(100, color="black", linewidth=0.8)
    ax.set_xlabel("window start after the first GOP (s)")
    ax.set_ylabel("bitrate over 1 s (% of target)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)
