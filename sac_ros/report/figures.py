"""Pictures of ``sac report``: rate, quality and latency over time (PNG), the crop figure
(``eval/plots.crop_figure``) and, with ``--video``, one MP4 per camera (``eval/video``)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator  # noqa: E402

from sac_ros.eval.plots import crop_figure, mbps_axis  # noqa: E402

IOU_FLOOR = 1e-4   # 1 - IoU is drawn on a log axis: an IoU of exactly 1 is shown at 0.9999

plt.rcParams.update({"font.size": 10, "axes.titlesize": 11, "axes.grid": True,
                     "grid.alpha": 0.3})


def _time_axis(frames: list[dict]) -> np.ndarray:
    stamps = np.array([f["stamp_ns"] for f in frames], np.float64)
    return (stamps - stamps[0]) / 1e9


def _value(frames: list[dict], key: str) -> np.ndarray:
    return np.array([np.nan if f.get(key) is None else f[key] for f in frames], np.float64)


def nominal_fps(frames: list[dict]) -> float:
    """Frame rate from the median stamp spacing (gaps between sequences ignored)."""
    stamps = np.array([f["stamp_ns"] for f in frames], np.float64)
    if len(stamps) < 2:
        return 1.0
    step = float(np.median(np.diff(stamps)))
    return 1e9 / step if step > 0 else 1.0


def windowed_mbits(frames: list[dict], window_s: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """(times, Mbit/s): bits of the frames stamped in (t - window, t], at every frame whose
    window lies inside the run. Camera time, so dropped frames lower the rate as they should."""
    t = _time_axis(frames)
    bits = np.cumsum([8.0 * f["bytes"] for f in frames])
    start = np.searchsorted(t, t - window_s, side="right")   # first frame inside the window
    inside = t - window_s >= t[0] - 1e-9
    before = np.where(start > 0, bits[np.maximum(start - 1, 0)], 0.0)
    return t[inside], (bits - before)[inside] / window_s / 1e6


def mean_mbits(frames: list[dict]) -> float:
    """Payload bits over the run's camera time (one frame period added for the last frame)."""
    t = _time_axis(frames)
    span = (t[-1] - t[0]) + 1.0 / nominal_fps(frames) if len(frames) > 1 else 0.0
    return 8.0 * sum(f["bytes"] for f in frames) / span / 1e6 if span > 0 else float("nan")


def rate_plot(path: Path, title: str, frames: list[dict]) -> dict:
    """Per-frame kB (key frames marked) and Mbit/s over a sliding one-second window."""
    t = _time_axis(frames)
    kb = _value(frames, "kb")
    roi_kb = _value(frames, "roi_bytes") / 1000.0
    key = np.array([bool(f["key_frame"]) for f in frames])
    fps = nominal_fps(frames)
    window_t, window = windowed_mbits(frames)
    fig, axes = plt.subplots(2, 1, figsize=(10, 6.2), sharex=True, constrained_layout=True)
    ax = axes[0]
    ax.plot(t, kb, "-", color="tab:blue", lw=1.2, label="packet (both streams)")
    if np.any(_value(frames, "non_roi_bytes") > 0):
        ax.plot(t, roi_kb, "-", color="tab:green", lw=1.0, label="ROI stream")
    ax.plot(t[key], kb[key], "v", color="tab:red", ms=6, label="key frame")
    ax.set_ylabel("kB / frame")
    mbps_axis(ax, fps, "y")
    ax.set_title(f"{title}: size per frame (mean {np.nanmean(kb):.2f} kB)")
    ax.legend(loc="best", fontsize=9)
    ax = axes[1]
    if window.size:
        ax.plot(window_t, window, "-", color="tab:purple", lw=1.5)
        ax.set_title(f"bit rate over the last second of camera time ({len(frames)} coded "
                     f"frames, camera at {fps:.1f} fps; mean {mean_mbits(frames):.2f}, "
                     f"max {np.max(window):.2f} Mbit/s)")
    else:
        ax.set_title("bit rate: the run is shorter than one second")
    ax.set_ylabel("Mbit/s")
    ax.set_xlabel("camera time (s)")
    ax.set_ylim(bottom=0)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return {"mbit_per_s_mean": mean_mbits(frames),
            "mbit_per_s_max": float(np.max(window)) if window.size else None,
            "fps": fps}


def _legend_outside(ax) -> None:
    """The legend to the right of the axes, never on the curves."""
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, borderaxespad=0)


def quality_plot(path: Path, title: str, frames: list[dict]) -> None:
    t = _time_axis(frames)
    panels = 3 if any("seg_roi_iou" in f for f in frames) else 2
    fig, axes = plt.subplots(panels, 1, figsize=(12, 2.9 * panels), sharex=True,
                             constrained_layout=True)
    for ax, keys, unit in ((axes[0], ("psnr", "roi_psnr", "non_roi_psnr"), "PSNR (dB)"),
                           (axes[1], ("ssim", "roi_ssim", "non_roi_ssim"), "SSIM")):
        for k, colour, label in zip(keys, ("black", "tab:green", "tab:orange"),
                                    ("overall", "ROI blocks", "non-ROI blocks"), strict=True):
            values = _value(frames, k)
            ax.plot(t, values, "-", color=colour, lw=1.2,
                    label=f"{label} (mean {np.nanmean(values):.3g})")
        ax.set_ylabel(unit)
        _legend_outside(ax)
    axes[0].set_title(f"{title}: quality of the reconstruction against the original")
    if panels == 3:
        _iou_panel(axes[2], t, frames)
    axes[-1].set_xlabel("camera time (s)")
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _iou_panel(ax, t: np.ndarray, frames: list[dict]) -> None:
    """IoU on a log scale of 1 - IoU, upside down: 0.99, 0.999 and 0.9999 a decade apart,
    better higher up, ticks labelled in IoU."""
    def loss(values) -> np.ndarray:
        return np.maximum(1.0 - np.asarray(values, np.float64), IOU_FLOOR)

    shown = [loss(_value(frames, "seg_roi_iou"))]
    ax.plot(t, shown[0], "-", color="tab:blue", lw=1.2,
            label="ROI IoU: reconstructed vs original segmentation")
    if any("gt_roi_iou_reconstructed" in f for f in frames):
        gt = [(tt, f["gt_roi_iou_reconstructed"]) for tt, f in zip(t, frames, strict=True)
              if "gt_roi_iou_reconstructed" in f]
        times, values = zip(*gt, strict=True)
        shown.append(loss(values))
        ax.plot(times, shown[-1], "o", color="tab:red", ms=5,
                label="ROI IoU vs ground-truth labels")
    ax.set_yscale("log")
    worst = np.nanmax(np.concatenate(shown)) if np.isfinite(np.concatenate(shown)).any() \
        else IOU_FLOOR
    ax.set_ylim(min(1.0, max(2.0 * worst, 0.01)), 0.7 * IOU_FLOOR)  # inverted: best on top
    ax.yaxis.set_major_locator(FixedLocator([1.0, 0.1, 0.01, 1e-3, 1e-4]))
    ax.yaxis.set_minor_locator(NullLocator())
    ax.yaxis.set_major_formatter(FuncFormatter(lambda y, _: f"{1.0 - y:.4g}"))
    ax.set_ylabel("IoU (log scale of 1 - IoU)")
    _legend_outside(ax)


def latency_plot(path: Path, title: str, frames: list[dict]) -> None:
    t = _time_axis(frames)
    e2e = _value(frames, "latency_ms")
    sensor = _value(frames, "sensor_latency_ms")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.0), constrained_layout=True)
    ax = axes[0]
    shown = e2e if np.any(~np.isnan(e2e)) else sensor
    label = "camera -> reconstructed" if shown is e2e else "camera -> packet"
    data = shown[~np.isnan(shown)]
    ax.hist(data, bins=min(40, max(5, data.size // 3)), color="tab:blue", alpha=0.8)
    for q, style in ((50, "-"), (90, "--"), (99, ":")):
        value = np.percentile(data, q)
        ax.axvline(value, color="tab:red", ls=style, lw=1.2, label=f"p{q} {value:.1f} ms")
    ax.set_xlabel(f"latency {label} (ms)")
    ax.set_ylabel("frames")
    ax.set_title(f"{title}: latency distribution")
    ax.legend(fontsize=9)
    ax = axes[1]
    if np.any(~np.isnan(e2e)):
        ax.plot(t, e2e, ".-", lw=0.8, ms=3, label="camera -> reconstructed")
    ax.plot(t, sensor, ".-", lw=0.8, ms=3, label="camera -> packet (sensor)")
    ax.plot(t, _value(frames, "encode_ms"), ".-", lw=0.8, ms=3, label="encode (sensor)")
    ax.set_xlabel("camera time (s)")
    ax.set_ylabel("ms")
    ax.set_title("latency over time")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=9)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def frame_plot(path: Path, sample: dict) -> None:
    """The crop figure of the sample frame (``eval.plots.crop_figure``)."""
    crop_figure(path, sample["original"],
                [(f"{sample['method']}: {sample['kb']:.1f} kB", sample["reconstructed"])],
                sample["blocks_px"], sample["index"])


class CameraVideos:
    """``sac report --video``: one ``<camera>_video.mp4`` per camera, each frame at its
    camera stamp (``eval.video.TileVideo``); fed frame by frame, holding no frames."""

    def __init__(self, out: Path, slug):
        self.out, self.slug = out, slug        # slug(camera) -> a file-name stem
        self.writers: dict[str, tuple[object, int]] = {}

    def __call__(self, camera: str, stamp_ns: int, original: np.ndarray, test: np.ndarray,
                 mask: np.ndarray) -> None:
        from sac_ros.eval.video import TileVideo

        if camera not in self.writers:
            self.writers[camera] = (TileVideo(self.out / f"{self.slug(camera)}_video.mp4"),
                                    stamp_ns)
        writer, first = self.writers[camera]
        writer.add(original, test, mask, (stamp_ns - first) / 1e9)

    def close(self) -> dict[str, str]:
        """{camera: file name} of the videos written."""
        for writer, _ in self.writers.values():
            writer.close()
        return {camera: writer.path.name for camera, (writer, _) in self.writers.items()}
