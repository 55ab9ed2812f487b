"""``sac eval --target-mbps``: the rate controller on a clip, against capped uniform coding.

For each codec and target, each configured mode runs under its ``RateController``
(CRFs re-chosen at every key frame, VBV cap). The report gives the bitrate over
every 1-second window after the first GOP, relative to the target, and the quality
against uniform coding capped by the same VBV whose CRF is solved to spend the same
bytes (+-1%): the ROI gain at equal average bitrate.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np

from sac_ros.config import rate_controller, rate_gop
from sac_ros.core import metrics
from sac_ros.core.codec import CODECS, Vbv
from sac_ros.core.errors import SacError
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


def run_rate_control(args, cfg, clip, settings, blocks, mask_description, out: Path,
                     codecs: list[str], progress, plots) -> int:
    section = cfg["ratecontrol"]
    fps = clip.fps
    gop = rate_gop(section, fps)
    if len(clip.frames) < gop + round(fps):
        raise SacError(f"--target-mbps needs at least one GOP plus one second of frames "
                       f"({gop + round(fps)} here); give --frames")
    settings = dataclasses.replace(settings, gop=gop)
    coder = ClipCoder(clip.frames, blocks, settings, progress, int(cfg["mask"]["block_size"]))
    tolerance = float(cfg["eval"].get("size_tolerance", 0.01))
    print(f"input: {clip.source}  {clip.width}x{clip.height}, {len(clip.frames)} frames at "
          f"{fps:g} fps; mask: {mask_description}; preset {settings.preset}, GOP {gop} "
          f"({section['gop_s']:g} s) under rate control", file=sys.stderr)
    records, traces = [], {}
    for codec in codecs:
        for target_mbps in args.target_mbps:
            target = target_mbps * 1e6
            cap = target * float(section["cap_ratio"])
            cap_kbps = max(1, int(cap / 1000))
            vbv = Vbv(cap_kbps, max(1, int(cap_kbps * float(section["vbv_buffer_s"]))))
            for mode in section["modes"]:
                controller = rate_controller(section, target, fps, gop, mode, clip.width,
                                             clip.height, int(cfg["mask"]["block_size"]),
                                             roi_share=float(blocks[0].mean()))
                result = coder.run(codec, mode, 0, controller=controller)
                stats = _window_stats(result.frame_bytes, fps, gop, target)
                # Uniform coding under the same VBV cap, at the same bytes (+-1%).
                match = coder.match_uniform(codec, result.total_bytes, tolerance,
                                            guess=controller.history[-1]["roi_crf"], vbv=vbv)
                base = coder.run(codec, "uniform", match.crf, vbv=vbv)
                windows = stats.pop("windows")
                traces[(codec, target_mbps, mode)] = windows
                records.append({
                    "codec": codec, "target_mbps": target_mbps, "mode": mode, "gop": gop,
                    "frames": len(clip.frames), **stats,
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
                })
        label = CODECS[codec][2]
        plots.rate_trace(out / f"rate_{label}.png",
                         f"{label} {settings.preset}, GOP {gop}: 1-s windows after the first GOP",
                         {f"{mode} @ {t:g} Mbit/s": traces[(codec, t, mode)]
                          for t in args.target_mbps for mode in section["modes"]},
                         fps, BAND)
    print()
    print(f"Rate control: 1-s windows after the first GOP, relative to the target (band "
          f"{BAND[0]:.0%}-{BAND[1]:.0%}); quality against uniform capped by the same VBV at "
          "the same bytes:")
    header = (f"{'codec':<6}{'target':>7}  {'mode':<9}{'avg':>7}{'win min':>9}{'win max':>9}"
              f"{'band':>6}{'ROI':>8}{'non-ROI':>9}{'unif ROI':>10}{'ROI gain':>10}"
              f"{'non-ROI':>9}")
    print(header)
    print("-" * len(header))
    for r in records:
        print(f"{r['codec']:<6}{r['target_mbps']:>6g}M  {r['mode']:<9}{r['avg_mbps']:>7.3f}"
              f"{r['window_min']:>9.1%}{r['window_max']:>9.1%}{'yes' if r['in_band'] else 'NO':>6}"
              f"{r['roi_psnr']:>8.2f}{r['non_roi_psnr']:>9.2f}{r['uniform_roi_psnr']:>10.2f}"
              f"{r['roi_gain_db']:>+10.2f}{r['non_roi_change_db']:>+9.2f}")
        if r["warning"]:
            print(f"  warning: {r['warning']}")
    path = Path(args.json) if args.json else out / "rate_control.json"
    path.write_text(json.dumps({
        "input": clip.source, "width": clip.width, "height": clip.height,
        "frames": len(clip.frames), "fps": fps, "mask": mask_description,
        "preset": settings.preset, "gop": gop, "band": BAND, "ratecontrol": section,
        "records": records}, indent=2, default=_json_default) + "\n")
    print(f"wrote {path} and rate_*.png in {out}/")
    return 0


def _json_default(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to JSON")
