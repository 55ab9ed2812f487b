"""sac_view (issue 18 item 2): the running pipeline served to Foxglove over WebSocket.

Real processes over real DDS (sensor, ECU, view), a real WebSocket client speaking the
Foxglove protocol (advertise -> subscribe -> binary message data), protobuf decoded with
the schema the server advertises, JPEG decoded by Pillow, H.264 by PyAV.
"""

from __future__ import annotations

import base64
import io
import json
import re
import socket
import struct
import time
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import ros_helpers as rh
import yaml
from conftest import sac_command
from foxglove_msgs.msg import CompressedVideo as CompressedVideoMsg
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from PIL import Image as PILImage
from ros_helpers import HEIGHT, WIDTH, frame
from sensor_msgs.msg import Image
from websockets.sync.client import connect

from sac_ros.core import annexb
from sac_ros.core.mask import expand_blocks
from sac_ros.core.wire import stamp_ns
from sac_ros.msg import SacStats
from sac_ros.nodes.view_channels import (
    VIEW_STATS_CHANNEL,
    RateGate,
    build_layout,
    channel_plan,
    layout_topics,
    roi_overlay,
)
from sac_ros.pipeline import load_layout, node_command, pipeline_nodes

REPO = Path(__file__).resolve().parent.parent
LAYOUT = REPO / "config" / "foxglove_layout.json"
SUBPROTOCOL = "foxglove.sdk.v1"
MESSAGE_DATA = 0x01  # server binary opcode: u32 subscription id, u64 log time, payload


class FoxgloveClient:
    """A Foxglove WebSocket client: channels from advertise, messages by topic."""

    def __init__(self, port: int):
        self._connection = connect(f"ws://127.0.0.1:{port}", subprotocols=[SUBPROTOCOL],
                                   max_size=None, open_timeout=10)
        self.channels: dict[str, dict] = {}
        self.received: dict[str, list[bytes]] = defaultdict(list)
        self._subscribed: dict[int, str] = {}
        self._next_id = 1

    def __enter__(self) -> FoxgloveClient:
        self.ws = self._connection.__enter__()
        assert self.ws.subprotocol == SUBPROTOCOL
        self.pump(lambda: self.channels, 10.0, "the advertise message")
        return self

    def __exit__(self, *exc) -> None:
        self._connection.__exit__(*exc)

    def pump(self, until, timeout: float, what: str, between=None):
        """Read messages until ``until()`` is truthy; ``between()`` runs between reads."""
        deadline = time.monotonic() + timeout
        while not until():
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
            if between is not None:
                between()
            try:
                message = self.ws.recv(timeout=0.1)
            except TimeoutError:
                continue
            if isinstance(message, str):
                op = json.loads(message)
                if op["op"] == "advertise":
                    self.channels.update({c["topic"]: c for c in op["channels"]})
            elif message[0] == MESSAGE_DATA:
                sub_id, _log_time = struct.unpack_from("<IQ", message, 1)
                self.received[self._subscribed[sub_id]].append(message[13:])
        return until()

    def subscribe(self, *topics: str) -> None:
        subs = []
        for topic in topics:
            self._subscribed[self._next_id] = topic
            subs.append({"id": self._next_id, "channelId": self.channels[topic]["id"]})
            self._next_id += 1
        self.ws.send(json.dumps({"op": "subscribe", "subscriptions": subs}))

    def unsubscribe(self, *topics: str) -> None:
        ids = [i for i, t in self._subscribed.items() if t in topics]
        self.ws.send(json.dumps({"op": "unsubscribe", "subscriptionIds": ids}))

    def decoder(self, topic: str):
        """The protobuf class of a channel, built from the schema the server advertised."""
        channel = self.channels[topic]
        assert channel["encoding"] == "protobuf" and channel["schemaEncoding"] == "protobuf"
        files = descriptor_pb2.FileDescriptorSet.FromString(base64.b64decode(channel["schema"]))
        pool = descriptor_pool.DescriptorPool()
        for proto in files.file:
            pool.Add(proto)
        return message_factory.GetMessageClass(pool.FindMessageTypeByName(channel["schemaName"]))


def start_view(ros, **params) -> tuple[rh.NodeProcess, int]:
    """The view on a free port, in the harness's camera namespace; (process, port)."""
    view = ros.start("sac_view", {"port": 0, **params})
    found = ros.wait_for(lambda: re.search(r"ws://127\.0\.0\.1:(\d+)", view.stderr()),
                         "the view's port in its log", rh.DISCOVERY_TIMEOUT)
    return view, int(found.group(1))


def h264_frames(count: int) -> list[tuple[bytes, bool]]:
    """Real x264 Annex-B frames of the test pattern (SPS/PPS in the key frame)."""
    ctx = av.CodecContext.create("libx264", "w")
    ctx.width, ctx.height, ctx.pix_fmt = WIDTH, HEIGHT, "yuv420p"
    # A key frame (with SPS / PPS) every 5: a client whose subscription reaches the
    # server just after the first one still gets an entry point soon.
    ctx.time_base, ctx.gop_size, ctx.max_b_frames = Fraction(1, 10), 5, 0
    ctx.options = {"tune": "zerolatency", "preset": "ultrafast"}
    out = []
    for i in range(count):
        video_frame = av.VideoFrame.from_ndarray(frame(i), format="rgb24").reformat(
            format="yuv420p")
        video_frame.pts = i
        out += [(bytes(p), p.is_keyframe) for p in ctx.encode(video_frame)]
    return out


def jpeg_pixels(data: bytes) -> np.ndarray:
    image = PILImage.open(io.BytesIO(data))
    assert image.format == "JPEG"
    return np.asarray(image.convert("RGB"))


def test_view_serves_frames_video_and_stats_to_a_websocket_client(ros):
    """Issue 18 item 2: a real Foxglove client subscribes and receives decodable frames."""
    ros.start("sac_sensor", {"gop": 5, "fps": 10})
    ros.start("sac_ecu")
    view, port = start_view(ros, max_fps=50.0)
    feed = Feed(ros)
    sensor_stats = ros.subscribe(SacStats, "sac/sensor_stats")
    ros.wait_discovery(publishers=[(feed.images, 1)], heard_from=[sensor_stats])
    with FoxgloveClient(port) as client:
        # Every topic the layout names is advertised; the image topics have no view reader
        # before a client subscribes (a view without a client costs the pipeline nothing).
        camera = ros.namespace.strip("/")
        assert set(client.channels) == {s.topic for s in channel_plan([camera])}
        assert layout_topics(build_layout([camera])) <= set(client.channels)
        ros.wait_for(lambda: ros.node.count_subscribers(ros.topic("sac/packets")) == 1,
                     "the ECU's packet reader in the graph")  # the ECU's only
        assert ros.node.count_subscribers(feed.recon) == 0

        watched = [feed.recon, feed.overlay, feed.original, feed.video]
        client.subscribe(*watched, VIEW_STATS_CHANNEL, *feed.stats)
        ros.wait_for(lambda: ros.node.count_subscribers(feed.recon) == 1
                     and ros.node.count_subscribers(ros.topic("sac/packets")) == 2
                     and feed.videos.get_subscription_count() == 1, "the view's subscriptions")
        got = client.received
        client.pump(lambda: all(len(got[t]) >= 3 for t in watched[:3])
                    and len(got[feed.video]) >= 5 and all(got[t] for t in feed.stats),
                    60.0, "frames, video and stats from the view", between=feed.send)
        check_reconstruction(client, feed)
        check_overlay(client, feed)
        check_video(client, feed)
        check_stats(client, feed)

        # Input it cannot show is counted by reason, and the view carries on. (Sent again
        # until counted: a reader of depth 1 keeps only the newest of frames sent at once.)
        def send_bad() -> None:
            bad = ros.image(frame(0))
            bad.data = bytes(100)
            feed.images.publish(bad)
            feed.videos.publish(CompressedVideoMsg(timestamp=bad.header.stamp, data=b"GIF89a",
                                                   format="gif"))
            feed.send()

        def counted() -> bool:
            drops = json.loads(got[VIEW_STATS_CHANNEL][-1])["drops"]
            return drops.get("bad_image", 0) >= 1 and drops.get("bad_video", 0) >= 1

        client.pump(counted, 30.0, "bad_image and bad_video in the view's stats",
                    between=send_bad)
        count = len(got[feed.recon])
        client.pump(lambda: len(got[feed.recon]) > count, 20.0, "frames after the bad one",
                    between=feed.send)

        # Unsubscribed: the view lets go of the image topics again.
        client.unsubscribe(*watched)
        ros.wait_for(lambda: ros.node.count_subscribers(feed.recon) == 0
                     and ros.node.count_subscribers(ros.topic("sac/packets")) == 1,
                     "the view to drop its image subscriptions")

    # config/pipeline.yaml names every parameter the view declares (cameras: a comment).
    text = (REPO / "config" / "pipeline.yaml").read_text()
    section = yaml.safe_load(text)["/**/sac_view"]["ros__parameters"]
    assert set(section) == ros.list_parameters("sac_view") - {"cameras"}
    assert re.search(r"^\s*# cameras is not set here", text, re.M)
    assert view.stop() == 0
    assert "Traceback" not in view.stderr()


class Feed:
    """The test's camera: frames on image_raw, H.264 on sac/video, stamps remembered."""

    def __init__(self, ros):
        self.ros = ros
        self.images = ros.publisher(Image, "image_raw")
        self.videos = ros.node.create_publisher(CompressedVideoMsg, ros.topic("sac/video"), 10)
        self.recon, self.overlay, self.original, self.video = (ros.topic(n) for n in (
            "sac/image", "sac/roi_overlay", "image_raw", "sac/video"))
        self.stats = [ros.topic("sac/sensor_stats"), ros.topic("sac/ecu_stats")]
        self.sent: dict[int, int] = {}  # stamp -> frame index
        self._h264 = iter(h264_frames(40))

    def send_image(self) -> None:
        index = len(self.sent)
        msg = self.ros.image(frame(index))
        self.sent[stamp_ns(msg.header)] = index
        self.images.publish(msg)
        time.sleep(0.1)

    def send(self) -> None:
        """A frame, and one H.264 frame of the test pattern on sac/video (no sensor
        publishes video in dual_crf without the ECU's re-encode)."""
        index = len(self.sent)
        msg = self.ros.image(frame(index))
        self.sent[stamp_ns(msg.header)] = index
        self.images.publish(msg)
        data, _ = next(self._h264, (b"", False))
        if data:
            self.videos.publish(CompressedVideoMsg(timestamp=msg.header.stamp,
                                                   frame_id="camera", data=data, format="h264"))
        time.sleep(0.1)

    def frame_of(self, msg) -> np.ndarray:
        """The frame a CompressedImage / CompressedVideo was made from, by its stamp."""
        return frame(self.sent[msg.timestamp.seconds * 1_000_000_000 + msg.timestamp.nanos])


def check_reconstruction(client: FoxgloveClient, feed: Feed) -> None:
    """JPEG of the camera's size, close to the frame it was sent as."""
    compressed = client.decoder(feed.recon)
    everywhere = np.ones((HEIGHT, WIDTH), bool)
    for payload in client.received[feed.recon]:
        msg = compressed.FromString(payload)
        assert msg.format == "jpeg" and msg.frame_id == "camera"
        pixels = jpeg_pixels(msg.data)
        assert pixels.shape == (HEIGHT, WIDTH, 3)
        assert rh.psnr(pixels, feed.frame_of(msg), everywhere) > 24.0


def check_overlay(client: FoxgloveClient, feed: Feed) -> None:
    """The packet's ROI blocks as sent, the non-ROI blocks dimmed."""
    msg = client.decoder(feed.overlay).FromString(client.received[feed.overlay][-1])
    pixels, rgb = jpeg_pixels(msg.data), feed.frame_of(msg)
    roi = expand_blocks(rh.polygon_blocks(rgb), HEIGHT, WIDTH).astype(bool)
    assert roi.any() and (~roi).any()
    assert rh.psnr(pixels, rgb, roi) > 28.0
    assert rh.psnr(pixels, rgb, ~roi) < 20.0
    assert pixels[~roi][:, 1].mean() < 0.75 * rgb[~roi][:, 1].mean()  # green halved


def check_video(client: FoxgloveClient, feed: Feed) -> None:
    """Forwarded frame for frame, decodable by a real H.264 decoder from the first entry
    point the client got (the server may register the client's subscription a frame
    after the view's ROS reader hears the first one)."""
    decode = client.decoder(feed.video).FromString
    video_msgs = [decode(p) for p in client.received[feed.video]]
    assert all(m.format == "h264" and m.frame_id == "camera" for m in video_msgs)
    start = next((i for i, m in enumerate(video_msgs) if annexb.entry_point(m.data, "h264")),
                 None)
    assert start is not None and start < 5, [len(m.data) for m in video_msgs]
    decoder = av.CodecContext.create("h264", "r")  # one access unit per message
    decoded = [f for m in video_msgs[start:] for f in decoder.decode(av.Packet(m.data))]
    decoded += list(decoder.decode(None))  # flush
    assert len(decoded) == len(video_msgs) - start >= 1
    assert all((f.width, f.height) == (WIDTH, HEIGHT) for f in decoded)


def check_stats(client: FoxgloveClient, feed: Feed) -> None:
    """JSON with the fields the layout plots."""
    sensor = json.loads(client.received[feed.stats[0]][-1])
    assert {"kbytes_per_frame", "mbits_per_second", "latency_p99_ms", "fps", "drops",
            "processed", "stamp"} <= set(sensor)
    assert sensor["processed"] > 0 and sensor["kbytes_per_frame"] > 0
    assert json.loads(client.received[feed.stats[1]][-1])["node"].endswith("sac_ecu")


def test_view_forwards_the_sensors_roi_qp_stream(ros):
    """The compressed stream as the pipeline makes it: the sensor's roi_qp H.264 (published
    only while someone subscribes, i.e. while a client watches the view's video channel),
    forwarded frame for frame and decodable from its first key frame."""
    ros.start("sac_sensor", {"mode": "roi_qp", "gop": 5, "fps": 10})
    view, port = start_view(ros)
    feed = Feed(ros)
    sensor_stats = ros.subscribe(SacStats, "sac/sensor_stats")
    ros.wait_discovery(publishers=[(feed.images, 1)], heard_from=[sensor_stats])
    with FoxgloveClient(port) as client:
        client.subscribe(feed.video)
        ros.wait_for(lambda: ros.node.count_subscribers(feed.video) == 1, "the view's reader")
        client.pump(lambda: len(client.received[feed.video]) >= 12, 60.0,
                    "the sensor's stream through the view", between=feed.send_image)
        decode = client.decoder(feed.video).FromString
        video_msgs = [decode(p) for p in client.received[feed.video]]
    assert all(m.format == "h264" and m.frame_id == "camera" for m in video_msgs)
    stamps = [m.timestamp.seconds * 1_000_000_000 + m.timestamp.nanos for m in video_msgs]
    assert all(stamp in feed.sent for stamp in stamps)  # the camera's stamps, in order
    assert stamps == sorted(stamps)
    decoder = av.CodecContext.create("h264", "r")  # one access unit per message
    decoded = [f for m in video_msgs for f in decoder.decode(av.Packet(m.data))]
    decoded += list(decoder.decode(None))  # flush
    assert len(decoded) == len(video_msgs)  # the first is a key frame: none is undecodable
    # The sensor codes the frame padded to its 16-pixel block grid.
    first = decoded[0].to_ndarray(format="rgb24")
    assert HEIGHT <= first.shape[0] < HEIGHT + 16 and WIDTH <= first.shape[1] < WIDTH + 16
    everywhere = np.ones((HEIGHT, WIDTH), bool)
    assert rh.psnr(first[:HEIGHT, :WIDTH], feed.frame_of(video_msgs[0]), everywhere) > 25.0
    assert view.stop() == 0


def test_view_refuses_a_port_in_use_or_a_bad_camera_with_one_line(ros):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        view = ros.start("sac_view", {"port": port})
        view.proc.wait(rh.DISCOVERY_TIMEOUT)
    assert view.proc.returncode == 2
    assert "cannot serve Foxglove on 127.0.0.1:" in view.stderr()
    assert "Traceback" not in view.stderr()
    bad = ros.start("sac_view", {"port": 0, "cameras": ["front", "rear view"]})  # same log
    bad.proc.wait(rh.DISCOVERY_TIMEOUT)
    assert bad.proc.returncode == 2
    assert bad.stderr().strip() == ("sac_view: error: parameter cameras: 'rear view' is not a "
                                    "valid ROS namespace")


def test_layout_file_is_the_generated_layout_of_the_configured_cameras():
    """config/foxglove_layout.json is JSON, names only channels the view advertises, and is
    build_layout() of pipeline.yaml's cameras (regenerate it with `sac view --write-layout`)."""
    layout = json.loads(LAYOUT.read_text())
    cameras = load_layout().cameras
    assert layout == build_layout(cameras)
    named = layout_topics(layout)
    assert named <= {s.topic for s in channel_plan(cameras)}
    roles = {s.role for s in channel_plan(cameras) if s.topic in named}
    assert {"original", "reconstruction", "roi_overlay", "video", "sensor_stats", "ecu_stats",
            "perception_stats"} <= roles
    plotted = {p["value"].rsplit(".", 1)[1] for p in _plot_series(layout)}
    assert {"kbytes_per_frame", "mbits_per_second", "latency_p99_ms", "fps", "miou"} <= plotted


def _plot_series(node):
    if isinstance(node, dict):
        if node.get("panelType") == "Plot":
            yield from node["config"]["paths"]
        for value in node.values():
            yield from _plot_series(value)
    elif isinstance(node, list):
        for value in node:
            yield from _plot_series(value)


def test_pipeline_view_node_serves_every_camera(tmp_path):
    config = yaml.safe_load((REPO / "config" / "pipeline.yaml").read_text())
    config["sac_pipeline"]["ros__parameters"]["cameras"] = ["front", "rear"]
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    layout = load_layout(path)
    assert "sac_view" not in {s.executable for s in pipeline_nodes(layout)}
    views = [s for s in pipeline_nodes(layout, view=True) if s.executable == "sac_view"]
    assert len(views) == 1 and views[0].namespace == "/"
    cmd = node_command(views[0], str(path))
    assert "cameras:=['front', 'rear']" in cmd
    assert yaml.safe_load(cmd[cmd.index("cameras:=['front', 'rear']")].split(":=")[1]) == [
        "front", "rear"]


def test_rate_gate_and_overlay():
    now = [0.0]
    gate = RateGate(10.0, clock=lambda: now[0])
    shown = []
    for step in range(30):  # 30 frames at 30 Hz, one second
        now[0] = step / 30
        shown.append(gate.allow("/front/sac/image"))
    assert sum(shown) == 10 and shown[:4] == [True, False, False, True]
    assert gate.allow("/rear/sac/image")  # per channel
    jitter = np.random.default_rng(1).uniform(-0.02, 0.02, 100)
    shown = []
    for step in range(100):  # a 10 Hz camera, +-20 ms of jitter: every frame
        now[0] = 10 + step / 10 + jitter[step]
        shown.append(gate.allow("/left/sac/image"))
    assert all(shown)
    for step in range(1000):  # 100 Hz for 10 s: at most 10 fps on average
        now[0] = 30 + step / 100
        shown.append(gate.allow("/right/sac/image"))
    assert 99 <= sum(shown[100:]) <= 101  # 10 s at 10 fps, both ends counted
    # 3 x 4 blocks of 4 px, the last row and column partial: ROI where True.
    rgb = np.full((10, 14, 3), 200, np.uint8)
    blocks = np.array([[1, 0, 0, 1], [0, 1, 1, 0], [1, 1, 0, 0]], bool)
    out = roi_overlay(rgb, blocks, block_size=4)
    pixels = expand_blocks(blocks, 10, 14, 4).astype(bool)
    assert (out[pixels] == 200).all() and (out[~pixels] == [190, 100, 190]).all()
    assert (rgb == 200).all()  # a copy
    with pytest.raises(ValueError, match="does not match"):
        roi_overlay(rgb, blocks[:2], block_size=4)


def test_sac_view_serves_the_cameras_it_is_given(ros, tmp_path):
    """`sac view` runs the node with the config's parameters and --cameras; Ctrl-C stops it."""
    camera = ros.namespace.strip("/")
    cli = rh.NodeProcess("sac_view_cli", [*sac_command(), "view", "--port", "0", "--cameras",
                                          f"{camera},rear"], ros.env, ros.log_dir)
    ros.children.append(cli)
    found = ros.wait_for(lambda: re.search(r"ws://127\.0\.0\.1:(\d+)", cli.stderr()),
                         "the view's port in its log", rh.DISCOVERY_TIMEOUT)
    with FoxgloveClient(int(found.group(1))) as client:
        assert set(client.channels) == {s.topic for s in channel_plan([camera, "rear"])}
    assert cli.stop() == 0
    assert "Traceback" not in cli.stderr()


def test_sac_view_writes_the_layout_and_refuses_bad_cameras(run_sac, tmp_path):
    done = run_sac("view", "--write-layout", tmp_path / "layout.json", "--cameras", "front,rear")
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "layout.json").read_text()) == build_layout(["front", "rear"])
    done = run_sac("view", "--cameras", "front,bad name")
    assert done.returncode == 2
    assert done.stderr.strip() == ("sac view: error: --cameras: 'bad name' is not a valid ROS "
                                   "namespace")
