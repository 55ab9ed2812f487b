"""`sac eval --target-mbps` as a subprocess, and the new config keys (roi_qp, rate control)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import yaml
from PIL import Image

from sac_ros.config import load_core_config, rate_controller, rate_gop
from sac_ros.core.errors import SacError

SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "config" / "sac.yaml"


@pytest.fixture(scope="module")
def shipped() -> dict:
    return yaml.safe_load(SHIPPED_CONFIG.read_text())


def write(tmp_path, data):
    path = tmp_path / "sac.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def one_line_error(result, fragment):
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sac eval: error: "), result.stderr
    assert fragment in lines[0], lines[0]


def test_target_mbps_run(run_sac, tmp_path, shipped):
    data = copy.deepcopy(shipped)
    data["ratecontrol"]["modes"] = ["roi_qp"]
    config = write(tmp_path, data)
    out = tmp_path / "out"
    result = run_sac("eval", "sample", "--target-mbps", "2", "--frames", "60", "--codecs",
                     "h264", "--no-progress", "--out", out, "--config", config)
    assert result.returncode == 0, result.stderr
    assert "Rate control: 1-s windows" in result.stdout
    data = json.loads((out / "rate_control.json").read_text())
    assert (data["frames"], data["gop"]) == (60, 25)  # 1-s GOP at 25 fps
    [record] = data["records"]
    assert (record["codec"], record["mode"], record["target_mbps"]) == ("h264", "roi_qp", 2)
    assert 1.6 < record["avg_mbps"] < 2.1
    assert record["window_min"] <= record["window_max"]
    assert record["in_band"] == (0.85 <= record["window_min"] and record["window_max"] <= 1.05)
    assert abs(record["uniform_size_error_pct"]) <= 1  # the baseline spent the same bytes
    assert record["roi_gain_db"] == pytest.approx(record["roi_psnr"]
                                                  - record["uniform_roi_psnr"])
    assert record["roi_psnr"] > record["non_roi_psnr"]
    assert len(record["gops"]) == 2
    with Image.open(out / "rate_x264.png") as img:
        assert img.width > 200


@pytest.mark.parametrize("args, fragment", [
    (["--target-mbps", "0"], "--target-mbps must be positive"),
    (["--target-mbps", "2", "--frames", "30"], "needs at least one GOP plus one second"),
])
def test_target_mbps_bad_input(run_sac, tmp_path, args, fragment):
    result = run_sac("eval", "sample", "--codecs", "h264", "--no-progress", "--out",
                     tmp_path / "out", *args)
    one_line_error(result, fragment)


def test_shipped_rate_and_roi_qp_settings():
    cfg = load_core_config()
    assert 1 <= cfg.mask.hysteresis_frames <= 4  # small, on
    assert cfg.codec.aq_mode is None
    assert set(cfg.eval.roi_qp_offsets) == {"h264", "hevc"}
    section = cfg.ratecontrol
    assert rate_gop(section, 25) == 25 and rate_gop(section, 30) == 30
    controller = rate_controller(section, 4e6, 25, 25, "roi_qp", 960, 540)
    assert controller.cap_bps == pytest.approx(4e6 * section.cap_ratio)
    assert controller.decision.qp_offset == pytest.approx(section.spread["roi_qp"])
    assert controller.decision.roi_vbv.maxrate_kbps == int(4000 * section.cap_ratio)


def edit(data, dotted, value):
    *parents, key = dotted.split(".")
    for parent in parents:
        data = data.setdefault(parent, {})
    data[key] = value


@pytest.mark.parametrize("dotted, value, message", [
    ("mask.hysteresis_frames", -1, "hysteresis_frames must be a whole number in 0-1000"),
    ("mask.hysteresis_frames", 2.5, "hysteresis_frames must be a whole number"),
    ("codec.aq_mode", 9, "aq_mode 9 is outside 0-3"),
    ("codec.aq_mode", "auto", "codec.aq_mode must be a whole number or null"),
    ("eval.roi_qp_offsets", {"h264": [0]}, "roi_qp_offsets.h264 must be a list of QP offsets"),
    ("eval.roi_qp_offsets", {"vp9": [4]}, "unknown codec 'vp9'"),
    ("ratecontrol.modes", ["vbr"], "ratecontrol.modes must be a list drawn from"),
    ("ratecontrol.spread", {"dual_crf": 9}, "ratecontrol.spread must give dual_crf and roi_qp"),
    ("ratecontrol.spread", {"dual_crf": 9, "roi_qp": -2}, "config ratecontrol: spread"),
    ("ratecontrol.roi_crf_range", [30, 20], "roi_crf_min 30 is above roi_crf_max 20"),
    ("ratecontrol.roi_crf_range", [10], "roi_crf_range must be [min, max]"),
    ("ratecontrol.cap_ratio", 0.9, "ratecontrol.cap_ratio must be a number in [1, 100]"),
    ("ratecontrol.margin", 0.9, "config ratecontrol: margin must be in"),
    ("ratecontrol.vbv_buffer_s", 0, "config ratecontrol: vbv_buffer_s must be in"),
    ("ratecontrol.frames", 1, "ratecontrol.frames must be a whole number >= 2"),
    ("ratecontrol.target", 4, "unknown key(s) in config section 'ratecontrol': target"),
])
def test_bad_values(tmp_path, shipped, dotted, value, message):
    data = copy.deepcopy(shipped)
    edit(data, dotted, value)
    with pytest.raises(SacError) as info:
        load_core_config(write(tmp_path, data))
    assert message in str(info.value)
    assert "\n" not in str(info.value)
