"""PNG figures of ``sac eval`` (rate-distortion curves, rate traces) and the crop figure
that ``sac eval`` and ``sac report`` share (``crop_figure``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from sac_ros.eval.coder import RunResult, SweepPoint  # noqa: E402
from sac_ros.eval.video import ERROR_CMAP, ERROR_VMAX, error_map  # noqa: E402

ROI_COLOUR = "yellow"     # the ROI block outline, as in the video
ZOOM_COLOUR = "cyan"      # the zoom window on the whole frame


def mbps_axis(ax, fps: float, which: str = "x") -> None:
    """A second axis in Mbit/s at ``fps`` beside an axis in kB per frame."""
    def to_mbps(kb):
        return np.asarray(kb) * 8.0 * fps / 1000.0

    def to_kb(mbps):
        return np.asarray(mbps) * 1000.0 / (8.0 * fps)

    if which == "x":
        ax.secondary_xaxis("top", functions=(to_mbps, to_kb)).set_xlabel(
            f"Mbit/s at {fps:g} fps")
    else:
        ax.secondary_yaxis("right", functions=(to_mbps, to_kb)).set_ylabel(
            f"Mbit/s at {fps:g} fps")


def _two_panel_rd(path: Path, title: str, curves: dict[str, list[SweepPoint]],
                  markers: list[RunResult], fps: float,
                  panels: tuple[tuple[str, str], tuple[str, str]]) -> None:
    """Two quantities (attribute, y label) against kB/frame, Mbit/s at the camera rate
    on top: the curves, and the equal-bytes runs as stars."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), constrained_layout=True)
    for ax, (key, label) in zip(axes, panels, strict=True):
        for name, points in curves.items():
            style = "o-" if name.startswith("uniform") else "s--"
            ax.plot([p.kb_per_frame for p in points], [getattr(p, key) for p in points],
                    style, label=name)
        for run in markers:
            ax.plot(run.kb_per_frame, getattr(run, key), "*", markersize=12, label=run.method)
        ax.set_xlabel("kB / frame")
        mbps_axis(ax, fps)
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    axes[0].legend(fontsize=8, loc="best")
    fig.suptitle(title)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def rd_curves(path: Path, title: str, curves: dict[str, list[SweepPoint]],
              markers: list[RunResult], fps: float) -> None:
    """ROI and non-ROI PSNR against kB/frame (and Mbit/s at the camera rate on top)."""
    _two_panel_rd(path, title, curves, markers, fps,
                  (("roi_psnr", "ROI PSNR (dB)"), ("non_roi_psnr", "non-ROI PSNR (dB)")))


def task_rd_curves(path: Path, title: str, curves: dict[str, list[SweepPoint]],
                   markers: list[RunResult], fps: float, reference: str) -> None:
    """Perception accuracy on the reconstructions (mIoU, ROI iIoU; eval/task.py) against
    kB/frame: the curves the task BD-rates are taken on."""
    against = "labels" if reference == "labels" else "the original frames' segmentation"
    _two_panel_rd(path, f"perception on the reconstruction: {title}", curves, markers, fps,
                  (("task_miou", f"mIoU vs {against}"),
                   ("task_roi_iiou", f"ROI iIoU vs {against}")))


def crop_window(blocks_px: np.ndarray, crop_h: int, crop_w: int) -> tuple[int, int]:
    """Top-left of a crop centred on the ROI boundary near the middle column."""
    height, width = blocks_px.shape
    edge_rows = np.nonzero(np.diff(blocks_px[:, width // 2].astype(np.int8)))[0]
    centre_row = int(edge_rows[0]) if len(edge_rows) else height // 2
    top = int(np.clip(centre_row - crop_h // 2, 0, max(height - crop_h, 0)))
    left = int(np.clip(width // 2 - crop_w // 2, 0, max(width - crop_w, 0)))
    return top, left


def crop_figure(path: Path, original: np.ndarray, panels: list[tuple[str, np.ndarray]],
                blocks_px: np.ndarray, frame_index: int, crop: tuple[int, int] = (200, 320)
                ) -> None:
    """Frame ``frame_index``: a zoom on the ROI boundary of the original and of each
    reconstruction in ``panels`` (title, RGB), under each reconstruction its difference
    map, under the original the whole frame with the zoom window; one legend."""
    crop_h, crop_w = min(crop[0], original.shape[0]), min(crop[1], original.shape[1])
    top, left = crop_window(blocks_px, crop_h, crop_w)
    window = (slice(top, top + crop_h), slice(left, left + crop_w))
    cols = 1 + len(panels)
    fig, axes = plt.subplots(2, cols, figsize=(4.2 * cols, 6.6), squeeze=False,
                             constrained_layout=True)
    for ax, (title, image) in zip(axes[0], [("original", original)] + panels, strict=True):
        _zoom(ax, image[window], blocks_px[window], f"{title} (zoom)")
    _overview(axes[1][0], original, blocks_px, (top, left, crop_h, crop_w))
    shown = None
    for ax, (title, image) in zip(axes[1][1:], panels, strict=True):
        shown = ax.imshow(error_map(original[window], image[window]), cmap=ERROR_CMAP,
                          vmin=0, vmax=ERROR_VMAX, interpolation="nearest")
        ax.contour(blocks_px[window], levels=[0.5], colors=ROI_COLOUR, linewidths=0.6)
        ax.set_title(f"difference: {title}", fontsize=8)
        ax.axis("off")
    if shown is not None:
        fig.colorbar(shown, ax=list(axes[1][1:]), shrink=0.8,
                     label=f"error (levels, {ERROR_VMAX:g}+ saturates)")
    fig.legend(handles=[Line2D([], [], color=ROI_COLOUR, lw=1.5, label="ROI block outline"),
                        Rectangle((0, 0), 1, 1, fill=False, edgecolor=ZOOM_COLOUR, lw=1.5,
                                  label="zoom window")],
               loc="outside lower center", ncols=2, fontsize=9)
    fig.suptitle(f"frame {frame_index}: {crop_w}x{crop_h} px at the ROI boundary")
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _zoom(ax, image: np.ndarray, blocks: np.ndarray, title: str) -> None:
    ax.imshow(image, interpolation="nearest")
    ax.contour(blocks, levels=[0.5], colors=ROI_COLOUR, linewidths=0.8)
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def _overview(ax, original: np.ndarray, blocks: np.ndarray, box: tuple[int, int, int, int]
              ) -> None:
    top, left, height, width = box
    ax.imshow(original, interpolation="bilinear")
    ax.contour(blocks, levels=[0.5], colors=ROI_COLOUR, linewidths=0.6)
    ax.add_patch(Rectangle((left - 0.5, top - 0.5), width, height, fill=False,
                           edgecolor=ZOOM_COLOUR, lw=1.5))
    ax.set_title("whole frame", fontsize=9)
    ax.axis("off")


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
