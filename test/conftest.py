"""Shared fixtures: synthetic frames, short clips of the sample footage, tiny configs."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = REPO / "config" / "sac.yaml"


def textured(height: int, width: int, t: float = 0.0) -> np.ndarray:
    """A smooth but textured RGB test frame (sinusoids), moving with ``t``."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float64)
    r = 128 + 60 * np.sin(x / 7.0 + t) + 30 * np.cos(y / 5.0)
    g = 128 + 50 * np.cos(x / 11.0 - y / 9.0 + t)
    b = 100 + 80 * np.sin((x + y) / 13.0 + 0.5 * t)
    return np.clip(np.stack([r, g, b], axis=-1), 0, 255).astype(np.uint8)


@pytest.fixture
def make_frame():
    """``make_frame(h, w, t=0.0)`` -> textured uint8 RGB frame."""
    return textured


@pytest.fixture(scope="session")
def sample_clip():
    """The first 8 frames of the bundled dashcam clip, downscaled 2x to 480x270."""
    from sac_ros.core.io import load_clip

    clip = load_clip("sample", 0, 8)
    assert (clip.width, clip.height) == (960, 540)
    return [np.ascontiguousarray(f[::2, ::2]) for f in clip.frames]


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory) -> Path:
    """The shipped config with a 3-CRF sweep and one delta, for quick CLI runs."""
    data = yaml.safe_load(SHIPPED_CONFIG.read_text())
    data["eval"]["crf_sweep"] = {"h264": [19, 25, 31], "hevc": [24, 30, 36]}
    data["eval"]["delta_crfs"] = [9]
    path = tmp_path_factory.mktemp("config") / "tiny.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def sac_command() -> list[str]:
    """The installed ``sac`` console script, preferring the one next to this interpreter."""
    script = Path(sys.executable).parent / "sac"
    if script.is_file():
        return [str(script)]
    found = shutil.which("sac")
    return [found] if found else [sys.executable, "-m", "sac_ros.cli.main"]


@pytest.fixture
def run_sac(tmp_path):
    """Run the real ``sac`` console script; returns the CompletedProcess."""

    def run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run([*sac_command(), *map(str, args)], cwd=tmp_path,
                              capture_output=True, text=True, timeout=timeout)

    return run


@pytest.fixture
def ros(tmp_path):
    """One test's ROS 2 world (test/ros_helpers.py): its own domain id and namespace, an
    in-test node, and node processes that are always stopped at teardown."""
    from ros_helpers import RosHarness  # imported here: the core tests run without ROS

    harness = RosHarness(tmp_path / "ros")
    try:
        yield harness
    finally:
        harness.close()
