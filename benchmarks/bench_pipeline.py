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

Real time on given clips, the shipped config (model mask, perception on), N runs each,
with per-run lines and min / median / max per clip:

    .venv/bin/python benchmarks/bench_pipeline.py --clip sample:project_video02 \
        sample:challenge01 sample:project_video03 --runs 5 [--frames 300] [--size 1024x512]
"""

from __future__ import annotations

import argparse
import json
import statistics
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
             model: str, config: str | None = None, quality_every: int = 1,
             source: str = "sample") -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "summary.json"
        cmd = [sys.executable, "-m", "sac_ros.cli.main", "pipeline", "--source", source,
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


def _drops_text(drops: dict) -> str:
    shown = {k: v for k, v in drops.items() if v}
    return ", ".join(f"{k} {v}" for k, v in sorted(shown.items())) or "none"


def clip_run_line(run: int, row: dict) -> str:
    """One run of a clip: delivered, drops by reason, listener and ECU latency, perception."""
    sent = row.get("frames_sent", row["frames_in"])
    return (f"  run {run}: delivered {row['frames_out']} of {sent}; drops "
            f"{_drops_text(row['drops'])}; unaccounted {row.get('unaccounted', 0)}; "
            f"listener p50 {row['latency_p50_ms']:.1f} p99 {row['latency_p99_ms']:.1f} ms; "
            f"ECU p99 {row['ecu_latency_ms'][1]:.1f} ms; {row['kb_per_frame']:.2f} kB/frame; "
            f"perception {row.get('perception_fps', float('nan')):.1f} fps "
            f"({row.get('perception_segmented', 0)} class maps)")


def clip_aggregate(rows: list[dict]) -> str:
    """min / median / max over a clip's runs."""
    def mmm(values, fmt):
        return "/".join(format(f(values), fmt) for f in (min, statistics.median_low, max))
    superseded = [r["drops"].get("superseded", 0) for r in rows]
    other = [sum(v for k, v in r["drops"].items() if k != "superseded") for r in rows]
    return (f"  min/median/max over {len(rows)} runs: delivered "
            f"{mmm([r['frames_out'] for r in rows], 'g')} of "
            f"{rows[0].get('frames_sent', rows[0]['frames_in'])}; superseded "
            f"{mmm(superseded, 'g')}; other drops {mmm(other, 'g')}; listener p50 "
            f"{mmm([r['latency_p50_ms'] for r in rows], '.1f')} ms, p99 "
            f"{mmm([r['latency_p99_ms'] for r in rows], '.1f')} ms; ECU p99 "
            f"{mmm([r['ecu_latency_ms'][1] for r in rows], '.1f')} ms; perception "
            f"{mmm([r.get('perception_fps', float('nan')) for r in rows], '.1f')} fps")


def run_clips(args, config: str | None) -> None:
    """--clip mode: the shipped config (model mask, perception on), --runs runs per clip."""
    print(f"clips {', '.join(args.clip)}; {args.size} @ {args.fps} Hz; {args.frames} frames "
          f"per run; {args.runs} run(s) per clip; model {args.model or 'none'}; perception "
          f"{'off' if args.no_perception else 'on'}; quality every {args.quality_every}; "
          f"overrides {args.param or 'none'}", flush=True)
    results = {}
    for clip in args.clip:
        rows = []
        print(f"{clip}:", flush=True)
        for run in range(1, args.runs + 1):
            row = run_case(args.size, args.fps, not args.no_perception, args.param,
                           args.frames, args.model, config, args.quality_every, clip)
            rows.append(row)
            print(clip_run_line(run, row), flush=True)
        print(clip_aggregate(rows), flush=True)
        results[clip] = rows
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int,
                        help="frames per case (default 450; --clip: 300 per run); a "
                             "shorter clip loops")
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
    parser.add_argument("--clip", nargs="+", metavar="SOURCE",
                        help="instead of the cases: run these sources (e.g. "
                             "sample:project_video02) with the shipped config, --runs each")
    parser.add_argument("--runs", type=int, default=1, help="--clip: runs per clip")
    parser.add_argument("--size", default="1024x512", help="--clip: frame size")
    parser.add_argument("--fps", type=int, default=30, help="--clip: camera rate")
    parser.add_argument("--no-perception", action="store_true",
                        help="--clip: without the perception node")
    parser.add_argument("-p", "--param", action="append", default=[],
                        metavar="NODE.NAME=VALUE", help="--clip: parameter override")
    parser.add_argument("--json", help="--clip: write every run's summary row here")
    args = parser.parse_args()
    config = None
    if args.transports is not None:
        import yaml

        from sac_ros.pipeline import default_pipeline_config

        data = yaml.safe_load(default_pipeline_config().read_text())
        data["sac_pipeline"]["ros__parameters"]["fastdds_builtin_transports"] = args.transports
        config = str(Path(tempfile.mkdtemp(prefix="sac_bench_")) / "pipeline.yaml")
        Path(config).write_text(yaml.safe_dump(data))
    if args.frames is None:
        args.frames = 300 if args.clip else 450
    if args.clip:
        run_clips(args, config)
        return
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
