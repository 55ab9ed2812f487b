"""The sensor node in its own process: run-time parameters, bad input, bad start-up (issue 4)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import ros_helpers as rh
import yaml
from ros_helpers import HEIGHT, WIDTH, drops_of, frame
from sensor_msgs.msg import Image

from sac_ros.config import load_core_config
from sac_ros.core.codec import EncoderSettings
from sac_ros.core.errors import SacError
from sac_ros.core.sac import MODES
from sac_ros.msg import SacPacket, SacStats
from sac_ros.nodes.sensor import polygon_parameter, polygon_points

REPO = Path(__file__).resolve().parent.parent
GOP = 5


class Sensor:
    def __init__(self, ros, **params):
        self.ros = ros
        self.node = ros.start("sac_sensor", {"gop": GOP, "fps": 10, "roi_crf": 20.0,
                                             "non_roi_crf": 34.0, **params})
        self.images = ros.publisher(Image, "image_raw")
        self.packets = ros.subscribe(SacPacket, "sac/packets")
        self.stats = ros.subscribe(SacStats, "sac/sensor_stats", 100)
        ros.wait_discovery(publishers=[(self.images, 1)], heard_from=[self.stats])
        self.count = 0

    def send_good(self) -> SacPacket:
        """A good frame; waits for its packet and returns it."""
        stamp = self.ros.send(self.images, self.ros.image(frame(self.count)), self.packets)
        self.count += 1
        return self.packets.by_stamp()[stamp]

    def send_bad(self, msg: Image, dropped: int) -> None:
        """A bad frame; waits until the sensor has counted ``dropped`` drops in all."""
        self.ros.send(self.images, msg)
        self.ros.wait_stats(self.stats, lambda m: m.dropped >= dropped,
                            f"the sensor to count drop {dropped}")


def crfs(packet: SacPacket) -> tuple[float, float]:
    return packet.roi.crf, packet.non_roi[0].crf


def test_crf_change_at_run_time_applies_at_next_key_frame(ros):
    sensor = Sensor(ros)
    packets = [sensor.send_good() for _ in range(3)]  # seq 0 (key), 1, 2

    results = ros.set_parameters("sac_sensor", roi_crf=26.5, non_roi_crf=41.0)
    assert [r.successful for r in results] == [True, True], results
    assert ros.get_parameters("sac_sensor", "roi_crf", "non_roi_crf") == [26.5, 41.0]
    packets += [sensor.send_good() for _ in range(9)]  # seq 3-11: key frames at 5 and 10

    # Out of range: rejected with a reason, the old value kept.
    results = ros.set_parameters("sac_sensor", roi_crf=60.0)
    assert len(results) == 1 and not results[0].successful
    assert "roi_crf" in results[0].reason, results[0].reason
    assert ros.get_parameters("sac_sensor", "roi_crf") == [26.5]
    results = ros.set_parameters("sac_sensor", gop=3)  # fixed at start-up
    assert len(results) == 1 and not results[0].successful and results[0].reason
    assert ros.get_parameters("sac_sensor", "gop") == [GOP]
    packets += [sensor.send_good() for _ in range(6)]  # seq 12-17: key frame at 15

    assert [p.seq for p in packets] == list(range(18))
    assert [p.roi.key_frame for p in packets] == [s % GOP == 0 for s in range(18)]
    assert all(p.non_roi[0].key_frame == p.roi.key_frame for p in packets)
    assert [crfs(p) for p in packets[:5]] == [(20.0, 34.0)] * 5  # old CRFs until seq 5
    assert [crfs(p) for p in packets[5:]] == [(26.5, 41.0)] * 13
    assert sensor.node.running


def test_codec_takes_the_aliases_sac_eval_takes(ros):
    """Issue 17 item 5: -p codec:=x265 (or h265, x264, ...) is the codec sac eval means by
    it, from the one alias table; the packets name it canonically."""
    sensor = Sensor(ros, codec="x265")
    packet = sensor.send_good()
    assert packet.roi.codec == "hevc" and packet.non_roi[0].codec == "hevc"
    assert sensor.node.running


def test_roi_polygon_default_is_sac_yaml_s(ros):
    """Issue 15: the ROI polygon has one definition, config/sac.yaml mask.roi_polygon; the
    sensor's roi_polygon parameter defaults to it, flat (ROS parameters cannot nest)."""
    points = load_core_config().mask.roi_polygon
    sensor = Sensor(ros)
    assert ros.get_parameters("sac_sensor", "roi_polygon") == [polygon_parameter(points)]
    assert polygon_points(polygon_parameter(points)) == [list(p) for p in points]
    packet = sensor.send_good()
    assert (rh.roi_pixels_of(packet)[::16, ::16] == rh.polygon_blocks(frame(0))).all()
    with pytest.raises(SacError, match="at least three x, y pairs"):
        polygon_points([0.0, 1.0, 0.5])


def test_codec_defaults_are_encoder_settings(ros):
    """Issue 15: the codec defaults have one definition, core/codec.py's EncoderSettings."""
    ros.start("sac_sensor")
    names = ("codec", "preset", "gop", "threads", "fps", "aq_mode")
    defaults = EncoderSettings()
    assert ros.get_parameters("sac_sensor", *names) == [
        defaults.codec, defaults.preset, defaults.gop, defaults.threads, defaults.fps,
        -1 if defaults.aq_mode is None else defaults.aq_mode]


# Declared but left out of config/pipeline.yaml, where a comment says why (a nested
# polygon's one home is sac.yaml; an unset id list cannot be written in a parameter file).
UNSET_IN_PIPELINE_YAML = {"sac_sensor": {"roi_polygon", "non_roi_classes"},
                          "sac_ecu": set(), "sac_perception": {"non_roi_classes"}}


@pytest.mark.parametrize("executable", sorted(UNSET_IN_PIPELINE_YAML))
def test_pipeline_yaml_names_every_parameter(ros, executable):
    """Issue 15: config/pipeline.yaml sets every parameter the node declares (or says in a
    comment why not), and nothing else."""
    text = (REPO / "config" / "pipeline.yaml").read_text()
    section = yaml.safe_load(text)[f"/**/{executable}"]["ros__parameters"]
    ros.start(executable)
    declared = ros.list_parameters(executable)
    unset = UNSET_IN_PIPELINE_YAML[executable]
    assert set(section) == declared - unset
    assert unset <= declared
    for name in unset:
        assert re.search(rf"^\s*# {name}\b.* not set here", text, re.M), name
    if executable == "sac_sensor":  # the modes the comment lists are the sensor's
        modes = re.search(r"^\s*mode: \w+\s*# (.*)$", text, re.M).group(1).split(" | ")
        assert tuple(modes) == MODES


def test_sensor_takes_non_roi_classes(ros):
    # Declared before the check for unknown names (it was declared after, and refused).
    Sensor(ros, non_roi_classes=[2, 8]).send_good()
    assert ros.get_parameters("sac_sensor", "non_roi_classes") == [[2, 8]]


def test_target_bitrate_drives_the_crfs_between_gops(ros):
    # Far below what CRF 20 / 34 costs on these frames at 10 fps: the controller must
    # raise the CRFs GOP by GOP, non-ROI first, and the rate must come down to the budget.
    target = 60_000.0
    sensor = Sensor(ros, target_bitrate=target)
    packets = [sensor.send_good() for _ in range(6 * GOP)]
    assert [p.roi.key_frame for p in packets] == [s % GOP == 0 for s in range(6 * GOP)]
    gops = [packets[i:i + GOP] for i in range(0, len(packets), GOP)]
    for gop in gops:  # CRFs change only at key frames
        assert len({crfs(p) for p in gop}) == 1, [crfs(p) for p in gop]
    assert crfs(gops[-1][0])[1] > crfs(gops[1][0])[1] or crfs(gops[1][0])[1] == 51.0
    assert all(crfs(g[0])[1] >= crfs(g[0])[0] for g in gops)  # the ROI keeps the better CRF
    last_bps = sum(len(p.roi.data) + len(p.non_roi[0].data) for p in gops[-1]) * 8 / GOP * 10
    first_bps = sum(len(p.roi.data) + len(p.non_roi[0].data) for p in gops[0]) * 8 / GOP * 10
    assert last_bps < first_bps and last_bps <= 1.5 * target, (first_bps, last_bps)
    # The controller owns the CRFs: a manual change is refused with a reason.
    results = ros.set_parameters("sac_sensor", roi_crf=30.0)
    assert len(results) == 1 and not results[0].successful
    assert "target_bitrate" in results[0].reason
    assert sensor.node.running


def _image(ros, encoding: str, width: int, height: int, step: int, size: int) -> Image:
    msg = ros.image(frame(0))
    msg.encoding, msg.width, msg.height, msg.step = encoding, width, height, step
    msg.data = bytes(size)
    return msg


BAD_IMAGES = [  # (problem, encoding, width, height, step, data bytes)
    ("unsupported image encoding", "32FC1", WIDTH, HEIGHT, WIDTH * 4, WIDTH * HEIGHT * 4),
    ("is empty", "rgb8", 0, 0, 0, 0),
    ("image data has", "rgb8", WIDTH, HEIGHT, WIDTH * 3, WIDTH * HEIGHT * 3 // 2),
    ("image data has", "rgb8", WIDTH, HEIGHT, WIDTH * 3, 100),  # same problem, new numbers
]
PROBLEMS = sorted({problem for problem, *_ in BAD_IMAGES})


def test_bad_images_are_counted_and_logged_once_per_problem(ros):
    sensor = Sensor(ros)
    sensor.send_good()
    for dropped, (_, *layout) in enumerate(BAD_IMAGES, start=1):
        sensor.send_bad(_image(ros, *layout), dropped)
        packet = sensor.send_good()  # the node still encodes
        assert (packet.width, packet.height) == (WIDTH, HEIGHT)

    bad, good = len(BAD_IMAGES), len(BAD_IMAGES) + 1
    stats = ros.wait_stats(sensor.stats, lambda m: m.received == bad + good and
                           m.processed == good, "final sensor stats")
    assert drops_of(stats) == {"bad_image": bad}
    assert stats.dropped == bad
    assert sensor.node.stop() == 0
    log = sensor.node.stderr()
    assert "Traceback" not in log
    errors = [line for line in log.splitlines() if "[ERROR]" in line]
    assert len(errors) == len(PROBLEMS), errors  # one per problem, not one per frame
    for problem in PROBLEMS:
        assert sum(problem in line for line in errors) == 1, (problem, errors)


START_UP_ERRORS = [  # executable, parameters, what the one-line error must name
    ("sac_sensor", ["-p", "mask_source:=model", "-p", "model:={missing}"], "{missing}"),
    ("sac_sensor", ["-p", "gop:=0"], "gop"),
    ("sac_sensor", ["-p", "codec:=vp9"], "vp9"),
    ("sac_sensor", ["-p", "roi_crf:=60.0"], "roi_crf"),
    ("sac_ecu", ["-p", "qos_depth:=0"], "qos_depth"),
    # A misspelt name is refused with the node's real names, not ignored.
    ("sac_sensor", ["-p", "rof_crf:=20.0"], "unknown parameter(s) rof_crf for sac_sensor; "
                                            "its parameters are: "),
    ("sac_ecu", ["-p", "reorder_windw:=2"], "reorder_window"),
    ("sac_video_source", ["-p", "fps:=-1.0"], "fps"),
]


@pytest.mark.parametrize(("executable", "args", "fragment"), START_UP_ERRORS,
                         ids=["missing-model", "gop-0", "codec-vp9", "roi-crf-60", "ecu-depth-0",
                              "misspelt-sensor", "misspelt-ecu",
                              "source-fps"])
def test_bad_start_up_exits_with_one_line_error(tmp_path, executable, args, fragment):
    missing = str(tmp_path / "no_such_model.onnx")
    args = [a.format(missing=missing) for a in args]
    domain, namespace = rh.unique_ids()
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain),
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_LOG_DIR": str(tmp_path / "log")}
    result = subprocess.run(
        [sys.executable, "-m", rh.EXECUTABLES[executable], "--ros-args", "-r",
         f"__ns:={namespace}", *args], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode not in (0, None), result
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{executable}: error: "), lines[0]
    assert fragment.format(missing=missing) in lines[0], lines[0]
