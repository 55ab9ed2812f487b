"""``sac pipeline``: start the pipeline's nodes from config/pipeline.yaml without ros2 launch.

Each node runs in its own process (real DDS between them), from the same
parameter file and the same node list (sac_ros.pipeline) as the launch file.
With ``--source`` it also publishes a video per camera, measures the run end to
end and prints a summary. The processes and the measured run are sac_ros.pipeline's;
this module parses, checks and prints.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
import time

from sac_ros.core.errors import SacError
from sac_ros.core.io import parse_size
from sac_ros.pipeline import (
    Children,
    SourceRun,
    apply_params,
    delivery_headline,
    link_budget,
    load_layout,
    parse_link_budget,
    pipeline_nodes,
    run_with_source,
    source_size,
)


def add_parser(sub) -> None:
    p = sub.add_parser("pipeline", help="run the ROS 2 pipeline without ros2 launch",
                       description="Start sensor, ECU and perception nodes per camera from "
                                   "config/pipeline.yaml. With --source, also publish a video "
                                   "per camera and print an end-to-end summary.")
    p.add_argument("--config", help="pipeline parameter file (default: config/pipeline.yaml)")
    p.add_argument("--input-topic", default="", help="camera Image topic (default: config's)")
    p.add_argument("--model", default="", help="segmentation model for the ROI mask "
                   "(default | PATH); default: the config's mask source")
    p.add_argument("--source", help="publish this video / folder / sample[:clip] per camera "
                   "and print a summary when it ends")
    p.add_argument("--frames", type=int, default=0, help="with --source: frames to publish, "
                   "looping a shorter source (0 = the whole source once)")
    p.add_argument("--size", help="with --source: resize frames to WIDTHxHEIGHT")
    p.add_argument("--fps", type=float, default=0.0,
                   help="with --source: publish rate (default: the config's sac_video_source "
                        "fps, where 0 = the source's own)")
    p.add_argument("--param", "-p", action="append", default=[], metavar="NODE.NAME=VALUE",
                   help="override a node parameter, e.g. sac_sensor.preset=ultrafast "
                        "(repeatable)")
    p.add_argument("--no-perception", action="store_true", help="do not start perception nodes")
    p.add_argument("--view", action="store_true", help="also start sac_view: every camera "
                   "live in Foxglove over WebSocket (the config's sac_view port, 8765)")
    p.add_argument("--link-budget", metavar="MBPS|LINK",
                   help="with --source: the link the cameras share, in Mbit/s or by name "
                        "(100BASE-T1, 1000BASE-T1); default: the config's "
                        "sac_pipeline.link_budget_mbps")
    p.add_argument("--json", help="with --source: write the summary as JSON here")
    p.add_argument("--quality-every", type=int, default=1, metavar="N",
                   help="with --source: measure PSNR on every N-th frame (default 1: all); "
                        "the listener shares the CPU with the nodes it measures")
    p.add_argument("--startup-timeout", type=float, default=60.0,
                   help="seconds to wait for all nodes to be discovered")
    p.set_defaults(func=run)


def _interrupt(signum, frame):
    raise KeyboardInterrupt  # SIGTERM to the runner stops its nodes, as Ctrl-C does


def run(args) -> int:
    layout = load_layout(args.config)
    if args.no_perception:
        layout.perception = False
    if args.frames < 0:
        raise SacError("--frames must be >= 0")
    if args.quality_every < 1:
        raise SacError("--quality-every must be >= 1")
    if args.size:  # checked before any node starts
        args.size = parse_size(args.size)
    if args.link_budget is not None:
        layout.link_budget_mbps = parse_link_budget(args.link_budget)
    env = layout.environment()
    os.environ.update(env)  # this process's listener uses the same transports
    specs = pipeline_nodes(layout, args.input_topic, args.model, video_source=bool(args.source),
                           view=args.view)
    if args.source:  # the sensors prepare for the frames they will get (a -p can override)
        width, height = args.size or source_size(args.source)
        for spec in specs:
            if spec.executable == "sac_sensor":
                spec.overrides["frame_size"] = f"[{width},{height}]"
    apply_params(specs, args.param)
    signal.signal(signal.SIGTERM, _interrupt)
    children = Children(env)
    children.reclaim()
    config = str(layout.config)
    try:
        children.start_nodes([s for s in specs if s.executable != "sac_video_source"], config)
        if not args.source:
            print(f"sac pipeline: {len(children.procs)} nodes for cameras "
                  f"{', '.join(c or '/' for c in layout.cameras)}; Ctrl-C stops them",
                  file=sys.stderr)
            while not children.failed():
                time.sleep(0.5)
            raise SacError(f"node(s) stopped: {', '.join(children.failed())}")
        source_run = SourceRun(args.source, args.frames, args.size, args.fps,
                               args.quality_every, args.startup_timeout, args.input_topic)
        summary = run_with_source(source_run, layout, specs, children, config,
                                  log=lambda s: print(s, file=sys.stderr))
    except KeyboardInterrupt:
        return 130
    finally:
        children.stop()
    _print_summary(summary, layout.perception, layout.link_budget_mbps)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2, default=float)
    return 0


def _fmt(value, spec: str) -> str:
    return "-" if isinstance(value, float) and math.isnan(value) else format(value, spec)


def _print_summary(rows: list[dict], perception: bool, budget_mbps: float) -> None:
    for row in rows:
        print(f"camera {row['camera']}: " + delivery_headline(
            row["frames_out"], row["frames_sent"], row["drops"], row["unaccounted"]))
        print(f"  accounting: {row['frames_sent']} sent, sensor received {row['frames_in']}, "
              f"packets {row['packets']}, frames out {row['frames_out']}, counted drops "
              f"{sum(row['drops'].values())}, unaccounted {row['unaccounted']}")
        peak = row.get("peak_mbit_per_s", float("nan"))
        print(f"  rate   {_fmt(row['kb_per_frame'], '.2f')} kB/frame, "
              f"{_fmt(row['mbit_per_s'], '.2f')} Mbit/s at {_fmt(row['input_fps'], '.1f')} fps"
              + (f", busiest second {peak:.2f} Mbit/s" if math.isfinite(peak) else ""))
        skipped = (f", {row['quality_skipped']} skipped while the CPU was busy"
                   if row.get("quality_skipped") else "")
        print(f"  PSNR   ROI {_fmt(row['roi_psnr'], '.2f')} dB, "
              f"non-ROI {_fmt(row['non_roi_psnr'], '.2f')} dB over "
              f"{row.get('quality_frames', 0)} frames{skipped}")
        print(f"  latency camera stamp -> reconstructed image: "
              f"p50 {_fmt(row['latency_p50_ms'], '.1f')} ms, "
              f"p99 {_fmt(row['latency_p99_ms'], '.1f')} ms")
        if perception and not row["perception_frames"]:
            print("  perception (reconstructed vs original): no frame compared (its raw_topic "
                  "is off, or no original arrived)")
        elif perception:
            print(f"  perception (reconstructed vs original): iIoU {_fmt(row['iiou'], '.4f')}, "
                  f"mIoU {_fmt(row['miou'], '.4f')} over {row['perception_frames']} frames")
    print(link_budget([row["mbit_per_s"] for row in rows], budget_mbps,
                      [row.get("peak_mbit_per_s") for row in rows])["line"])
