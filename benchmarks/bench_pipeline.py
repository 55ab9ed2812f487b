#!/usr/bin/env python3
"""End-to-end latency and sustained rate of the ROS 2 pipeline, over real DDS.

Runs `sac pipeline --source sample` (video source -> sensor -> ECU [-> perception],
each a separate process) for each case and prints the frames delivered of the frames
sent with the drops by reason, then camera-stamp -> reconstructed image latency p50/p99
(as received by a listener in another process, and as published by the ECU), sustained
output rate, kB/frame and ROI PSNR.
The listener receives every frame but measures PSNR on every 4th by default: on every
frame it costs about 5 ms of CPU per frame that the nodes under test then lack.

    .venv/bin/python benchmarks/bench_pipeline.py [--frames 450] [--quality-every 4] [--cases 0 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from sac_ros.pipeline import delivery_headline

ULTRAFAST = ["sac_sensor.preset=ultrafast", "sac_sensor.aq_mode=1"]
CASES = [
    # label, size, fps, perception, extra --param overrides
    ("1024x512@30 veryfast", "1024x512", 30, False, []),
    ("1024x512@30 ultrafast aq1", "1024x512", 30, False, ULTRAFAST),
    ("2048x1024@15 veryfast", "2048x1024", 15, False, []),
    ("2048x1024@15 ultrafast aq1", "2048x1024", 15, False, ULTRAFAST),
    ("1024x512@30 veryfast +perception", "1024x512", 30, True, []),
]


def run_case(size: str, fps: int, perception: bool, params: list[str], frames: int,
             model: str, config: str | None = None, quality_every: int = 1) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "summary.json"
        cmd = [sys.executable, "-m", "sac_ros.cli.main", "pipeline", "--source", "sample",
               "--frames", str(frames), "--size", size, "--fps", str(fps),
               "--json", str(out), "-p", f"sac_sensor.fps={fps}",
               "--quality-every", str(quality_every)]
        if model:
            cmd += ["--model", model]
        if config:
            cmd += ["--config", config]
        if not perception:
            cmd.append("--no-perception")
        for param in params:
            cmd += ["-p", param]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(f"pipeline failed:\n{proc.stderr[-2000:]}")
        row = json.loads(out.read_text())[0]
        if not row["frames_out"]:
            print(f"no frames came out; the run's log:\n{proc.stderr[-4000:]}", file=sys.stderr)
        return row


def case_lines(label: str, row: dict) -> list[str]:
    """A case's summary: the frames delivered lead, then what they cost and how late."""
    out_fps = row["input_fps"] * row["frames_out"] / max(row["frames_in"], 1)
    sent = row.get("frames_sent", row["frames_in"])
    unaccounted = row.get("unaccounted", sent - row["frames_out"] - sum(row["drops"].values()))
    return [f"{label}: " + delivery_headline(row["frames_out"], sent, row["drops"], unaccounted),
            f"  {row['frames_in']:>4} {row['frames_out']:>4} {out_fps:>7.1f} "
            f"{row['latency_p50_ms']:>7.1f} {row['latency_p99_ms']:>7.1f} "
            f"{row['ecu_latency_ms'][1]:>7.1f} {row['kb_per_frame']:>6.2f} "
            f"{row['roi_psnr']:>6.2f} {row.get('perception_fps', float('nan')):>8.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=450,
                        help="frames per case (the 221-frame sample clip loops)")
    parser.add_argument("--model", default="default",
                        help="mask source model ('' = the config's static polygon)")
    parser.add_argument("--transports", metavar="VALUE",
                        help="run with this sac_pipeline.fastdds_builtin_transports instead of "
                             "the config's, e.g. 'LARGE_DATA?max_msg_size=4MB'")
    parser.add_argument("--quality-every", type=int, default=4, metavar="N",
                        help="the listener measures PSNR on every Nth frame (it still "
                             "receives every frame for the latency)")
    parser.add_argument("--cases", nargs="*", type=int,
                        help="indices of the cases to run (default: all)")
    args = parser.parse_args()
    config = None
    if args.transports is not None:
        import yaml

        from sac_ros.pipeline import default_pipeline_config

        data = yaml.safe_load(default_pipeline_config().read_text())
        data["sac_pipeline"]["ros__parameters"]["fastdds_builtin_transports"] = args.transports
        config = str(Path(tempfile.mkdtemp(prefix="sac_bench_")) / "pipeline.yaml")
        Path(config).write_text(yaml.safe_dump(data))
    print(f"transports: {args.transports if args.transports is not None else 'config'}; "
          f"{args.frames} frames per case; ROI mask from "
          f"{args.model + ' model' if args.model else 'static polygon'}")
    print(f"  {'in':>4} {'out':>4} {'out fps':>7} {'p50 ms':>7} {'p99 ms':>7} {'ECU p99':>7} "
          f"{'kB/fr':>6} {'ROI dB':>6} {'perc fps':>8}")
    for index, (label, size, fps, perception, params) in enumerate(CASES):
        if args.cases and index not in args.cases:
            continue
        row = run_case(size, fps, perception, params, args.frames, args.model, config,
                       args.quality_every)
        print("\n".join(case_lines(label, row)), flush=True)


if __name__ == "__main__":
    main()
