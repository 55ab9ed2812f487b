"""`sac eval --video` and `sac report --video` (issue 17, item 7): the MP4 decoded with
PyAV, its frame count, rate and 2x2 layout checked quadrant by quadrant; the figures
exist and open."""

from __future__ import annotations

import json

import av
import numpy as np
import pytest
from PIL import Image
from test_eval_ux import cli, sky_label, write_mp4
from test_report import write_run_bag

from sac_ros.core import metrics
from sac_ros.core.io import load_clip


def decode(path) -> tuple[list[np.ndarray], list[float], av.video.stream.VideoStream]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        frames, times = [], []
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.time))
        return frames, times, stream


def quadrants(tile: np.ndarray, height: int, width: int) -> dict[str, np.ndarray]:
    """The four pictures, without their top third (where the label sits)."""
    skip = height // 3
    return {"original": tile[skip:height, :width], "reconstruction": tile[skip:height, width:],
            "overlay": tile[height + skip:, :width], "error": tile[height + skip:, width:]}


def assert_png(path, min_width=300):
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.width >= min_width and np.asarray(image.convert("L")).std() > 5


def test_eval_video(capsys, tiny_config, tmp_path, make_frame):
    height, width, count = 96, 128, 8
    clip_path = write_mp4(tmp_path / "c.mp4", [make_frame(height, width, t / 2)
                                               for t in range(count)], fps=20)
    # Road in the bottom 16 rows (the ROI), sky above.
    label = sky_label(tmp_path / "l_gtFine_labelIds.png", height, width, road_blocks=8)
    out = tmp_path / "out"
    code, stdout, err = cli(capsys, "eval", clip_path, "--labels", label, "--codecs", "h264",
                            "--config", tiny_config, "--out", out, "--video", "--no-progress")
    assert code == 0, err
    assert "video_x264.mp4" in stdout
    frames, times, stream = decode(out / "video_x264.mp4")
    assert len(frames) == count
    assert frames[0].shape == (2 * height, 2 * width, 3)
    assert times == pytest.approx([i / 20 for i in range(count)], abs=1e-3)   # camera rate
    source = load_clip(str(clip_path), 0, count).frames
    roi = np.zeros((height, width), bool)
    roi[height - 16:] = True
    for tile, original in zip(frames, source, strict=True):
        q = quadrants(tile, height, width)
        below = original[height // 3:]
        assert metrics.psnr(below, q["original"]) > 32                 # within codec error
        assert 22 < metrics.psnr(below, q["reconstruction"]) < 60     # SAC's error + this file's
        inside, outside = roi[height // 3:], ~roi[height // 3:]
        green = q["overlay"][..., 1].astype(float) - below[..., 1]
        assert green[inside].mean() > 20 and abs(green[outside].mean()) < 3
        assert metrics.psnr(below, q["overlay"], outside) > 32
        assert q["error"].mean() < 70 < below.mean()                # small errors: dark
    data = json.loads((out / "results.json").read_text())
    assert data["videos"] == [str(out / "video_x264.mp4")]
    assert_png(out / "crop_x264.png")
    assert_png(out / "rd_x264.png")


def test_eval_without_video_writes_none(capsys, tiny_config, tmp_path, make_frame):
    clip_path = write_mp4(tmp_path / "c.mp4", [make_frame(64, 96, t) for t in range(3)])
    out = tmp_path / "out"
    code, _, err = cli(capsys, "eval", clip_path, "--codecs", "h264", "--config", tiny_config,
                       "--out", out, "--no-progress")
    assert code == 0, err
    assert not list(out.glob("*.mp4"))


def test_report_video_and_figures(capsys, tmp_path):
    expected = write_run_bag(tmp_path / "run")       # 80x48, 10 fps, frames 4, 5, 9 missing
    out = tmp_path / "rep"
    code, stdout, err = cli(capsys, "report", tmp_path / "run", "--out", out, "--model",
                            "none", "--video")
    assert code == 0, err
    assert f"{out}/cam_video.mp4" in stdout
    assert "sac report: done," in err
    frames, times, _ = decode(out / "cam_video.mp4")
    stamps = sorted(expected)
    assert len(frames) == len(stamps) == 9
    assert frames[0].shape == (96, 160, 3)
    # Each frame at its camera time: the dropped frames leave gaps.
    assert times == pytest.approx([(s - stamps[0]) / 1e9 for s in stamps], abs=1e-3)
    for tile, stamp in zip(frames, stamps, strict=True):
        original, decoded, mask, _ = expected[stamp]
        q = quadrants(tile, 48, 80)
        # Noisy 80x48 frames lose some colour to 4:2:0 chroma: 27 dB is that codec error.
        assert metrics.psnr(original[16:], q["original"]) > 27
        assert metrics.psnr(decoded[16:], q["reconstruction"]) > 27
        assert metrics.psnr(original[16:], q["error"]) < 15
    cam = json.loads((out / "report.json").read_text())["cameras"][0]
    assert cam["video"] == "cam_video.mp4"
    assert "<video controls src='cam_video.mp4'" in (out / "index.html").read_text()
    for png in cam["plots"].values():
        assert_png(out / png)
