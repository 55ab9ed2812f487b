"""The ``sac eval --target-mbps`` experiment: the rate controller on a clip, against capped
uniform coding. Returns the results; prints nothing.

For each codec and target, each configured mode runs under its ``RateController``
(CRFs re-chosen at every key frame, VBV cap). The report gives the bitrate over
every 1-second window after the first GOP, relative to the target, and the quality
against uniform coding capped by the same VBV whose CRF is solved to spend the same
bytes (+-1%): the ROI gain at equal average bitrate.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np

from sac_ros.config import RateControlConfig, rate_controller, rate_gop
from sac_ros.core import metrics
from sac_ros.core.codec import CODECS, EncoderSettings, Vbv
from sac_ros.core.errors import SacError
from sac_ros.core.io import Clip
from sac_ros.eval.coder import ClipCoder

# The acceptance band for 1-second windows after the first GOP, relative to the target.
BAND = (0.85, 1.05)


def _window_stats(frame_bytes: list[int], fps: float, gop: int, target_bps: float) -> dict:
    after = frame_bytes[gop:]  # the first GOP runs on the controller's prior
    windows = metrics.window_bitrates(after, fps) / target_bps
    average = sum(after) * 8.0 * fps / len(after)
    return {"avg_mbps": average / 1e6, "window_min": float(windows.min()),
            "window_max": float(windows.max()),
            "in_band": bool(BAND[0] <= windows.min() and windows.max() <= BAND[1]),
            "windows": windows}


def rate_clip_gop(section: RateControlConfig, fps: float, frames: int) -> int:
    """The GOP under rate control (config ``ratecontrol``); the clip must hold one GOP and
    one second after it."""
    gop = rate_gop(section, fps)
    if frames < gop + round(fps):
        raise SacError(f"--target-mbps needs at least one GOP plus one second of frames "
                       f"({gop + round(fps)} here); give --frames")
    return gop


def run_rate_control(clip: Clip, blocks, settings: EncoderSettings, section: RateControlConfig,
                     targets_mbps: list[float], codecs: list[str], out: Path,
                     progress: Callable[[int], None] | None = None, block_size: int = 16,
                     tolerance: float = 0.01, mask: str = "") -> dict:
    """Each codec, target and mode of ``section`` (config ``ratecontrol``) under its
    controller, against capped uniform coding at equal bytes; writes ``rate_*.png`` into
    ``out`` and returns the JSON document (``rate_control.json``; ``mask`` describes the
    masks' source there)."""
    from sac_ros.eval import plots  # matplotlib: imported only when needed

    fps = clip.fps
    gop = rate_clip_gop(section, fps, len(clip.frames))
    settings = dataclasses.replace(settings, gop=gop)
    coder = ClipCoder(clip.frames, blocks, settings, progress, block_size)
    records, traces = [], {}
    for codec in codecs:
        for target_mbps in targets_mbps:
            for mode in section.modes:
                record, windows = _controlled(coder, codec, mode, target_mbps, section, fps,
                                              gop, float(blocks[0].mean()), tolerance)
                traces[(codec, target_mbps, mode)] = windows
                records.append(record)
        label = CODECS[codec][2]
        plots.rate_trace(out / f"rate_{label}.png",
                         f"{label} {settings.preset}, GOP {gop}: 1-s windows after the first GOP",
                         {f"{mode} @ {t:g} Mbit/s": traces[(codec, t, mode)]
                          for t in targets_mbps for mode in section.modes},
                         fps, BAND)
    return {"input": clip.source, "width": clip.width, "height": clip.height,
            "frames": len(clip.frames), "fps": fps, "mask": mask, "preset": settings.preset,
            "gop": gop,
            "band": BAND, "ratecontrol": dataclasses.asdict(section), "records": records}


def _controlled(coder: ClipCoder, codec: str, mode: str, target_mbps: float,
                section: RateControlConfig,
                fps: float, gop: int, roi_share: float,
                tolerance: float) -> tuple[dict, np.ndarray]:
    """One controlled run and its capped uniform match: (record, 1-s window trace)."""
    target = target_mbps * 1e6
    cap = target * float(section.cap_ratio)
    cap_kbps = max(1, int(cap / 1000))
    vbv = Vbv(cap_kbps, max(1, int(cap_kbps * float(section.vbv_buffer_s))))
    controller = rate_controller(section, target, fps, gop, mode, coder.width, coder.height,
                                 coder.block_size, roi_share=roi_share)
    result = coder.run(codec, mode, 0, controller=controller)
    stats = _window_stats(result.frame_bytes, fps, gop, target)
    # Uniform coding under the same VBV cap, at the same bytes (+-1%).
    match = coder.match_uniform(codec, result.total_bytes, tolerance,
                                guess=controller.history[-1]["roi_crf"], vbv=vbv)
    base = coder.run(codec, "uniform", match.crf, vbv=vbv)
    windows = stats.pop("windows")
    return {
        "codec": codec, "target_mbps": target_mbps, "mode": mode, "gop": gop,
        "frames": len(coder.frames), **stats,
        "roi_psnr": result.roi_psnr, "non_roi_psnr": result.non_roi_psnr,
        "psnr": result.psnr, "uniform_crf": match.crf,
        "uniform_size_error_pct": 100.0 * match.error,
        "uniform_roi_psnr": base.roi_psnr, "uniform_non_roi_psnr": base.non_roi_psnr,
        "roi_gain_db": result.roi_psnr - base.roi_psnr,
        "non_roi_change_db": result.non_roi_psnr - base.non_roi_psnr,
        "floor_mbps": (controller.floor_bps or 0.0) / 1e6,
        "warning": controller.warning,
        "gops": [{k: (round(v, 4) if isinstance(v, float) else v)
                  for k, v in h.items()} for h in controller.history],
    }, windows


def write_json(document: dict, path: Path) -> None:
    path.write_text(json.dumps(document, indent=2, default=_json_default) + "\n")


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
