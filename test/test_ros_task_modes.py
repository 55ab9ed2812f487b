"""Task-aware coding in the live sensor (issue 20 item 5): non-ROI pre-filtering and
class-level QP offsets, sensor and ECU in their own processes over real Fast DDS."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import ros_helpers as rh
from ros_helpers import RosHarness, image_pixels, psnr, roi_pixels_of
from sensor_msgs.msg import Image

from sac_ros.core.io import load_clip
from sac_ros.msg import SacPacket, SacStats

FRAMES = 8
BASE = {"gop": 4, "fps": 10, "roi_crf": 22.0, "non_roi_crf": 31.0}


@pytest.fixture(scope="module")
def frames():
    """Real dashcam frames (sky, trees, road), downscaled 2x to 480x270."""
    clip = load_clip("sample:project_video01", 0, FRAMES)
    return [np.ascontiguousarray(f[::2, ::2]) for f in clip.frames]


def run_live(tmp_path, name: str, frames, **params) -> dict:
    """Sensor and ECU with ``params``; every frame sent in lock-step until the ECU's image
    of it is out. The packets, reconstructions and ROI / non-ROI PSNR of the output."""
    ros = RosHarness(tmp_path / name)
    try:
        packets = ros.subscribe(SacPacket, "sac/packets")
        outputs = ros.subscribe(Image, "sac/image")
        sensor_stats = ros.subscribe(SacStats, "sac/sensor_stats", 100)
        ecu_stats = ros.subscribe(SacStats, "sac/ecu_stats", 100)
        images = ros.publisher(Image, "image_raw")
        sensor = ros.start("sac_sensor", {**BASE, **params})
        ecu = ros.start("sac_ecu")
        ros.wait_discovery(publishers=[(images, 1)], heard_from=[sensor_stats, ecu_stats])
        # The ECU must hear the first (key) frame: both readers of the packets matched, and
        # ours of the ECU's images.
        ros.wait_stats(sensor_stats, lambda m: m.output_readers >= 2, "the ECU to match")
        ros.wait_stats(ecu_stats, lambda m: m.output_readers >= 1, "our image reader")
        stamps = [ros.send(images, ros.image(rgb), outputs, f"the ECU's image of frame {i}")
                  for i, rgb in enumerate(frames)]
        by_stamp, out = packets.by_stamp(), outputs.by_stamp()
        sent = [by_stamp[s] for s in stamps]
        roi, non = [], []
        for stamp, rgb, packet in zip(stamps, frames, sent, strict=True):
            where = roi_pixels_of(packet)
            roi.append(psnr(rgb, image_pixels(out[stamp]), where))
            non.append(psnr(rgb, image_pixels(out[stamp]), ~where))
        assert sensor.running and ecu.running
        return {"packets": sent, "roi_psnr": float(np.mean(roi)),
                "non_roi_psnr": float(np.mean(non)),
                "bytes": sum(len(p.roi.data) + sum(len(s.data) for s in p.non_roi)
                             for p in sent),
                "non_roi_bytes": sum(len(s.data) for p in sent for s in p.non_roi)}
    finally:
        ros.close()


def test_nonroi_blur_drops_the_non_roi_bytes_and_the_ecu_decodes_every_frame(tmp_path,
                                                                              frames):
    plain = run_live(tmp_path, "none", frames, mode="dual_crf")
    blurred = run_live(tmp_path, "blur", frames, mode="dual_crf", nonroi_filter="blur",
                       nonroi_filter_strength=3.0)
    assert [p.seq for p in blurred["packets"]] == list(range(FRAMES))
    assert blurred["non_roi_bytes"] < 0.8 * plain["non_roi_bytes"], (blurred, plain)
    # The ROI stream is untouched by the filter: same bytes (give or take x264's
    # threads) and the same ROI quality out of the ECU.
    roi_bytes = [sum(len(p.roi.data) for p in run["packets"]) for run in (plain, blurred)]
    assert abs(roi_bytes[1] / roi_bytes[0] - 1) < 0.02, roi_bytes
    assert abs(blurred["roi_psnr"] - plain["roi_psnr"]) < 0.2
    assert blurred["non_roi_psnr"] < plain["non_roi_psnr"]  # the price, outside the ROI


def test_roi_qp_downscale_drops_the_bytes_of_the_one_stream(tmp_path, frames):
    plain = run_live(tmp_path, "none", frames, mode="roi_qp")
    scaled = run_live(tmp_path, "downscale", frames, mode="roi_qp", nonroi_filter="downscale",
                      nonroi_filter_strength=4.0)
    # The non-ROI blocks are already coded 9 QP up: the saving is a few percent of all.
    assert scaled["bytes"] < 0.95 * plain["bytes"], (scaled["bytes"], plain["bytes"])
    assert abs(scaled["roi_psnr"] - plain["roi_psnr"]) < 0.5


def test_class_qp_codes_the_background_by_class_and_the_ecu_decodes_it(tmp_path, frames):
    """Binary roi_qp with no offset (ROI CRF = non-ROI CRF) against class_qp: config/sac.yaml's
    offsets put sky, trees and buildings 6-12 QP up, so the bytes must fall and the non-ROI
    quality with them, while the ROI (offset 0) stays where it was."""
    model = {"mode": "roi_qp", "mask_source": "model", "non_roi_crf": BASE["roi_crf"]}
    binary = run_live(tmp_path, "binary", frames, **model)
    classes = run_live(tmp_path, "classes", frames, **model, class_qp=True)
    assert [p.seq for p in classes["packets"]] == list(range(FRAMES))
    assert classes["bytes"] < 0.85 * binary["bytes"], (classes["bytes"], binary["bytes"])
    assert classes["non_roi_psnr"] < binary["non_roi_psnr"] - 1.0
    assert abs(classes["roi_psnr"] - binary["roi_psnr"]) < 0.7


START_UP_ERRORS = [
    (["-p", "class_qp:=true"], "class_qp needs mode roi_qp, not dual_crf"),
    (["-p", "mode:=roi_qp", "-p", "class_qp:=true"], "class_qp needs mask_source model"),
    (["-p", "nonroi_filter:=blur", "-p", "nonroi_filter_strength:=50.0"], "outside 0.1-32"),
    (["-p", "nonroi_filter:=median"], "nonroi_filter='median' must be one of"),
    (["-p", "mode:=uniform", "-p", "nonroi_filter:=blur"], "nonroi_filter needs mode"),
]


@pytest.mark.parametrize(("args", "fragment"), START_UP_ERRORS,
                         ids=["class-dual", "class-polygon", "strength", "kind", "uniform"])
def test_bad_task_settings_stop_the_sensor_with_one_line(tmp_path, args, fragment):
    domain, namespace = rh.unique_ids()
    env = {**os.environ, "ROS_DOMAIN_ID": str(domain),
           "ROS_AUTOMATIC_DISCOVERY_RANGE": "LOCALHOST", "ROS_LOG_DIR": str(tmp_path / "log")}
    result = subprocess.run(
        [sys.executable, "-m", rh.EXECUTABLES["sac_sensor"], "--ros-args", "-r",
         f"__ns:={namespace}", *args], env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode not in (0, None), result
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("sac_sensor: error: ") and fragment in lines[0], lines[0]
