"""The real ``sac`` console script, run as a subprocess."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import yaml
from PIL import Image

from sac_ros.core.classes import get_class_map
from sac_ros.core.io import load_clip
from sac_ros.core.mask import block_mask, roi_pixels

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RECORD_KEYS = ("method", "c_roi", "c_non", "kb_per_frame", "psnr", "ssim", "roi_psnr",
               "non_roi_psnr", "sa_psnr_region", "sa_psnr_stream", "sa_ssim_region",
               "sa_ssim_stream")


def assert_valid_png(path):
    assert path.is_file(), path
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.width > 200 and img.height > 100
        assert np.asarray(img.convert("L")).std() > 1  # not a blank canvas


def assert_one_line_error(result, fragment):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr and "Traceback" not in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sac eval: error: "), lines[0]
    assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def small_frames():
    """Three consecutive sample frames at 320x180 (3x downscaled)."""
    clip = load_clip("sample", 0, 3)
    return [np.ascontiguousarray(f[::3, ::3]) for f in clip.frames]


def cityscapes_sequence(root, frames, city="aachen", seq=0, first=17, split="train"):
    """Write frames as leftImg8bit_sequence/<split>/<city>/<city>_<seq>_<frame>_leftImg8bit.png."""
    folder = root / "leftImg8bit_sequence" / split / city
    folder.mkdir(parents=True)
    names = []
    for offset, frame in enumerate(frames):
        name = f"{city}_{seq:06d}_{first + offset:06d}"
        Image.fromarray(frame).save(folder / f"{name}_leftImg8bit.png")
        names.append(name)
    return root / "leftImg8bit_sequence", names


def cityscapes_labels(root, names, height, width, city="aachen", split="train"):
    """gtFine/<split>/<city>/<name>_gtFine_labelIds.png: sky on top, road below."""
    folder = root / "gtFine" / split / city
    folder.mkdir(parents=True)
    labels = np.full((height, width), 7, np.uint8)  # road
    labels[: height // 3] = 23  # sky
    labels[height // 3: height // 2, : width // 2] = 21  # vegetation
    paths = []
    for name in names:
        path = folder / f"{name}_gtFine_labelIds.png"
        Image.fromarray(labels, mode="L").save(path)
        paths.append(path)
    return root / "gtFine", paths, labels


# ------------------------------------------------------------------ the sample run

def test_eval_sample(run_sac, tiny_config, tmp_path):
    out = tmp_path / "out"
    result = run_sac("eval", "sample", "--frames", "4", "--codecs", "h264", "--no-progress",
                     "--out", out, "--config", tiny_config)
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert "SA-X264 18/27" in result.stdout
    assert "ROI BD-rate" in result.stdout

    data = json.loads((out / "results.json").read_text())
    assert (data["width"], data["height"], data["frames"]) == (960, 540, 4)
    records = data["records"]
    assert len(records) >= 3
    for record in records:
        for key in RECORD_KEYS:
            assert key in record, key
        assert all(key == key.lower() and " " not in key for key in record)
        assert record["codec"] == "h264"
        assert record["kb_per_frame"] > 0
        assert 25 < record["psnr"] < 60
        assert 0.5 < record["ssim"] <= 1

    by_mode = {(r["mode"], r["size_match_error_pct"] is not None): r for r in records}
    sac = by_mode[("dual_crf", False)]
    assert (sac["c_roi"], sac["c_non"]) == (18, 27)
    assert sac["roi_psnr"] > sac["non_roi_psnr"]
    matched = by_mode[("uniform", True)]
    assert matched["method"].endswith("(= size)")
    assert abs(matched["size_match_error_pct"]) <= 1
    assert matched["kb_per_frame"] == pytest.approx(sac["kb_per_frame"], rel=0.01)
    for record in records:
        if record["size_match_error_pct"] is not None:
            assert abs(record["size_match_error_pct"]) <= 1

    assert len(data["bd_rates"]) == 1 and data["bd_rates"][0]["delta_crf"] == 9

    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(records)
    assert list(rows[0]) == list(records[0])
    assert rows[0]["method"] == records[0]["method"]

    assert_valid_png(out / "rd_x264.png")
    assert_valid_png(out / "crop_x264.png")
    assert not (out / "rd_x265.png").exists()


# ------------------------------------------------------------------ image-folder input

def test_eval_cityscapes_sequence_folder(run_sac, tiny_config, tmp_path, small_frames):
    folder, _ = cityscapes_sequence(tmp_path / "data", small_frames)
    out = tmp_path / "out"
    result = run_sac("eval", folder, "--frames", "4", "--codecs", "h264", "--no-progress",
                     "--out", out, "--config", tiny_config)
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "results.json").read_text())
    assert (data["width"], data["height"], data["frames"]) == (320, 180, 3)
    assert data["fps"] == 17  # Cityscapes sequences
    assert "polygon" in data["mask"]
    assert_valid_png(out / "rd_x264.png")


def test_eval_folder_with_static_label(run_sac, tiny_config, tmp_path, small_frames):
    folder, names = cityscapes_sequence(tmp_path / "data", small_frames)
    _, paths, labels = cityscapes_labels(tmp_path / "data", names[1:2], 180, 320)
    out = tmp_path / "out"
    result = run_sac("eval", folder, "--frames", "3", "--codecs", "h264", "--no-progress",
                     "--labels", paths[0], "--out", out, "--config", tiny_config)
    assert result.returncode == 0, result.stderr
    data = json.loads((out / "results.json").read_text())
    assert "labels" in data["mask"]
    blocks = block_mask(roi_pixels(labels, get_class_map("cityscapes_label_ids")))
    share = np.repeat(np.repeat(blocks, 16, 0), 16, 1)[:180, :320].mean()
    for record in data["records"]:
        assert record["roi_share"] == pytest.approx(share)


# ------------------------------------------------------------------ bad input

def test_missing_input(run_sac, tiny_config, tmp_path):
    result = run_sac("eval", tmp_path / "nope.mp4", "--config", tiny_config, "--no-progress",
                     "--out", tmp_path / "out")
    assert_one_line_error(result, "does not exist")
    assert not (tmp_path / "out").exists()


def test_empty_file(run_sac, tiny_config, tmp_path):
    path = tmp_path / "empty.mp4"
    path.write_bytes(b"")
    result = run_sac("eval", path, "--config", tiny_config, "--no-progress",
                     "--out", tmp_path / "out")
    assert_one_line_error(result, "cannot read video")


def test_text_file_named_mp4(run_sac, tiny_config, tmp_path):
    path = tmp_path / "notes.mp4"
    path.write_text("this is not a video\n" * 20)
    result = run_sac("eval", path, "--config", tiny_config, "--no-progress",
                     "--out", tmp_path / "out")
    assert_one_line_error(result, "cannot read video")


def test_unknown_codec(run_sac, tiny_config, tmp_path):
    result = run_sac("eval", "sample", "--frames", "2", "--codecs", "vp9", "--config",
                     tiny_config, "--no-progress", "--out", tmp_path / "out")
    assert_one_line_error(result, "unknown codec 'vp9'")


def test_config_crf_60(run_sac, tiny_config, tmp_path):
    data = yaml.safe_load(tiny_config.read_text())
    data["eval"]["paper_pairs"]["h264"] = [18, 60]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    result = run_sac("eval", "sample", "--frames", "2", "--config", bad, "--no-progress",
                     "--out", tmp_path / "out")
    assert_one_line_error(result, "60 is outside 0-51")


def test_config_not_yaml(run_sac, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("eval: [unclosed\n  frames: : 3\n")
    result = run_sac("eval", "sample", "--config", bad, "--no-progress",
                     "--out", tmp_path / "out")
    assert_one_line_error(result, "not valid YAML")


def test_labels_of_another_size(run_sac, tiny_config, tmp_path):
    frames = [np.full((48, 64, 3), 60 + 40 * i, np.uint8) for i in range(2)]
    folder, names = cityscapes_sequence(tmp_path / "data", frames)
    labels, _, _ = cityscapes_labels(tmp_path / "data", names, 40, 56)
    result = run_sac("eval", folder, "--labels", labels, "--config", tiny_config,
                     "--no-progress", "--out", tmp_path / "out")
    assert_one_line_error(result, "56x40 but the frame is 64x48")


def test_folder_without_images(run_sac, tiny_config, tmp_path):
    (tmp_path / "empty_dir").mkdir()
    result = run_sac("eval", tmp_path / "empty_dir", "--config", tiny_config, "--no-progress",
                     "--out", tmp_path / "out")
    assert_one_line_error(result, "no images")


def test_too_few_frames(run_sac, tiny_config, tmp_path):
    result = run_sac("eval", "sample", "--frames", "1", "--config", tiny_config,
                     "--no-progress", "--out", tmp_path / "out")
    assert_one_line_error(result, "at least 2")


def test_version_and_help(run_sac):
    result = run_sac("--version")
    assert result.returncode == 0 and "sac_ros" in result.stdout
    result = run_sac("eval", "--help")
    assert result.returncode == 0 and "--labels" in result.stdout
    result = run_sac()
    assert result.returncode != 0 and "Traceback" not in result.stderr


@pytest.mark.parametrize("option", ["--json", "--csv"])
def test_output_file_in_a_missing_folder_fails_before_the_run(run_sac, tiny_config, tmp_path,
                                                               option):
    missing = tmp_path / "missing" / "dir" / "x.out"
    result = run_sac("eval", "sample", "--frames", "2", "--codecs", "h264", "--config",
                     tiny_config, "--no-progress", "--out", tmp_path / "out", option, missing)
    assert_one_line_error(result, f"{option} {missing}: folder {missing.parent} does not exist")
    assert not (tmp_path / "out").exists()  # nothing ran


def test_output_folder_that_is_a_file_fails_before_the_run(run_sac, tiny_config, tmp_path):
    (tmp_path / "taken").write_text("a file\n")
    for out in (tmp_path / "taken", tmp_path / "taken" / "sub"):
        result = run_sac("eval", "sample", "--frames", "2", "--target-mbps", "1",
                         "--config", tiny_config, "--no-progress", "--out", out)
        assert_one_line_error(result, f"--out {out}: ")
