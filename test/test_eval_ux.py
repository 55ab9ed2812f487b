"""A newcomer's `sac eval` / `sac report` / `sac reproduce` (issue 17, items 1 and 4):
an empty or tiny ROI gives a refused ROI BD-rate and a warning, never a traceback; piped
output gets plain progress lines; an earlier run's results are never written over."""

from __future__ import annotations

import csv
import io
import json
import math
import re

import numpy as np
import pytest
from bags_fixtures import make_kitti, write_mp4
from PIL import Image

from sac_ros.cli.main import main
from sac_ros.cli.progress import Progress
from sac_ros.core import metrics
from sac_ros.core.io import load_clip
from sac_ros.eval.coder import MIN_ROI_SHARE


def cli(capsys, *args) -> tuple[int, str, str]:
    """The `sac` entry point in-process; capsys's streams are not terminals."""
    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err



@pytest.fixture(scope="module")
def tiny_sample(tmp_path_factory):
    """tiny64x48.mp4: the sample clip shrunk to 64x48, where the default model finds no ROI."""
    clip = load_clip("sample", 0, 10)
    small = [np.asarray(Image.fromarray(f).resize((64, 48), Image.Resampling.BILINEAR))
             for f in clip.frames]
    return write_mp4(tmp_path_factory.mktemp("clip") / "tiny64x48.mp4", small)


def sky_label(path, height, width, road_blocks=0):
    """A Cityscapes labelIds PNG: sky everywhere but ``road_blocks`` 16x16 blocks of road
    at the bottom left."""
    ids = np.full((height, width), 23, np.uint8)
    ids[height - 16:, : 16 * road_blocks] = 7
    Image.fromarray(ids, mode="L").save(path)
    return path


def check_refused(out, err: str, stdout: str, share: float) -> None:
    """The ROI BD-rate refused in the printout, the JSON and the CSV, with one warning."""
    warnings = [line for line in err.splitlines() if line.startswith("sac eval: warning:")]
    assert len(warnings) == 1 and "ROI BD-rates refused" in warnings[0], err
    assert "Traceback" not in err
    assert "ROI BD-rate refused" in stdout and not re.search(r"ROI BD-rate [+-]\d", stdout)
    assert re.search(r"\d\.\d\d\* ", stdout)            # ROI columns marked in the table
    data = json.loads((out / "results.json").read_text())
    assert data["roi_share"] == pytest.approx(share) and data["roi_degenerate"] is True
    assert data["warnings"] and data["warnings"][0] in warnings[0]
    for bd in data["bd_rates"] + data["bd_rates_roi_qp"]:
        assert bd["roi_bd_rate_pct"] is None and bd["roi_bd_psnr_db"] is None
        assert bd["refused"] and bd["non_roi_bd_psnr_db"] is not None
    with open(out / "results.csv", newline="") as handle:
        assert {row["roi_degenerate"] for row in csv.DictReader(handle)} == {"True"}


def test_eval_with_no_roi_block_refuses_the_roi_bd_rate(capsys, tiny_config, tiny_sample,
                                                        tmp_path):
    """The issue's crash: the default model finds no ROI in a 64x48 clip (was
    LinAlgError: SVD did not converge). Also: progress lines, as stderr is no terminal."""
    out = tmp_path / "out"
    code, stdout, err = cli(capsys, "eval", tiny_sample, "--model", "default", "--codecs",
                            "h264", "--config", tiny_config, "--out", out)
    assert code == 0, err
    check_refused(out, err, stdout, 0.0)
    assert "no ROI block in any frame" in err
    progress = [line for line in err.splitlines() if re.match(r"sac eval: \d+% \(", line)]
    assert len(progress) >= 5, err
    assert re.match(r"sac eval: 10% \(\d+/\d+ frames\) after \d+ s, about .* left; x264: RD "
                    r"sweep, uniform$", progress[0]), progress[0]
    assert re.search(r"^sac eval: done, \d+ frames in ", err, re.M)
    assert f"; results go to {out}/" in err


def test_eval_with_a_tiny_roi_refuses_the_roi_bd_rate(capsys, tiny_config, tmp_path,
                                                      make_frame):
    """One ROI block of 80 (1.25%, under MIN_ROI_SHARE): the ROI figures are flagged."""
    clip = write_mp4(tmp_path / "c.mp4", [make_frame(128, 160, t / 3) for t in range(8)])
    label = sky_label(tmp_path / "l_gtFine_labelIds.png", 128, 160, road_blocks=1)
    out = tmp_path / "out"
    code, stdout, err = cli(capsys, "eval", clip, "--labels", label, "--codecs", "h264",
                            "--config", tiny_config, "--out", out, "--no-progress")
    assert code == 0, err
    assert 1 / 80 < MIN_ROI_SHARE
    check_refused(out, err, stdout, 1 / 80)
    assert "the ROI is 1.2% of the frame, under 5%" in err
    assert not re.search(r"sac eval: \d+%", err)          # --no-progress: no lines either


def test_bd_rate_of_a_curve_with_nan_points_is_nan():
    rates, quality = [1.0, 2.0, 4.0, 8.0], [30.0, 33.0, 36.0, 39.0]
    assert math.isnan(metrics.bd_rate(rates, quality, rates, [float("nan")] * 4))
    assert math.isnan(metrics.bd_quality(rates, [float("nan")] * 4, rates, quality))
    assert metrics.bd_rate(rates, quality, rates, quality) == pytest.approx(0, abs=1e-9)


# ------------------------------------------------------------------ progress lines

def test_progress_prints_a_line_per_tenth_when_not_on_a_terminal():
    stream = io.StringIO()
    bar = Progress("job", "frame", total=50, stream=stream)
    bar.stage("coding")
    for _ in range(60):       # more than the estimate: the total grows with the work
        bar.update(1)
    bar.close()
    lines = stream.getvalue().splitlines()
    assert [line.split(" (")[0] for line in lines[:10]] == [
        f"job: {p}%" for p in range(10, 101, 10)]
    assert lines[0].startswith("job: 10% (5/50 frames) after 0 s") and "; coding" in lines[0]
    assert lines[-1].startswith("job: done, 60 frames in ")


def test_progress_on_a_terminal_is_the_bar():
    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    bar = Progress("job", "frame", total=10, stream=stream)
    for _ in range(10):
        bar.update(1)
    bar.close()
    assert "10/10" in stream.getvalue() and "job: 10% (" not in stream.getvalue()


def test_reproduce_progress_lines_have_a_total(capsys, tmp_path):
    root = tmp_path / "kitti-step"
    make_kitti(root, [("train", "0000", 3)])
    code, _, err = cli(capsys, "reproduce", "--kitti-step", root, "--codecs", "h264",
                       "--preset", "ultrafast", "--out", tmp_path / "out")
    assert code == 0, err
    totals = {int(m) for m in re.findall(r"^sac reproduce: \d+% \(\d+/(\d+) frames\)", err,
                                         re.M)}
    assert totals and min(totals) >= 3 * 6, err   # 3 frames x (5 configs + a matched run...)


# ------------------------------------------------------------------ output folders

@pytest.mark.parametrize("command", [
    ["eval", "sample", "--frames", "2", "--no-progress"],
    ["report", "some.bag", "--no-progress"],
    ["reproduce", "--kitti-step", "nowhere", "--no-progress"],
])
def test_a_folder_with_results_is_not_written_over(capsys, tmp_path, command):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}\n")
    code, _, err = cli(capsys, *command, "--out", out)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0] == (f"sac {command[0]}: error: --out {out} already holds files (an "
                        "earlier run's results?); give another --out, or --overwrite to "
                        "replace them")
    assert (out / "results.json").read_text() == "{}\n"


def test_eval_overwrite_writes_over(capsys, tiny_config, tiny_sample, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.json").write_text("{}\n")
    code, stdout, err = cli(capsys, "eval", tiny_sample, "--codecs", "h264", "--config",
                            tiny_config, "--out", out, "--overwrite", "--no-progress")
    assert code == 0, err
    assert json.loads((out / "results.json").read_text())["frames"] == 10
    assert f"and PNGs in {out}/" in stdout
