"""Crash-safe bags: a SIGKILLed recorder, truncated and damaged MCAPs, `sac bag recover`,
and the bag commands' one-line errors and clean Ctrl-C.

Damage is made to real bags written by the package's own writer (and by plain rosbags,
whose chunks carry no CRC); what is expected is computed from the intact file with the
independent `mcap` reader. The ROS tests use real `sac` processes over Fast DDS.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
from bags_fixtures import one_line_error, sac
from mcap.exceptions import McapError
from mcap.reader import make_reader
from mcap.stream_reader import StreamReader

from sac_ros.bags.bagio import BagWriter, open_bag

TOPIC = "/cam/image"
IMAGE = "sensor_msgs/msg/Image"


def image(store, index: int, width: int = 96, height: int = 64):
    types = store.types
    header = types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=index, nanosec=0), frame_id="cam")
    pixels = np.random.default_rng(index).integers(0, 256, height * width * 3, np.uint8)
    return types["sensor_msgs/msg/Image"](header=header, height=height, width=width,
                                          encoding="rgb8", is_bigendian=0, step=width * 3,
                                          data=pixels)


def write_bag(path: Path, count: int, plain_rosbags: bool = False) -> list[bytes]:
    """``count`` 18 kB images (about 55 per 1 MiB chunk); returns their CDR in order.
    ``plain_rosbags``: written by rosbags' Writer alone (chunks without a CRC)."""
    if plain_rosbags:
        from rosbags.rosbag2 import StoragePlugin, Writer

        from sac_ros.bags.types import typestore

        store = typestore()
        sent = [bytes(store.serialize_cdr(image(store, i), IMAGE)) for i in range(count)]
        with Writer(path, version=9, storage_plugin=StoragePlugin.MCAP) as writer:
            conn = writer.add_connection(TOPIC, IMAGE, typestore=store)
            for i, data in enumerate(sent):
                writer.write(conn, (i + 1) * 50_000_000, data)
        return sent
    with BagWriter(path) as bag:
        sent = [bytes(bag.store.serialize_cdr(image(bag.store, i), IMAGE))
                for i in range(count)]
        for i, data in enumerate(sent):
            bag.write(TOPIC, IMAGE, (i + 1) * 50_000_000, data)
    return sent


def mcap_file(bag: Path) -> Path:
    files = list(bag.rglob("*.mcap"))
    assert len(files) == 1, files
    return files[0]


def independent_messages(path: Path) -> list[bytes]:
    """Messages the `mcap` library's stream reader gets before it stops (with CRC checks)."""
    got = []
    with path.open("rb") as handle:
        try:
            for record in StreamReader(handle, validate_crcs=True).records:
                if type(record).__name__ == "Message":
                    got.append(bytes(record.data))
        except (McapError, EOFError, ValueError):
            pass
    return got


def read_all(path: Path) -> tuple[list[bytes], object]:
    with open_bag(path, warn=None) as reader:
        return [bytes(d) for _, _, d in reader.messages()], reader.recovery


def info_json(path: Path) -> tuple[dict, str]:
    result = sac("bag", "info", path, "--json")
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    return json.loads(result.stdout), result.stderr


# ------------------------------------------------------------------ writer

def test_written_chunks_carry_crcs_the_mcap_library_checks(tmp_path):
    sent = write_bag(tmp_path / "bag", 120)
    path = mcap_file(tmp_path / "bag")
    with path.open("rb") as handle:
        reader = make_reader(handle, validate_crcs=True)
        got = [bytes(m.data) for _, _, m in reader.iter_messages(log_time_order=True)]
        chunks = list(reader.get_summary().chunk_indexes)
    assert got == sent and len(chunks) >= 2
    with path.open("rb") as handle:
        crcs = []
        for index in chunks:
            handle.seek(index.chunk_start_offset + 33)
            crcs.append(int.from_bytes(handle.read(4), "little"))
    assert all(crcs), crcs          # 0 would mean "not computed"
    messages, recovery = read_all(tmp_path / "bag")
    assert messages == sent and recovery is None


# ------------------------------------------------------------------ damage

def test_truncated_mcap_is_read_up_to_the_cut_with_a_count(tmp_path):
    sent = write_bag(tmp_path / "bag", 150)
    path = mcap_file(tmp_path / "bag")
    size = path.stat().st_size
    with path.open("r+b") as handle:
        handle.truncate(size * 6 // 10)
    info, stderr = info_json(tmp_path / "bag")
    recovered = info["messages"]
    # Everything before the cut, in order, byte for byte; at least what mcap's own stream
    # reader gets (it stops at the cut chunk, this keeps the cut chunk's whole records).
    messages, recovery = read_all(tmp_path / "bag")
    assert messages == sent[:recovered]
    assert len(independent_messages(path)) <= recovered < len(sent)
    assert recovered >= len(sent) // 2
    # The count lost comes from metadata.yaml (the bag had been finished).
    assert info["recovery"]["lost"] == len(sent) - recovered == recovery.lost
    assert f"recovered {recovered} message(s), lost {len(sent) - recovered}" in stderr, stderr
    assert "warning:" in stderr


@pytest.mark.parametrize("damage", ["zero_1mb", "flip_byte", "zero_1mb_no_crc"])
def test_damaged_region_is_reported_lost_and_reading_continues(tmp_path, damage):
    bag = tmp_path / "bag"
    sent = write_bag(bag, 200, plain_rosbags=damage.endswith("no_crc"))
    path = mcap_file(bag)
    size = path.stat().st_size
    with path.open("r+b") as handle:
        if damage.startswith("zero"):
            handle.seek(size // 3)
            handle.write(bytes(1 << 20))
        else:
            handle.seek(size // 2)
            byte = handle.read(1)
            handle.seek(size // 2)
            handle.write(bytes([byte[0] ^ 0x5A]))
    info, stderr = info_json(bag)
    lost = info["recovery"]["lost"]
    assert lost and lost == len(sent) - info["messages"], info["recovery"]
    assert f"lost {lost} message(s)" in stderr and "damage at bytes" in stderr, stderr
    messages, _ = read_all(bag)
    # Nothing invented, order kept, and the messages after the damage are still there.
    assert set(messages) <= set(sent)
    assert messages == [m for m in sent if m in set(messages)]
    assert messages[-1] == sent[-1] and messages[0] == sent[0]
    # recover writes a finished bag with exactly what could be read, and says what was lost.
    result = sac("bag", "recover", bag, "-o", tmp_path / "fixed")
    assert result.returncode == 0, result.stderr
    assert f"recovered {len(messages)} messages" in result.stdout
    assert f"({lost} lost)" in result.stdout, result.stdout
    fixed, recovery = read_all(tmp_path / "fixed")
    assert fixed == messages and recovery is None
    assert (tmp_path / "fixed" / "metadata.yaml").is_file()
    with mcap_file(tmp_path / "fixed").open("rb") as handle:
        assert sum(1 for _ in make_reader(handle, validate_crcs=True).iter_messages()) == len(
            messages)


def test_recover_of_an_intact_bag_and_of_a_lone_mcap(tmp_path):
    sent = write_bag(tmp_path / "bag", 30)
    result = sac("bag", "recover", tmp_path / "bag")
    assert result.returncode == 0 and "nothing to recover" in result.stdout, result
    assert not (tmp_path / "bag-recovered").exists()
    lone = tmp_path / "lone.mcap"
    shutil.copy(mcap_file(tmp_path / "bag"), lone)
    result = sac("bag", "recover", lone)
    assert result.returncode == 0, result.stderr
    assert read_all(tmp_path / "lone-recovered")[0] == sent


# ------------------------------------------------------------------ CLI errors

def test_record_bad_qos_depth_is_one_line_error(tmp_path):
    result = sac("bag", "record", tmp_path / "out", "--topics", "/x", "--qos-depth", "-1",
                 "--duration", "1")
    one_line_error(result, "bag", "--qos-depth")
    assert not any(tmp_path.iterdir())


def test_output_files_are_checked_before_the_work(tmp_path):
    write_bag(tmp_path / "bag", 5)
    missing = tmp_path / "missing" / "x.json"
    started = time.monotonic()
    for args in (("play", tmp_path / "bag", "--json", missing),
                 ("run", tmp_path / "bag", tmp_path / "run", "--json", missing),
                 ("recover", tmp_path / "bag", "--json", missing)):
        one_line_error(sac("bag", *args), "bag", "--json")
    assert time.monotonic() - started < 60
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------ over real DDS

@pytest.fixture
def ros_bits():
    try:
        import rclpy  # noqa: F401
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import Image
        from test_bags_ros import Listener, domain_env, sac_cmd, stop

        import sac_ros.msg  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the install
        pytest.skip(f"needs rclpy and the built sac_ros messages: {exc}")
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=200,
                     reliability=ReliabilityPolicy.RELIABLE)
    return Listener, domain_env, sac_cmd, stop, Image, qos


def wait_until(condition, timeout: float, what: str, procs=()) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for proc in procs:
            assert proc.poll() is None, f"{what}: the process ended: {proc.stderr.read()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_sigkilled_recorder_leaves_a_bag_info_reads_and_recover_finishes(tmp_path, ros_bits):
    Listener, domain_env, sac_cmd, stop, Image, qos = ros_bits
    env = domain_env(21)
    listener = Listener(env, {})
    pub = listener.node.create_publisher(Image, "/kill_test/image", qos)
    out = tmp_path / "run"
    proc = subprocess.Popen([*sac_cmd(), "bag", "record", out, "--topics", "/kill_test/image"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    sent = []
    try:
        wait_until(lambda: pub.get_subscription_count() >= 1, 30, "the recorder's subscription",
                   [proc])
        partials = list(tmp_path.glob(f"*run.partial-{proc.pid}"))
        assert len(partials) == 1, list(tmp_path.iterdir())
        partial = partials[0]

        def publish(first: int, count: int) -> None:
            for index in range(first, first + count):
                msg = Image(height=4, width=4, encoding="rgb8", step=12,
                            data=bytes((index + k) % 256 for k in range(48)))
                msg.header.stamp.sec, msg.header.frame_id = index, "cam"
                pub.publish(msg)
                sent.append(bytes(msg.data))
                time.sleep(0.005)

        def on_disk() -> int:
            files = list(partial.rglob("*.mcap"))
            return len(independent_messages(files[0])) if files else 0

        publish(0, 120)
        # The recorder flushes every 0.5 s: wait until all 120 are in the file.
        wait_until(lambda: on_disk() >= 120, 20, "the flushed messages", [proc])
        publish(120, 30)             # some of these may still be in memory at the kill
        assert stop(proc, signal.SIGKILL) == -signal.SIGKILL
    finally:
        stop(proc, signal.SIGKILL)
        listener.close()
    assert not out.exists()          # nothing under the final name
    assert partial.name == f"run.partial-{proc.pid}"     # visible, named after the bag
    info, stderr = info_json(partial)
    recovered = info["messages"]
    assert 120 <= recovered <= 150, info
    assert "unfinished" in stderr and f"recovered {recovered} message(s)" in stderr, stderr
    assert info["recovery"]["finished"] is False
    result = sac("bag", "recover", partial)
    assert result.returncode == 0, result.stderr
    assert f"recovered {recovered} messages from {partial} into {out}" in result.stdout
    with open_bag(out) as reader:
        assert reader.recovery is None
        rows = [reader.deserialize(d, c.msgtype) for c, _, d in reader.messages()]
        digest = {c.topic: c.digest for c in reader.connections}
    assert [bytes(m.data) for m in rows] == sent[:recovered]
    assert [m.header.stamp.sec for m in rows] == list(range(recovered))
    assert digest["/kill_test/image"].startswith("RIHS01_")
    again = sac("bag", "info", out)
    assert again.returncode == 0 and "warning" not in again.stderr, again.stderr


def test_play_loop_stopped_with_ctrl_c_exits_cleanly(tmp_path, ros_bits):
    Listener, domain_env, sac_cmd, stop, Image, _ = ros_bits
    write_bag(tmp_path / "bag", 10)
    env = domain_env(22)
    listener = Listener(env, {TOPIC: Image})
    proc = subprocess.Popen([*sac_cmd(), "bag", "play", tmp_path / "bag", "--loop",
                             "--rate", "4", "--wait-for", TOPIC, "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(listener.received[TOPIC]) >= 15, 60, "a second pass", [proc])
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=20)
    finally:
        stop(proc, signal.SIGKILL)
        listener.close()
    assert "Traceback" not in stderr, stderr
    assert proc.returncode == 0, (stdout, stderr)
    assert "stopped by a signal" in stdout and f"{TOPIC}: " in stdout, stdout
    assert os.path.isdir(tmp_path / "bag")
