"""``sac pipeline``: start the pipeline's nodes from config/pipeline.yaml without ros2 launch.

Each node runs in its own process (real DDS between them), from the same
parameter file and the same node list (sac_ros.pipeline) as the launch file.
With ``--source`` it also publishes a video per camera, measures the run end to
end and prints a summary.
"""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time

from sac_ros.core.errors import SacError
from sac_ros.core.io import parse_size
from sac_ros.pipeline import EXECUTABLES, NodeSpec, load_layout, pipeline_nodes
from sac_ros.shm import reclaim_and_report

MATCH_SETTLE_S = 0.5  # after the writers report their readers, before the first frame


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
    p.add_argument("--json", help="with --source: write the summary as JSON here")
    p.add_argument("--quality-every", type=int, default=1, metavar="N",
                   help="with --source: measure PSNR on every N-th frame (default 1: all); "
                        "the listener shares the CPU with the nodes it measures")
    p.add_argument("--startup-timeout", type=float, default=60.0,
                   help="seconds to wait for all nodes to be discovered")
    p.set_defaults(func=run)


def parse_params(items: list[str]) -> list[tuple[str, str, str]]:
    parsed = []
    for item in items:
        target, sep, value = item.partition("=")
        executable, dot, name = target.partition(".")
        if not sep or not dot or executable not in EXECUTABLES or not name:
            raise SacError(f"--param '{item}' must look like NODE.NAME=VALUE with NODE one of "
                           f"{', '.join(EXECUTABLES)}")
        parsed.append((executable, name, value))
    return parsed


def source_size(source: str) -> tuple[int, int]:
    """(width, height) of a video / folder / sample source, from its first frame."""
    from sac_ros.core.io import iter_frames, resolve_input

    for rgb, _ in iter_frames(resolve_input(source), 0, 1):
        return rgb.shape[1], rgb.shape[0]
    raise SacError(f"{source} has no frames")


def node_command(spec: NodeSpec, config: str, extra: dict | None = None) -> list[str]:
    """The command line that starts one node: the same executable and parameters as launch."""
    cmd = [sys.executable, "-m", spec.module, "--ros-args", "-r", f"__node:={spec.name}",
           "-r", f"__ns:={spec.namespace}", "--params-file", config]
    for key, value in {**spec.overrides, **(extra or {})}.items():
        cmd += ["-p", f"{key}:={value}"]
    return cmd


class Children:
    """Node processes, stopped together with SIGTERM (then SIGKILL).

    SIGTERM, not SIGINT: a node still importing when it comes (a sibling failed at
    start-up) dies silently, where SIGINT printed a KeyboardInterrupt traceback; once
    rclpy is up, it handles both the same way. Each node has its own session, so the
    terminal's Ctrl-C reaches the runner only, and the runner stops them.
    """

    STOPPED = (0, -signal.SIGINT, -signal.SIGTERM)

    def __init__(self, env: dict):
        self.env = env
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, label: str, cmd: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, env=self.env, start_new_session=True)
        self.procs.append((label, proc))
        return proc

    def wait_until(self, ready, deadline: float, timeout_message) -> None:
        """Poll ``ready()`` until true; SacError if a node stops or ``deadline`` passes."""
        while not ready():
            if self.failed():
                raise SacError(f"node(s) stopped: {', '.join(self.failed())}")
            if time.monotonic() > deadline:
                raise SacError(timeout_message())
            time.sleep(0.1)

    def start_nodes(self, specs, config: str) -> None:
        for spec in specs:
            self.start(f"{spec.namespace} {spec.name}", node_command(spec, config))

    def failed(self) -> list[str]:
        return [f"{label} (exit {p.returncode})" for label, p in self.procs
                if p.poll() is not None and p.returncode not in self.STOPPED]

    def stop(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        killed = False
        for _, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                killed = True
        if killed:  # a SIGKILLed node leaves its shared memory behind
            reclaim_and_report("sac pipeline")


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
    env = layout.environment()
    os.environ.update(env)  # this process's listener uses the same transports
    specs = pipeline_nodes(layout, args.input_topic, args.model, video_source=bool(args.source))
    if args.source:  # the sensors prepare for the frames they will get (a -p can override)
        width, height = args.size or source_size(args.source)
        for spec in specs:
            if spec.executable == "sac_sensor":
                spec.overrides["frame_size"] = f"[{width},{height}]"
    for executable, name, value in parse_params(args.param):
        for spec in specs:
            if spec.executable == executable:
                spec.overrides[name] = value
    signal.signal(signal.SIGTERM, _interrupt)
    # Shared memory of nodes SIGKILLed earlier; only segments whose owner is dead.
    reclaim_and_report("sac pipeline")
    children = Children(env)
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
        summary = _run_with_source(args, layout, specs, children, config)
    except KeyboardInterrupt:
        return 130
    finally:
        children.stop()
    _print_summary(summary)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(summary, handle, indent=2, default=float)
    return 0


def _run_with_source(args, layout, specs, children: Children, config: str) -> list[dict]:
    import rclpy

    from sac_ros.nodes.common import ReadinessProbe, make_executor
    from sac_ros.nodes.summary import SummaryCollector

    namespaces = [f"/{c}" if c else "/" for c in layout.cameras]
    input_topic = args.input_topic or "image_raw"
    rclpy.init()
    collector = SummaryCollector(namespaces, input_topic, args.quality_every)
    executor = make_executor()
    executor.add_node(collector)
    spin = __import__("threading").Thread(target=executor.spin, daemon=True)
    spin.start()
    try:
        # Discovery: every sensor subscribes to its camera topic, every ECU publishes images.
        deadline = time.monotonic() + args.startup_timeout
        readers = layout.readers()
        children.wait_until(
            lambda: all(
                collector.count_subscribers(collector.topic(ns, input_topic)) >= readers["input"]
                and collector.count_publishers(collector.topic(ns, "sac/image")) >= 1
                for ns in namespaces),
            deadline, lambda: f"nodes not discovered after {args.startup_timeout:g} s")
        # The graph shows endpoints before every writer has matched every reader (sensor ->
        # ECU was seen to lag by 1-2 s, losing the first GOP): wait for the nodes to report
        # their outputs matched.
        probe = ReadinessProbe(collector, namespaces, readers, collector.output_subscriptions)
        try:
            children.wait_until(probe.ready, deadline,
                                lambda: f"node outputs not matched after "
                                        f"{args.startup_timeout:g} s: {probe.missing()}")
        finally:
            probe.destroy()
        time.sleep(MATCH_SETTLE_S)
        # --frames N publishes N frames, looping a shorter source.
        source_params = {"input": args.source, "max_frames": args.frames,
                         "loop": args.frames > 0,
                         "wait_for_subscribers": readers["input"]}
        if args.fps:  # otherwise the config's rate (whose 0 means the source's own)
            source_params["fps"] = args.fps
        if args.size:
            source_params.update(width=args.size[0], height=args.size[1])
        sources = [children.start(f"{spec.namespace} source",
                                  node_command(spec, config, source_params))
            for spec in specs if spec.executable == "sac_video_source"]
        print(f"sac pipeline: publishing {args.source} on {len(sources)} camera(s)",
              file=sys.stderr)
        for proc in sources:
            proc.wait()
            if proc.returncode != 0:
                raise SacError(f"the video source failed (exit {proc.returncode})")
        while not collector.settled(idle_s=3.0):  # let the pipeline drain
            time.sleep(0.2)
        time.sleep(1.2)  # one more stats period from every node
        collector.finish_quality()
        return [cam.row() for cam in collector.cameras.values()]
    finally:
        collector.finish_quality()
        executor.shutdown()
        collector.destroy_node()
        rclpy.shutdown()


def _fmt(value, spec: str) -> str:
    return "-" if isinstance(value, float) and math.isnan(value) else format(value, spec)


def _print_summary(rows: list[dict]) -> None:
    for row in rows:
        drops = ", ".join(f"{k} {v}" for k, v in row["drops"].items()) or "none"
        print(f"camera {row['camera']}: frames in {row['frames_in']}, packets {row['packets']}, "
              f"frames out {row['frames_out']} (drops: {drops})")
        print(f"  rate   {_fmt(row['kb_per_frame'], '.2f')} kB/frame, "
              f"{_fmt(row['mbit_per_s'], '.2f')} Mbit/s at {_fmt(row['input_fps'], '.1f')} fps")
        skipped = (f", {row['quality_skipped']} skipped while the CPU was busy"
                   if row.get("quality_skipped") else "")
        print(f"  PSNR   ROI {_fmt(row['roi_psnr'], '.2f')} dB, "
              f"non-ROI {_fmt(row['non_roi_psnr'], '.2f')} dB over "
              f"{row.get('quality_frames', 0)} frames{skipped}")
        print(f"  latency camera stamp -> reconstructed image: "
              f"p50 {_fmt(row['latency_p50_ms'], '.1f')} ms, "
              f"p99 {_fmt(row['latency_p99_ms'], '.1f')} ms")
        print(f"  perception (reconstructed vs original): iIoU {_fmt(row['iiou'], '.4f')}, "
              f"mIoU {_fmt(row['miou'], '.4f')} over {row['perception_frames']} frames")
