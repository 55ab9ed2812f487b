#!/usr/bin/env python3
"""The pipeline with and without a Foxglove client watching everything through sac_view.

Runs `sac pipeline --source CLIP --frames N --no-perception` three times: without the
view, with the view and no client, and with the view and a real WebSocket client
subscribed to every channel (original, reconstruction, ROI overlay, video, stats).
Prints each run's delivery headline and latency, and what the client received.

    .venv/bin/python benchmarks/bench_view_live.py [--source sample:project_video01]
        [--frames 150] [--fps 0] [--max-fps 10] [--runs none,idle,watch]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Watcher(threading.Thread):
    """A Foxglove client that subscribes to every channel and counts what arrives."""

    def __init__(self, port: int):
        super().__init__(daemon=True)
        self.port, self.counts, self.bytes = port, Counter(), Counter()
        self.view_stats: dict = {}
        self.stop = threading.Event()

    def run(self) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        while not self.stop.is_set():
            try:
                with connect(f"ws://127.0.0.1:{self.port}", subprotocols=["foxglove.sdk.v1"],
                             max_size=None) as ws:
                    self._watch(ws)
                return
            except ConnectionClosed:
                return  # the view stopped with the pipeline
            except OSError:
                time.sleep(0.2)  # the view is not up yet

    def _watch(self, ws) -> None:
        topics: dict[int, str] = {}
        while not self.stop.is_set():
            try:
                message = ws.recv(timeout=0.2)
            except TimeoutError:
                continue
            if isinstance(message, str):
                op = json.loads(message)
                if op["op"] == "advertise":
                    subs = [{"id": c["id"], "channelId": c["id"]} for c in op["channels"]]
                    topics.update({c["id"]: c["topic"] for c in op["channels"]})
                    ws.send(json.dumps({"op": "subscribe", "subscriptions": subs}))
            elif message[0] == 1:
                sub_id = struct.unpack_from("<I", message, 1)[0]
                topic = topics[sub_id]
                self.counts[topic] += 1
                self.bytes[topic] += len(message) - 13
                if topic == "/sac_view/stats":
                    self.view_stats = json.loads(message[13:])


def run(mode: str, args, domain: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "summary.json"
        port = free_port()
        cmd = [sys.executable, "-m", "sac_ros.cli.main", "pipeline", "--source", args.source,
               "--frames", str(args.frames), "--no-perception", "--json", str(out)]
        if args.fps:
            cmd += ["--fps", str(args.fps)]
        for item in args.param:
            cmd += ["-p", item]
        if mode != "none":
            cmd += ["--view", "-p", f"sac_view.port={port}", "-p",
                    f"sac_view.max_fps={args.max_fps}"]
        env = {**os.environ, "ROS_DOMAIN_ID": str(domain),
               "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST"}
        watcher = Watcher(port) if mode == "watch" else None
        if watcher:
            watcher.start()
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if watcher:
            watcher.stop.set()
            watcher.join(5)
        if done.returncode != 0:
            print(f"[{mode}] failed: {done.stderr[-2000:]}")
            return
        row = json.loads(out.read_text())[0]
        head = done.stdout.splitlines()[0]
        print(f"[{mode}] {head}")
        print(f"    latency p50 {row['latency_p50_ms']:.1f} ms, p99 {row['latency_p99_ms']:.1f} ms,"
              f" {row['mbit_per_s']:.2f} Mbit/s")
        if watcher:
            shown = {t: c for t, c in sorted(watcher.counts.items())}
            print(f"    client received: {shown}")
            stats = watcher.view_stats
            print(f"    view: encode p50 {stats.get('jpeg_ms_p50')} ms, p99 "
                  f"{stats.get('jpeg_ms_p99')} ms; not shown: {stats.get('drops')}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", default="sample:project_video01")
    parser.add_argument("--frames", type=int, default=150)
    parser.add_argument("--max-fps", type=float, default=10.0)
    parser.add_argument("--runs", default="none,idle,watch")
    parser.add_argument("--param", "-p", action="append", default=[],
                        metavar="NODE.NAME=VALUE", help="passed to sac pipeline")
    parser.add_argument("--fps", type=float, default=0.0,
                        help="publish rate (default: the clip's own)")
    args = parser.parse_args()
    domain = 150 + os.getpid() % 50  # away from the tests' 1-100
    rate = f"{args.fps:g} fps" if args.fps else "the clip's rate"
    print(f"{args.source}, {args.frames} frames at {rate}, no perception, view max_fps "
          f"{args.max_fps:g}")
    for mode in args.runs.split(","):
        run(mode, args, domain)


if __name__ == "__main__":
    main()
