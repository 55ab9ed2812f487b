"""config/sac.yaml: the shipped file loads, and every bad value is a SacError."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

import pytest
import yaml
from PIL import Image

from sac_ros.config import MaskConfig, RateControlConfig, config_dir, load_core_config
from sac_ros.core.codec import EncoderSettings
from sac_ros.core.errors import SacError
from sac_ros.core.mask import PolygonMaskSource

SHIPPED_CONFIG = Path(__file__).resolve().parent.parent / "config" / "sac.yaml"


@pytest.fixture(scope="module")
def shipped() -> dict:
    return yaml.safe_load(SHIPPED_CONFIG.read_text())


def write(tmp_path, data, name="sac.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_config_loads():
    # The source tree's config, or its installed copy under share/sac_ros/config.
    assert (config_dir() / "sac.yaml").read_text() == SHIPPED_CONFIG.read_text()
    cfg = load_core_config()
    assert isinstance(cfg.codec, EncoderSettings)
    assert cfg.codec.gop == yaml.safe_load(SHIPPED_CONFIG.read_text())["codec"]["gop"]
    assert cfg.eval.codecs == ("h264", "hevc")
    assert cfg.eval.paper_pairs["h264"] == [18, 27]
    assert cfg.eval.paper_pairs["hevc"] == [23, 32]
    assert cfg.eval.uniform_reference == {"h264": 23, "hevc": 28}
    assert cfg.eval.size_tolerance == 0.01
    assert cfg.mask.block_size == 16
    PolygonMaskSource(cfg.mask.roi_polygon)  # the shipped polygon is valid
    # Loading by explicit path gives the same result.
    assert load_core_config(SHIPPED_CONFIG) == cfg


def test_codec_aliases_are_canonicalised(tmp_path, shipped):
    data = copy.deepcopy(shipped)
    data["eval"]["codecs"] = ["x264", "H265"]
    data["eval"]["crf_sweep"] = {"x264": [20, 30], "x265": [25, 35]}
    cfg = load_core_config(write(tmp_path, data))
    assert cfg.eval.codecs == ("h264", "hevc")
    assert cfg.eval.crf_sweep == {"h264": [20, 30], "hevc": [25, 35]}


def edit(data, dotted, value):
    *parents, key = dotted.split(".")
    for parent in parents:
        data = data[parent]
    data[key] = value


@pytest.mark.parametrize("dotted, value, message", [
    ("colour", 1, "unknown key.*in config: colour"),
    ("codec.bitrate", 5000, "unknown key.*'codec': bitrate"),
    ("eval.crf_sweep.h264", [19, 60], "crf_sweep.h264 60 is outside 0-51"),
    ("eval.paper_pairs.hevc", [23, 60], "hevc.*60 is outside 0-51"),
    ("eval.uniform_reference.h264", 60, "60 is outside 0-51"),
    ("eval.codecs", ["h264", "vp9"], "unknown codec 'vp9'"),
    ("eval.crf_sweep", {"h264": [19, 23], "vp9": [1, 2]}, "unknown codec 'vp9'"),
    ("codec.preset", "warp", "unknown preset 'warp'"),
    ("codec.gop", 0, "gop 0 is outside"),
    ("mask.block_size", 12, "block_size must be 8, 16, 32 or 64"),
    ("mask.non_roi_classes", {"ade20k": [1]}, "unknown class map 'ade20k'"),
    ("mask.non_roi_classes", {"kitti_step": [2, 300]}, "ids in 0-255"),
    ("eval.delta_crfs", [0], "delta_crfs"),
    ("eval.size_tolerance", 0.9, "size_tolerance"),
    ("eval.crf_sweep.h264", [23], "at least two CRFs"),
    ("eval.paper_pairs.h264", [18], r"\[roi_crf, non_roi_crf\]"),
    ("eval.codec", "h264", "unknown key.*'eval': codec"),
    ("mask", [1, 2], "section 'mask' must be a mapping"),
])
def test_bad_values(tmp_path, shipped, dotted, value, message):
    data = copy.deepcopy(shipped)
    edit(data, dotted, value)
    with pytest.raises(SacError, match=message):
        load_core_config(write(tmp_path, data))


def test_missing_codec_entry(tmp_path, shipped):
    data = copy.deepcopy(shipped)
    del data["eval"]["uniform_reference"]["hevc"]
    with pytest.raises(SacError, match="uniform_reference has no entry for codec hevc"):
        load_core_config(write(tmp_path, data))


def test_not_yaml_text(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("codec: [unclosed\n  preset: : fast\n")
    with pytest.raises(SacError, match="not valid YAML") as info:
        load_core_config(path)
    message = str(info.value)
    assert str(path) in message
    assert "\n" not in message  # printed by the CLI as one line


def test_not_yaml_binary(tmp_path):
    path = tmp_path / "picture.yaml"
    Image.new("RGB", (8, 8)).save(path, format="PNG")
    with pytest.raises(SacError, match="not valid YAML"):
        load_core_config(path)


@pytest.mark.parametrize("text", ["just some words\n", "- a\n- b\n"])
def test_not_a_mapping(tmp_path, text):
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(SacError, match="mapping at the top level"):
        load_core_config(path)


def test_missing_file(tmp_path):
    with pytest.raises(SacError, match="cannot read config .*nope.yaml"):
        load_core_config(tmp_path / "nope.yaml")


def test_empty_file_uses_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    # An empty config has no CRF tables for the default codecs: a clear error, not a crash.
    with pytest.raises(SacError, match="has no entry for codec h264"):
        load_core_config(path)


def test_defaults_are_the_dataclasses(tmp_path, shipped):
    # A key left out takes its field default: the one place a default is written.
    data = copy.deepcopy(shipped)
    del data["codec"], data["mask"]["hysteresis_frames"], data["ratecontrol"]
    cfg = load_core_config(write(tmp_path, data))
    assert cfg.codec == EncoderSettings()
    assert cfg.mask.hysteresis_frames == MaskConfig.hysteresis_frames == 0
    assert cfg.ratecontrol == RateControlConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.mask.block_size = 8  # type: ignore[misc]


@pytest.mark.parametrize("polygon, message", [
    (None, "mask.roi_polygon is missing"),
    ([[0, 1], [0.5, 0.5]], "at least three"),
    ([[0, 1], [0.5, 1.5], [1, 1]], "normalised to"),
    (7, "list of \\[x, y\\] points"),
])
def test_bad_polygon(tmp_path, shipped, polygon, message):
    data = copy.deepcopy(shipped)
    if polygon is None:
        del data["mask"]["roi_polygon"]
    else:
        data["mask"]["roi_polygon"] = polygon
    with pytest.raises(SacError, match=message):
        load_core_config(write(tmp_path, data))
