#!/usr/bin/env python3
"""Loss behaviour per QoS profile: real sac_sensor + sac_ecu processes over real Fast DDS.

For each ``qos_reliability`` value (reliable, best_effort, sensor_data) this starts a
sensor and an ECU with that value, and feeds the sensor frames of a real clip from this
process (the camera, publishing with the same profile) in two scenarios:

- ``steady``: the camera rate (30 Hz), what a healthy vehicle sees;
- ``burst``: ``--burst`` frames back to back, far faster than the sensor encodes (an
  overloaded sensor: a CPU spike, a stalled executor).

It prints, per run: frames delivered N of M at the ECU's output, the drops the nodes
counted by reason (sensor + ECU SacStats), the frames lost *uncounted* (M - delivered -
counted; DDS overwrote them in a queue before any node saw them), and camera stamp ->
ECU output latency p50 / p99. Discovery LOCALHOST (the default): rmw_fastrtps sends over
UDP on loopback, as between two ECUs on Ethernet; SUBNET: config/pipeline.yaml's Fast DDS
transports, i.e. shared memory between processes of one host.

    .venv/bin/python benchmarks/bench_qos.py [--clip sample:project_video01]
        [--frames 150] [--burst 60] [--downscale 2] [--profiles reliable sensor_data ...]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import threading
import time

import numpy as np

PROFILES = ("reliable", "best_effort", "sensor_data")
NAMESPACE = "/bench_qos"
SETTLE_S = 4.0  # outputs and node counters unchanged this long: the run is over


def node_command(executable: str, params: dict) -> list[str]:
    from sac_ros.pipeline import EXECUTABLES

    cmd = [sys.executable, "-m", EXECUTABLES[executable], "--ros-args",
           "-r", f"__ns:={NAMESPACE}"]
    for key, value in params.items():
        cmd += ["-p", f"{key}:={value}"]
    return cmd


class Bench:
    """This process's camera publisher, output and stats subscriptions."""

    def __init__(self, profile: str, width: int, height: int, depth: int):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image

        from sac_ros.core.wire import ECU_STATS_TOPIC, IMAGE_TOPIC, INPUT_TOPIC, topic_in
        from sac_ros.msg import SacStats
        from sac_ros.nodes.common import qos

        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("bench_qos", context=self.context)
        self.lock = threading.Lock()
        self.received: dict[int, int] = {}  # stamp -> receipt time (ns)
        self.stats: dict[str, SacStats] = {}
        # Deep enough for the whole burst: what is lost, the nodes' side lost.
        self.camera = self.node.create_publisher(Image, topic_in(NAMESPACE, INPUT_TOPIC),
                                                 qos(profile, depth))
        # The consumer of the ECU's output, with the same profile (deep enough to keep all).
        self.node.create_subscription(Image, topic_in(NAMESPACE, IMAGE_TOPIC), self._on_output,
                                      qos(profile, 100))
        for name, topic in (("sensor", "sac/sensor_stats"), ("ecu", ECU_STATS_TOPIC)):
            self.node.create_subscription(SacStats, topic_in(NAMESPACE, topic),
                                          lambda m, name=name: self._on_stats(name, m), 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()
        self.width, self.height = width, height

    def _on_output(self, msg) -> None:
        from sac_ros.core.wire import stamp_ns

        with self.lock:
            self.received[stamp_ns(msg.header)] = self.node.get_clock().now().nanoseconds

    def _on_stats(self, name: str, msg) -> None:
        with self.lock:
            self.stats[name] = msg

    def state(self) -> tuple:
        """What moves while a run is on: outputs and each node's counters."""
        with self.lock:
            return (len(self.received), *((int(m.received), int(m.processed), int(m.dropped))
                                          for m in self.stats.values()))

    def ready(self) -> bool:
        """Every link matched on both sides: camera -> sensor (our writer), sensor -> ECU
        (the sensor's packet readers, the ECU's packet writers), ECU -> us."""
        with self.lock:
            sensor, ecu = self.stats.get("sensor"), self.stats.get("ecu")
        return (sensor is not None and ecu is not None and sensor.output_readers >= 1
                and ecu.input_writers >= 1 and ecu.output_readers >= 1
                and self.camera.get_subscription_count() >= 1)

    def publish(self, rgb: np.ndarray):
        from std_msgs.msg import Header

        from sac_ros.nodes.messages import rgb_to_image

        msg = rgb_to_image(rgb, Header(stamp=self.node.get_clock().now().to_msg(),
                                       frame_id="camera"))
        self.camera.publish(msg)
        return msg

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=2.0)
        self.node.destroy_node()
        self.context.try_shutdown()


def drops_of(stats) -> dict[str, int]:
    if stats is None:
        return {}
    return {r: int(c) for r, c in zip(stats.drop_reasons, stats.drop_counts, strict=True) if c}


def run_one(profile: str, scenario: str, frames: list[np.ndarray], count: int,
            env: dict, input_depth: int | None = None) -> dict:
    """One sensor + ECU pair with ``profile``; ``count`` frames in ``scenario``."""
    height, width = frames[0].shape[:2]
    common = {"qos_reliability": profile}
    sensor_params = {**common, "preset": "veryfast", "frame_size": f"[{width},{height}]"}
    if input_depth:
        sensor_params["input_depth"] = input_depth
    children = [subprocess.Popen(node_command("sac_sensor", sensor_params), env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
                subprocess.Popen(node_command("sac_ecu", common), env=env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    bench = Bench(profile, width, height, max(count, 30))
    try:
        deadline = time.monotonic() + 60
        while not bench.ready():
            if time.monotonic() > deadline:
                raise RuntimeError("the nodes did not come up in 60 s")
            time.sleep(0.05)
        time.sleep(1.0)  # a reader may match a new writer after the writer matched it
        sent: list[int] = []
        start = time.monotonic()
        for i in range(count):
            if scenario == "steady":
                delay = start + i / 30.0 - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
            msg = bench.publish(frames[i % len(frames)])
            sent.append(msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec)
        # Over when neither the output nor any node's counters moved for SETTLE_S (the
        # stats come once a second, so the last of them is in).
        last_change, last_state = time.monotonic(), None
        while time.monotonic() - last_change < SETTLE_S:
            state = bench.state()
            if state != last_state:
                last_change, last_state = time.monotonic(), state
            time.sleep(0.1)
        with bench.lock:
            received = dict(bench.received)
            sensor, ecu = bench.stats.get("sensor"), bench.stats.get("ecu")
    finally:
        bench.close()
        for child in children:
            child.send_signal(2)
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
    latencies = [(received[s] - s) / 1e6 for s in sent if s in received]
    counted = {**{f"sensor {r}": n for r, n in drops_of(sensor).items()},
               **{f"ecu {r}": n for r, n in drops_of(ecu).items()}}
    delivered = sum(1 for s in sent if s in received)
    return {"profile": profile, "scenario": scenario, "sent": count,
            "sensor_received": int(sensor.received) if sensor else 0,
            "packets": int(sensor.processed) if sensor else 0,
            "ecu_received": int(ecu.received) if ecu else 0,
            "delivered": delivered, "counted": counted,
            "uncounted": count - delivered - sum(counted.values()),
            "p50": float(np.percentile(latencies, 50)) if latencies else float("nan"),
            "p99": float(np.percentile(latencies, 99)) if latencies else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clip", default="sample:project_video01")
    parser.add_argument("--frames", type=int, default=150, help="frames of the steady run")
    parser.add_argument("--burst", type=int, default=60, help="frames of the burst run")
    parser.add_argument("--downscale", type=int, default=2, help="keep every n-th pixel "
                        "(2: 960x540 -> 480x270, so that the sensor keeps up at 30 Hz on a "
                        "small machine and the steady run is not an overload)")
    parser.add_argument("--input-depth", type=int, help="the sensor's input_depth (default: "
                        "the node's); sensor_data caps it at 5")
    parser.add_argument("--discovery-range", default="LOCALHOST", choices=("LOCALHOST",
                        "SUBNET"), help="ROS_AUTOMATIC_DISCOVERY_RANGE. LOCALHOST: rmw_fastrtps "
                        "sends over UDP on loopback (as over a vehicle's Ethernet, without the "
                        "wire); SUBNET: the config's transports, shared memory between "
                        "processes of one host")
    parser.add_argument("--profiles", nargs="+", default=list(PROFILES), choices=PROFILES)
    parser.add_argument("--scenarios", nargs="+", default=["steady", "burst"],
                        choices=("steady", "burst"))
    args = parser.parse_args()
    from sac_ros.core.io import load_clip
    from sac_ros.pipeline import TRANSPORTS_VAR, default_pipeline_config, load_layout

    clip = load_clip(args.clip, 0, 30)
    n = max(1, args.downscale)
    frames = [np.ascontiguousarray(f[::n, ::n]) for f in clip.frames]
    transports = load_layout(default_pipeline_config()).fastdds_transports
    env = {**os.environ, "ROS_DOMAIN_ID": str(150 + os.getpid() % 50),
           "ROS_AUTOMATIC_DISCOVERY_RANGE": args.discovery_range}
    env.pop(TRANSPORTS_VAR, None)
    if transports:
        env[TRANSPORTS_VAR] = transports
    os.environ.update({k: env[k] for k in ("ROS_DOMAIN_ID", "ROS_AUTOMATIC_DISCOVERY_RANGE")})
    if transports:
        os.environ[TRANSPORTS_VAR] = transports
    print(f"{args.clip}: {frames[0].shape[1]}x{frames[0].shape[0]}, sensor veryfast dual_crf "
          f"+ ECU, discovery {args.discovery_range}"
          + ("" if args.discovery_range == "LOCALHOST" else
             f", {TRANSPORTS_VAR}={transports or '(default)'}")
          + f"; steady = {args.frames} frames at 30 Hz, burst = {args.burst} frames back to back"
          + (f"; sensor input_depth {args.input_depth}" if args.input_depth else ""))
    print("sensor in / packets / ECU in: frames the sensor took, packets it sent, packets the "
          "ECU took;\ndelivered: frames out of the ECU that reached a consumer with the same "
          "profile")
    print(f"{'profile':<12} {'scenario':<8} {'sensor in':>9} {'packets':>7} {'ECU in':>6} "
          f"{'delivered':>15} {'uncounted':>9} {'p50 ms':>7} {'p99 ms':>7}  counted drops")
    print(f"load average before: {os.getloadavg()[0]:.1f} ({os.cpu_count()} CPUs)")
    for scenario in args.scenarios:
        for profile in args.profiles:
            count = args.frames if scenario == "steady" else args.burst
            r = run_one(profile, scenario, frames, count, env, args.input_depth)
            share = 100.0 * r["delivered"] / r["sent"]
            drops = ", ".join(f"{k} {v}" for k, v in sorted(r["counted"].items())) or "none"
            print(f"{profile:<12} {scenario:<8} {r['sensor_received']:>9} {r['packets']:>7} "
                  f"{r['ecu_received']:>6} {r['delivered']:>4} of {r['sent']:<4}"
                  f"{share:>4.0f}% {r['uncounted']:>9} {r['p50']:>7.1f} {r['p99']:>7.1f}  "
                  f"{drops}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
