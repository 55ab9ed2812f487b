"""`sac bag play | record | run` and `sac report` over real rclpy and Fast DDS.

Each test uses its own ROS_DOMAIN_ID with localhost-only discovery; child processes are
always stopped. Skipped when rclpy or the built sac_ros messages are missing.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

try:
    import rclpy
    from rclpy.context import Context
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    from rclpy.serialization import deserialize_message
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import Image

    import sac_ros.msg  # noqa: F401  (the built messages)
except ImportError as exc:  # pragma: no cover - depends on the install
    pytest.skip(f"needs rclpy and the built sac_ros messages: {exc}", allow_module_level=True)

from bags_fixtures import make_cityscapes, sac, tiny_segmenter
from PIL import Image as PILImage

from sac_ros.bags.bagio import open_bag

DISCOVERY_S = 30.0


def domain_env(offset: int) -> dict:
    domain = 101 + (os.getpid() * 3 + offset) % 100   # 101-200: clear of other suites' 1-100
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    return env


class Listener:
    """An in-test rclpy node (own context) with raw subscriptions that timestamp arrivals."""

    def __init__(self, env: dict, topics: dict[str, type]):
        os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
        self.context = Context()
        rclpy.init(context=self.context, domain_id=int(env["ROS_DOMAIN_ID"]))
        self.node = rclpy.create_node("sac_bag_test_listener", context=self.context)
        self.received: dict[str, list[tuple[int, bytes]]] = {t: [] for t in topics}
        self._lock = threading.Lock()
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200,
                         reliability=ReliabilityPolicy.RELIABLE)
        self.subs = [self.node.create_subscription(
            cls, topic, lambda data, topic=topic: self._on(topic, data), qos, raw=True)
            for topic, cls in topics.items()]
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self.thread = threading.Thread(target=self.executor.spin, daemon=True)
        self.thread.start()

    def _on(self, topic: str, data: bytes) -> None:
        with self._lock:
            self.received[topic].append((time.monotonic_ns(), bytes(data)))

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)


def stop(proc: subprocess.Popen, sig=signal.SIGINT, timeout: float = 15.0) -> int:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


def sac_cmd() -> list[str]:
    script = Path(sys.executable).parent / "sac"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "sac_ros.cli.main"]


@pytest.fixture(scope="module")
def source_bag(tmp_path_factory):
    """Two Cityscapes snippets (17 Hz, one label each) converted to a bag."""
    root = tmp_path_factory.mktemp("cs")
    make_cityscapes(root, [("train", "aachen", 0, 0, 12, {5}), ("train", "aachen", 3, 0, 12,
                                                              {7})], height=64, width=96)
    bag = tmp_path_factory.mktemp("bags") / "source"
    result = sac("bag", "convert", root, bag, "--no-progress")
    assert result.returncode == 0, result.stderr
    return bag


def test_play_rate_raw_bytes_and_clock(source_bag, tmp_path):
    env = domain_env(1)
    with open_bag(source_bag) as reader:
        recorded = [(t, bytes(raw)) for c, t, raw in reader.messages()
                    if c.topic == "/front/image_raw"]
    listener = Listener(env, {"/front/image_raw": Image, "/clock": Clock})
    try:
        rate = 2.0
        result = subprocess.run(
            [*sac_cmd(), "bag", "play", source_bag, "--rate", str(rate), "--clock", "50",
             "--wait-for", "/front/image_raw", "--topics", "/front/image_raw",
             "--json", tmp_path / "play.json", "--no-progress"],
            env=env, capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        time.sleep(0.5)
        got = list(listener.received["/front/image_raw"])
        clocks = list(listener.received["/clock"])
        # Two passes from 1 s into the bag (the second snippet), remapped, at 4x.
        listener.received["/replayed"] = []
        listener.subs.append(listener.node.create_subscription(
            Image, "/replayed", lambda data: listener._on("/replayed", data),
            QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200,
                       reliability=ReliabilityPolicy.RELIABLE), raw=True))
        looped = subprocess.run(
            [*sac_cmd(), "bag", "play", source_bag, "--rate", "4", "--loop", "2",
             "--start-offset", "1.0", "--topics", "/front/image_raw", "--remap",
             "/front/image_raw:=/replayed", "--wait-for", "/replayed", "--no-progress"],
            env=env, capture_output=True, text=True, timeout=60)
        assert looped.returncode == 0, looped.stderr
        time.sleep(0.5)
        again = [data for _, data in listener.received["/replayed"]]
    finally:
        listener.close()
    later = [data for t, data in recorded if t >= recorded[0][0] + 1_000_000_000]
    assert len(later) == 12 and again == later + later
    # Every message, byte for byte (the CDR is published untouched), in order.
    assert [data for _, data in got] == [data for _, data in recorded]
    # Rate: bag time against arrival time, as the median of pairwise slopes (a delivery
    # delayed by this busy 2-core machine must not decide it), over the whole playback.
    arrivals = np.array([t for t, _ in got], np.float64)
    bag_times = np.array([t for t, _ in recorded], np.float64)
    i, j = np.triu_indices(len(got), k=1)
    measured = float(np.median((bag_times[j] - bag_times[i]) / (arrivals[j] - arrivals[i])))
    assert abs(measured / rate - 1) < 0.02, measured
    summary = json.loads((tmp_path / "play.json").read_text())
    assert summary["published"] == {"/front/image_raw": 24}
    assert abs(summary["achieved_rate"] / rate - 1) < 0.02
    assert abs(summary["publish_rate"] / rate - 1) < 0.02
    # /clock: bag time, monotonic, inside the bag's span, roughly 50 Hz of wall time.
    times = [deserialize_message(data, Clock).clock for _, data in clocks]
    ns = [c.sec * 1_000_000_000 + c.nanosec for c in times]
    assert len(ns) > 10 and ns == sorted(ns)
    assert recorded[0][0] <= ns[0] and ns[-1] <= recorded[-1][0]


def test_record_then_sigint_and_sigkill(tmp_path):
    env = domain_env(2)
    listener = Listener(env, {})
    pub = listener.node.create_publisher(
        Image, "/rec_test/image", QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=50,
                                             reliability=ReliabilityPolicy.RELIABLE))
    procs = []
    try:
        for name in ("good", "killed"):
            proc = subprocess.Popen(
                [*sac_cmd(), "bag", "record", tmp_path / name, "--topics", "/rec_test/image",
                 "/rec_test/absent"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                text=True)
            procs.append(proc)
        deadline = time.monotonic() + DISCOVERY_S
        while pub.get_subscription_count() < 2:
            assert time.monotonic() < deadline, "the recorders never subscribed"
            assert all(p.poll() is None for p in procs), procs[0].stderr.read()
            time.sleep(0.05)
        sent = []
        for index in range(20):
            msg = Image(height=2, width=3, encoding="rgb8", step=9,
                        data=bytes(range(index, index + 18)))
            msg.header.stamp.sec, msg.header.frame_id = index, "cam"
            pub.publish(msg)
            sent.append(msg)
            time.sleep(0.01)
        time.sleep(1.0)
        assert stop(procs[1], signal.SIGKILL) == -signal.SIGKILL
        assert stop(procs[0]) == 0, procs[0].stderr.read()
        out = procs[0].stdout.read()
    finally:
        for proc in procs:
            stop(proc, signal.SIGKILL)
        listener.close()
    assert "/rec_test/image (sensor_msgs/msg/Image): 20" in out, out
    with open_bag(tmp_path / "good") as reader:
        rows = [(c.topic, reader.deserialize(raw, c.msgtype)) for c, _, raw in
                reader.messages()]
    assert [t for t, _ in rows] == ["/rec_test/image"] * 20
    assert [bytes(m.data) for _, m in rows] == [bytes(m.data) for m in sent]
    assert [m.header.stamp.sec for _, m in rows] == list(range(20))
    # The killed recorder left no bag under its final name.
    assert not (tmp_path / "killed").exists()


def test_record_with_a_duration_says_when_it_stops(tmp_path):
    """Issue 17 item 5: with --duration the recorder does not claim that only Ctrl-C stops."""
    result = subprocess.run([*sac_cmd(), "bag", "record", tmp_path / "bag", "--topics",
                             "/nothing_here", "--duration", "0.5"], env=domain_env(4),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert ("sac bag record: recording /nothing_here to "
            f"{tmp_path / 'bag'}; stops after 0.5 s or at Ctrl-C") in result.stderr


def test_run_through_pipeline_loses_no_frame_then_report(source_bag, tmp_path):
    env = domain_env(3)
    run = tmp_path / "run"
    model = tiny_segmenter(tmp_path / "rule.onnx")
    cmd = [*sac_cmd(), "bag", "run", source_bag, run, "--no-perception", "--no-progress",
           "--json", tmp_path / "run.json", "-p", "sac_sensor.preset=ultrafast",
           "--model", model]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        stdout, stderr = proc.communicate(timeout=150)
    finally:
        stop(proc, signal.SIGKILL)
    assert proc.returncode == 0, stdout + stderr[-3000:]
    summary = json.loads((tmp_path / "run.json").read_text())
    cam = summary["cameras"][0]
    assert cam["source_frames"] == 24
    assert cam["reconstructed"] + cam["counted_drops"] == 24, cam
    assert cam["unaccounted"] == 0
    assert abs(cam["rate_error_pct"]) < 2.0, cam          # as received by the recorder
    assert abs(summary["player_rate_error_pct"]) < 2.0, summary
    # Issue 17 item 2: the frames delivered lead, the accounting follows on its own line;
    # the sensor warmed its segmenter up for the bag's frames before the first one came.
    counted = {**cam["sensor_drops"], **{f"ecu {k}": v for k, v in cam["ecu_drops"].items()}}
    drops = ", ".join(f"{k} {v}" for k, v in counted.items() if v)
    head = (f"camera /front: frames delivered: {cam['reconstructed']} of 24 "
            f"({min(round(100 * cam['reconstructed'] / 24, 1), 99.9 if drops else 100):.1f}%)"
            + (f"; dropped: {drops}" if drops else ""))
    assert f"{head}\n  accounting: 24 frames in the bag" in stdout, stdout
    assert "no frame lost" not in stdout
    assert "segmenter warmed up for 96x64" in stderr, stderr[-3000:]
    with open_bag(run) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
    assert counts["/front/image_raw"] == 24 and counts["/front/labels"] == 2
    assert counts["/front/sac/packets"] == cam["packets"]
    # The offline report of the recorded run, with a real (tiny, rule-based) ONNX model.
    out = tmp_path / "report"
    result = sac("report", run, "--out", out, "--model", model, "--no-progress")
    assert result.returncode == 0, result.stderr
    report = json.loads((out / "report.json").read_text())
    camera = report["cameras"][0]
    assert camera["frames_evaluated"] == cam["reconstructed"]
    assert camera["accounting"]["unaccounted"] == 0
    assert camera["accounting"]["live_equals_offline_decode"] is True
    method = camera["methods"][0]
    assert method["method"] == "SA-X264 23/32" and method["frames"] == cam["reconstructed"]
    # One frame's PSNR recomputed here from the recorded bag, independently of the report.
    with open_bag(run) as reader:
        images = {}
        for conn, _, raw in reader.messages():
            if conn.topic in ("/front/image_raw", "/front/sac/image"):
                msg = reader.deserialize(raw, conn.msgtype)
                key = (msg.header.stamp.sec, msg.header.stamp.nanosec)
                images.setdefault(key, {})[conn.topic] = msg.data.reshape(msg.height,
                                                                          msg.width, 3)
    frame = camera["frames"][3]
    pair = images[divmod(frame["stamp_ns"], 1_000_000_000)]
    err = (pair["/front/image_raw"].astype(np.float64)
           - pair["/front/sac/image"].astype(np.float64)) ** 2
    assert frame["psnr"] == pytest.approx(10 * np.log10(255.0 ** 2 / err.mean()), abs=1e-3)
    assert 20 < method["psnr"] < 60 and method["kb_per_frame"] > 0
    # Labels: sky is non-ROI for the rule model and the labels, vegetation is not.
    assert camera["methods"][0]["iiou_vs_labels"] is not None
    assert 0.5 < method["iiou_vs_labels"] < 1.0
    assert method["iiou_vs_original"] > 0.9
    lat = camera["latency"]["camera_to_reconstructed_ms"]
    assert lat["count"] == cam["reconstructed"] and 0 < lat["p50"] < 5000
    html = (out / "index.html").read_text()
    for png in camera["plots"].values():
        assert f"src='{png}'" in html
        with PILImage.open(out / png) as image:
            assert image.width > 600 and image.height > 250
            assert np.asarray(image.convert("L")).std() > 5
    assert "Table II" in html and "Table IV" in html
