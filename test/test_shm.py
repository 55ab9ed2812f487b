"""Fast DDS shared memory of SIGKILLed nodes is reclaimed on the next start (issue 14).

Real nodes (sac_ecu processes over real Fast DDS, with the pipeline's transport
setting: 32 MB segments), real SIGKILL, the real /dev/shm. Which files a node owns is
read from /proc/locks (the kernel's list of flocks), not from the code under test.
Other test runs may share /dev/shm, so only this test's nodes' files are checked.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import ros_helpers as rh  # skips this module without rclpy / the built messages

from sac_ros.pipeline import EXECUTABLES
from sac_ros.shm import SHM_DIR, reclaim_dead_segments

TRANSPORTS = "DEFAULT?sockets_size=16MB"  # config/pipeline.yaml's: 32 MB segments
MB = 1e6


def flocked_inodes(pid: int) -> set[tuple[str, int]]:
    """(device "maj:min", inode) of every file ``pid`` holds an flock on."""
    held = set()
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK" or fields[4] != str(pid):
            continue  # "->" lines are waiters, not holders
        major, minor, inode = fields[5].split(":")
        held.add((f"{int(major, 16):02x}:{int(minor, 16):02x}", int(inode)))
    return held


def _key(path: Path) -> tuple[str, int]:
    st = path.stat()
    return f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}", st.st_ino


def owned_files(pid: int) -> dict[str, int]:
    """The Fast DDS files ``pid`` owns: the lock files it holds and the segment or port
    beside each, with the memory they hold (bytes)."""
    held = flocked_inodes(pid)
    owned = {}
    for path in SHM_DIR.glob("fast*_*"):  # fastdds_ (Kilted) or fastrtps_ (Jazzy)
        try:
            if _key(path) in held:
                for name in (path.name, path.name[:-3]):
                    owned[name] = (SHM_DIR / name).stat().st_blocks * 512
        except OSError:
            continue  # removed meanwhile
    return owned


def segments(files) -> list[str]:
    return [n for n in files if re.fullmatch(r"(fastdds|fastrtps)_[0-9a-z]{16}", n)]


def is_locked_by_someone(name: str) -> bool:
    try:
        key = _key(SHM_DIR / name)
    except OSError:
        return False
    return any(line.split()[1] == "FLOCK" and line.split()[5].endswith(f":{key[1]}")
               for line in Path("/proc/locks").read_text().splitlines())


def leaked(files: dict[str, int]) -> dict[str, int]:
    """Those of ``files`` still in /dev/shm that no live process holds (port files may be
    taken over by a new node with the same port number: then they are in use)."""
    out = {}
    for name, size in files.items():
        path = SHM_DIR / name
        lock = name if name.endswith(("_el", "_sl")) else name + "_el"
        if path.exists() and not is_locked_by_someone(lock) and not (
                "_port" in name and is_locked_by_someone(name + "_sl")):
            out[name] = size
    return out


class Node:
    """One sac_ecu process in its own namespace of the test's domain."""

    def __init__(self, tmp_path: Path, domain: int, label: str):
        env = {**os.environ, "ROS_DOMAIN_ID": str(domain), "FASTDDS_BUILTIN_TRANSPORTS":
               TRANSPORTS, "ROS_LOG_DIR": str(tmp_path / "ros_log")}
        for key in ("ROS_AUTOMATIC_DISCOVERY_RANGE", "ROS_LOCALHOST_ONLY"):
            env.pop(key, None)  # rmw_fastrtps drops shared memory under LOCALHOST
        self.stderr_path = tmp_path / f"{label}.stderr"
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", EXECUTABLES["sac_ecu"], "--ros-args",
                 "-r", f"__ns:=/shm_test_{os.getpid()}_{label}"],
                env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)

    def wait_for_segment(self, timeout: float = 60.0) -> dict[str, int]:
        """The node's files once its participant holds a shared-memory segment."""
        deadline = time.monotonic() + timeout
        while True:
            files = owned_files(self.proc.pid)
            # Fast DDS zeroes a new segment: wait until all of it is in memory.
            # The size first (it may still be growing), then every page of it.
            try:
                sizes = {n: (SHM_DIR / n).stat().st_size for n in segments(files)}
            except OSError:
                sizes = {}  # removed meanwhile
            if sizes and all(30 * MB < sizes[n] <= files[n] for n in sizes):
                return files
            if self.proc.poll() is not None:
                raise AssertionError(f"node exited {self.proc.returncode}:\n"
                                     f"{self.stderr_path.read_text()[-2000:]}")
            assert time.monotonic() < deadline, "no shared-memory segment after 60 s"
            time.sleep(0.1)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_sigkilled_node_memory_is_reclaimed_and_a_live_node_keeps_its_own(tmp_path):
    domain, _ = rh.unique_ids()
    victim, survivor = Node(tmp_path, domain, "victim"), Node(tmp_path, domain, "survivor")
    try:
        victim_files = victim.wait_for_segment()
        survivor_files = survivor.wait_for_segment()
        victim.kill()
        # The leak: the dead node's segment stays, 32 MB of memory.
        left = leaked(victim_files)
        assert set(segments(victim_files)) <= set(left), (victim_files, left)
        assert sum(left.values()) > 30 * MB, left

        result = reclaim_dead_segments()  # what `sac pipeline` / the launch file run first
        print(f"reclaimed {result.segments} segments, {result.ports} ports, {result.mb:.1f} MB")

        assert leaked(victim_files) == {}, leaked(victim_files)
        assert set(left) <= set(result.files), (left, result.files)
        assert result.bytes >= sum(left.values()) > 30 * MB
        # The live node's files are all still there, still locked by it.
        assert survivor.proc.poll() is None
        assert owned_files(survivor.proc.pid).keys() >= survivor_files.keys()
        for name in survivor_files:
            assert (SHM_DIR / name).exists(), name
    finally:
        victim.stop()
        survivor.stop()


def test_no_shm_growth_across_kill_restart_cycles(tmp_path):
    domain, _ = rh.unique_ids()
    dead: dict[str, int] = {}
    reclaimed_mb = []
    node = Node(tmp_path, domain, "cycle0")
    try:
        for cycle in range(1, 4):
            dead.update(node.wait_for_segment())
            node.kill()
            assert sum(leaked(dead).values()) > 30 * MB  # this cycle's leak
            reclaimed_mb.append(reclaim_dead_segments().mb)  # the next start ...
            node = Node(tmp_path, domain, f"cycle{cycle}")  # ... and the restarted node
            assert leaked(dead) == {}, f"cycle {cycle}: {leaked(dead)}"
        node.wait_for_segment()
        print(f"MB reclaimed per restart: {', '.join(f'{m:.1f}' for m in reclaimed_mb)}")
        # A node stopped the normal way removes its own files.
        own = owned_files(node.proc.pid)
        node.stop()
        assert node.proc.returncode == 0
        assert leaked(own) == {}, leaked(own)
    finally:
        node.stop()
