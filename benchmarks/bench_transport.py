#!/usr/bin/env python3
"""Moving camera images between processes: latency and CPU per Fast DDS transport setting.

One publisher process sends rgb8 Images at 30 Hz to two subscriber processes (as the
camera stand-in feeds the sensor and the summary listener) over real DDS, once per
FASTDDS_BUILTIN_TRANSPORTS value. Prints publish -> receive latency p50/p99 and the
CPU each side spends per frame. The config's value is config/pipeline.yaml's
``fastdds_builtin_transports``.

    .venv/bin/python benchmarks/bench_transport.py [--size 1024x512] [--frames 150]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

LARGE = "LARGE_DATA?max_msg_size=4MB"
SHM_ONLY = "SHM?max_msg_size=4MB&sockets_size=16MB"


def settings() -> list[tuple[str, str]]:
    """(FASTDDS_BUILTIN_TRANSPORTS, ROS_AUTOMATIC_DISCOVERY_RANGE) pairs; "" = unset."""
    from sac_ros.pipeline import default_pipeline_config, load_layout

    shipped = load_layout(default_pipeline_config()).fastdds_transports
    return [("", ""), (shipped, ""), (SHM_ONLY, ""), ("LARGE_DATA", ""), (LARGE, ""),
            # rmw_fastrtps replaces the built-in transports by UDP on loopback here.
            (shipped, "LOCALHOST")]


def publisher(size: tuple[int, int], frames: int, subscribers: int) -> dict:
    import numpy as np
    import rclpy
    from sensor_msgs.msg import Image

    from sac_ros.nodes.common import qos

    rclpy.init()
    node = rclpy.create_node("bench_transport_pub")
    pub = node.create_publisher(Image, "bench_image", qos("reliable", 10))
    deadline = time.monotonic() + 30
    while pub.get_subscription_count() < subscribers and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # let the writer match every reader
    width, height = size
    msg = Image(width=width, height=height, encoding="rgb8", step=3 * width)
    msg.data = np.random.default_rng(0).integers(0, 256, width * height * 3,
                                                 dtype=np.uint8).tobytes()
    cpu = time.process_time()
    for _ in range(frames):
        msg.header.stamp = node.get_clock().now().to_msg()
        pub.publish(msg)
        time.sleep(1 / 30)
    result = {"cpu_ms": (time.process_time() - cpu) / frames * 1e3}
    time.sleep(2.0)
    node.destroy_node()
    rclpy.shutdown()
    return result


def subscriber(frames: int) -> dict:
    import numpy as np
    import rclpy
    from sensor_msgs.msg import Image

    from sac_ros.core.wire import stamp_ns
    from sac_ros.nodes.common import qos

    rclpy.init()
    node = rclpy.create_node("bench_transport_sub")
    latencies: list[float] = []
    node.create_subscription(
        Image, "bench_image",
        lambda m: latencies.append((node.get_clock().now().nanoseconds - stamp_ns(m.header))
                                   / 1e6), qos("reliable", 30))
    cpu, deadline = None, time.monotonic() + 90
    while len(latencies) < frames and time.monotonic() < deadline:
        rclpy.spin_once(node, timeout_sec=0.1)
        if latencies and cpu is None:
            cpu = time.process_time()
    used = time.process_time() - (cpu or time.process_time())
    node.destroy_node()
    rclpy.shutdown()
    return {"received": len(latencies),
            "p50": float(np.percentile(latencies, 50)) if latencies else float("nan"),
            "p99": float(np.percentile(latencies, 99)) if latencies else float("nan"),
            "cpu_ms": used / max(len(latencies), 1) * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="1024x512")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--transports", nargs="+", metavar="VALUE",
                        help="FASTDDS_BUILTIN_TRANSPORTS values to measure instead of the "
                             "built-in list ('' = Fast DDS default)")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    args = parser.parse_args()
    from sac_ros.core.io import parse_size

    size = parse_size(args.size)
    if args.role:
        result = (publisher(size, args.frames, 2) if args.role == "pub"
                  else subscriber(args.frames))
        print(json.dumps(result))
        return
    print(f"{args.size} rgb8 ({size[0] * size[1] * 3 / 1e6:.2f} MB) at 30 Hz, "
          f"{args.frames} frames, 1 publisher -> 2 subscribers")
    print(f"{'FASTDDS_BUILTIN_TRANSPORTS':<40} {'discovery':>9} {'received':>8} {'p50 ms':>7} "
          f"{'p99 ms':>7} {'sub CPU ms/fr':>13} {'pub CPU ms/fr':>13}")
    chosen = [(value, "") for value in args.transports] if args.transports else settings()
    for setting, discovery in chosen:
        env = {**os.environ, "ROS_DOMAIN_ID": str(50 + os.getpid() % 50)}
        for key, value in (("FASTDDS_BUILTIN_TRANSPORTS", setting),
                           ("ROS_AUTOMATIC_DISCOVERY_RANGE", discovery)):
            env.pop(key, None)
            if value:
                env[key] = value
        cmd = [sys.executable, __file__, "--size", args.size, "--frames", str(args.frames),
               "--role"]
        subs = [subprocess.Popen([*cmd, "sub"], env=env, stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
        pub = subprocess.run([*cmd, "pub"], env=env, capture_output=True, text=True)
        results = [json.loads(p.communicate(timeout=120)[0] or "{}") for p in subs]
        pub_cpu = json.loads(pub.stdout or "{}").get("cpu_ms", float("nan"))
        for sub in results:
            print(f"{setting or '(Fast DDS default)':<40} {discovery or 'default':>9} "
                  f"{sub.get('received', 0):>8} "
                  f"{sub.get('p50', float('nan')):>7.1f} {sub.get('p99', float('nan')):>7.1f} "
                  f"{sub.get('cpu_ms', float('nan')):>13.2f} {pub_cpu:>13.2f}")


if __name__ == "__main__":
    main()
