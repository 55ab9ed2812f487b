#!/usr/bin/env python3
"""CPU per node of a running pipeline, from /proc: where the two cores go per frame.

Runs `sac pipeline --source ... --json` with the given arguments, samples the user +
system CPU time of every process it starts (4 times a second), and prints, per node,
the CPU it used while the camera stand-in was publishing, per second (share of one
core) and per frame sent. The stand-in's own start-up (decoding and scaling the clip
before the first frame) is in its window too, so its row overstates what it costs.

    .venv/bin/python benchmarks/node_cpu.py -- --source sample:challenge01 --frames 300 \\
        --size 1024x512 --fps 30 -p sac_sensor.fps=30 --model default --quality-every 4
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def _children(root: int) -> set[int]:
    """``root`` and its descendants, from /proc/*/stat parent ids."""
    parents = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                fields = Path(f"/proc/{name}/stat").read_text().rsplit(")", 1)[1].split()
                parents[int(name)] = int(fields[1])
            except (OSError, IndexError, ValueError):
                pass
    found, todo = {root}, [root]
    while todo:
        pid = todo.pop()
        for child, parent in parents.items():
            if parent == pid and child not in found:
                found.add(child)
                todo.append(child)
    return found


def _sample(pid: int) -> tuple[str, float] | None:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    words = [w.decode(errors="replace") for w in cmd]
    name = next((w.rsplit(".", 1)[1] for w in words if w.startswith("sac_ros.nodes.")),
                "runner + summary listener" if "pipeline" in words else None)
    return (name, (int(fields[11]) + int(fields[12])) / TICK) if name else None


def main() -> None:
    args = sys.argv[1:]
    if args[:1] == ["--"]:
        args = args[1:]
    with tempfile.TemporaryDirectory() as tmp:
        summary = Path(tmp) / "summary.json"
        proc = subprocess.Popen([sys.executable, "-m", "sac_ros.cli.main", "pipeline", *args,
                                 "--json", str(summary)], stdout=subprocess.PIPE, text=True)
        series: dict[int, list[tuple[float, str, float]]] = {}
        window = [None, None]
        while proc.poll() is None:
            now = time.monotonic()
            for pid in _children(proc.pid):
                got = _sample(pid)
                if got:
                    series.setdefault(pid, []).append((now, *got))
                    if got[0] == "video_source":
                        window[0] = window[0] or now
                        window[1] = now
            time.sleep(0.25)
        print(proc.stdout.read(), end="")
        row = json.loads(summary.read_text())[0] if summary.exists() else {}
    if window[0] is None or window[1] <= window[0]:
        raise SystemExit("the camera stand-in was never seen running")
    span = window[1] - window[0]
    frames = row.get("frames_sent", 0)

    def at(samples, t):
        return min(samples, key=lambda s: abs(s[0] - t))[2]

    print(f"CPU while the camera stand-in ran ({span:.1f} s, {frames} frames sent):")
    total = 0.0
    for samples in series.values():
        name = samples[0][1]
        cpu = at(samples, window[1]) - at(samples, window[0])
        per_frame = cpu * 1e3 / frames if frames else float("nan")
        if name != "video_source":
            total += per_frame
        print(f"  {name:<26} {cpu:6.2f} s  {100 * cpu / span:5.1f} % of a core  "
              f"{per_frame:5.1f} ms/frame")
    print(f"  {'all but the stand-in':<26} {total:5.1f} ms/frame")


if __name__ == "__main__":
    main()
