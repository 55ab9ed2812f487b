#!/usr/bin/env python3
"""The noise floor of the task BD-rate (eval/task.py): uniform x264 against uniform x264.

Two encoders that code equally well but not bit-identically (x264 with its own thread
count, as the uniform runs of ``sac eval``, and with one thread per stream, as each
stream of dual_crf) are swept over the same CRFs; the task BD-rate of one against the
other is what the measurement reads when there is nothing to find. A mode's task
BD-rate inside this floor says nothing. The ROI PSNR BD-rate of the same pair is
printed beside it for scale.

    .venv/bin/python benchmarks/bench_task_noise.py [--clips project_video02 ...]
        [--frames 60] [--task-frames 0]
"""

from __future__ import annotations

import argparse
import dataclasses

from sac_ros.config import encoder_settings, load_core_config
from sac_ros.core import metrics
from sac_ros.core.io import load_clip
from sac_ros.eval.coder import ClipCoder, sweep
from sac_ros.eval.masks import clip_blocks
from sac_ros.eval.task import TaskMeter, scored_indexes, task_bd
from sac_ros.segmentation.loader import load_segmenter


def _fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clips", nargs="+",
                        default=["project_video02", "challenge01", "challenge02"])
    parser.add_argument("--frames", type=int, default=60)
    parser.add_argument("--task-frames", type=int, default=0, help="0 = every frame")
    args = parser.parse_args()
    cfg = load_core_config()
    crfs = cfg.eval.crf_sweep["h264"]
    segmenter = load_segmenter(model="default")
    print(f"x264 {cfg.codec.preset}, CRFs {crfs}, {args.frames} frames; task: "
          f"{segmenter.name} against its output on the original frames")
    for name in args.clips:
        clip = load_clip(f"sample:{name}", 0, args.frames)
        blocks, _ = clip_blocks(clip, cfg.mask, "default")
        settings = encoder_settings(cfg, None, clip.fps)
        meter = TaskMeter(segmenter, clip.frames,
                          scored_indexes(len(clip.frames), args.task_frames or None))
        curves = []
        for threads in (settings.threads, 1):
            coder = ClipCoder(clip.frames, blocks, dataclasses.replace(settings,
                                                                       threads=threads))
            coder.task = meter
            curves.append(sweep(coder, "h264", crfs, None))
        bd = task_bd(curves[0], curves[1], "h264", 0.0, "uniform", meter.reference)
        roi = metrics.bd_rate([p.kb_per_frame for p in curves[0]],
                              [p.roi_psnr for p in curves[0]],
                              [p.kb_per_frame for p in curves[1]],
                              [p.roi_psnr for p in curves[1]])
        print(f"{name}: one thread against x264's own: task BD-rate mIoU "
              f"{_fmt(bd.task_bd_rate_miou_pct, '+.1f')}%, ROI iIoU "
              f"{_fmt(bd.task_bd_rate_roi_iiou_pct, '+.1f')}% (at equal bytes mIoU "
              f"{_fmt(bd.bd_miou, '+.4f')}, ROI iIoU {_fmt(bd.bd_roi_iiou, '+.4f')}); "
              f"ROI PSNR BD-rate {roi:+.1f}%", flush=True)
    segmenter.close()


if __name__ == "__main__":
    main()
