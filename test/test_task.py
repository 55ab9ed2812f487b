"""Task BD-rate (issue 20 item 1): perception accuracy on the reconstructions, scored
against labels or the segmenter's output on the original frames, and the Bjontegaard
rate at equal accuracy against uniform coding. Real x264 through ClipCoder, the real
shipped segmenter on ONNX Runtime, real sample footage, shrunk so CI stays fast."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from bags_fixtures import write_mp4
from PIL import Image

from sac_ros.cli.main import main
from sac_ros.config import encoder_settings, load_core_config
from sac_ros.core import metrics
from sac_ros.core.errors import SacError
from sac_ros.core.io import load_clip
from sac_ros.eval.coder import ClipCoder, sweep
from sac_ros.eval.task import TaskMeter, pareto, scored_indexes, task_bd
from sac_ros.segmentation.loader import load_segmenter

SIZE = (320, 180)        # the default model still finds road, cars and sky at this size
CRFS = [19, 25, 31, 37]


@pytest.fixture(scope="module")
def scene():
    """Six frames of a real clip, the shipped segmenter, its block masks, and the uniform
    x264 anchor curve scored against the segmenter on the originals."""
    clip = load_clip("sample:challenge01", 0, 6)
    frames = [np.asarray(Image.fromarray(f).resize(SIZE, Image.Resampling.BILINEAR))
              for f in clip.frames]
    segmenter = load_segmenter(model="default")
    blocks = [segmenter.block_roi(f) for f in frames]
    assert 0.2 < np.mean([b.mean() for b in blocks]) < 0.8   # a real ROI, and a real non-ROI
    settings = encoder_settings(load_core_config(), None, 25.0)
    meter = TaskMeter(segmenter, frames, range(len(frames)))
    coder = ClipCoder(frames, blocks, settings)
    coder.task = meter
    anchor = sweep(coder, "h264", CRFS, None)
    yield frames, segmenter, blocks, settings, meter, anchor
    segmenter.close()


@pytest.fixture(scope="module")
def eval_config(tiny_config, tmp_path_factory):
    """tiny_config with a per-frame mask and a 5% size match: six small frames cannot
    always be matched within 1%, and these tests are about the task measurement."""
    import yaml

    config = yaml.safe_load(tiny_config.read_text())
    config["mask"]["segment_every"] = 1
    config["eval"]["size_tolerance"] = 0.05
    path = tmp_path_factory.mktemp("task_config") / "eval.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_anchor_loses_accuracy_as_the_crf_rises(scene):
    """The measurement sees coding damage at all: the uniform curve's accuracy falls from
    its best CRF to its worst, and stays below the original frames' (1.0)."""
    anchor = scene[5]
    assert anchor[0].kb_per_frame > anchor[-1].kb_per_frame
    for key in ("task_miou", "task_roi_iiou"):
        values = [getattr(p, key) for p in anchor]
        assert all(0.5 < v < 1.0 for v in values), values
        assert values[0] > values[-1] + 0.01, values


def test_a_non_roi_that_loses_nothing_gives_a_task_bd_rate_of_zero(scene):
    """The issue's acceptance test: coding the non-ROI as well as the ROI (roi_qp, offset
    0: the non-ROI blocks at the ROI's QP) gives the anchor's reconstructions, hence its
    accuracy at its bytes, and a task BD-rate of 0."""
    frames, _, blocks, settings, meter, anchor = scene
    coder = ClipCoder(frames, blocks, settings)
    coder.task = meter
    lossless_non_roi = sweep(coder, "h264", CRFS, 0.0, "roi_qp")
    assert [p.task_roi_iiou for p in lossless_non_roi] == [p.task_roi_iiou for p in anchor]
    bd = task_bd(anchor, lossless_non_roi, "h264", 0.0, "roi_qp", meter.reference)
    assert bd.task_bd_rate_miou_pct == pytest.approx(0.0, abs=0.5)
    assert bd.task_bd_rate_roi_iiou_pct == pytest.approx(0.0, abs=0.5)
    assert bd.bd_roi_iiou == pytest.approx(0.0, abs=1e-4)


def test_a_mode_that_damages_the_roi_gives_a_clearly_positive_task_bd_rate(scene):
    """The true ROI's blocks 20 QP worse than the rest (roi_qp on the inverted mask): the
    same accuracy costs clearly more bytes, and at equal bytes the ROI iIoU drops."""
    frames, _, blocks, settings, meter, anchor = scene
    coder = ClipCoder(frames, [~b for b in blocks], settings)
    coder.task = meter
    damaged = sweep(coder, "h264", CRFS, 20.0, "roi_qp")
    bd = task_bd(anchor, damaged, "h264", 20.0, "roi_qp", meter.reference)
    assert bd.task_bd_rate_roi_iiou_pct is not None and bd.task_bd_rate_roi_iiou_pct > 20.0, bd
    assert bd.bd_roi_iiou < -0.005, bd


def test_labels_and_original_frames_are_both_references(scene):
    """Labels that say what the segmenter says on the originals give the same ROI iIoU as
    the original-frame reference, and the ROI / non-ROI mIoU; labels that disagree
    score lower."""
    frames, segmenter, blocks, settings, meter, _ = scene
    truth = {i: segmenter.predict(f).roi for i, f in enumerate(frames)}
    by_labels = TaskMeter(segmenter, frames, range(len(frames)), labels=truth)
    assert by_labels.reference == "labels" and meter.reference == "original"
    coder = ClipCoder(frames, blocks, settings)
    run = coder.run("h264", "uniform", 31, capture=range(len(frames)))
    scores = {name: m.start() for name, m in (("labels", by_labels), ("original", meter))}
    for score in scores.values():
        for index, rgb in run.captured.items():
            score.add(index, rgb)
    miou_labels, iiou_labels = scores["labels"].accuracy()
    _, iiou_original = scores["original"].accuracy()
    assert iiou_labels == pytest.approx(iiou_original, abs=1e-12)
    assert miou_labels == pytest.approx(metrics.miou(scores["original"].roi), abs=1e-12)
    shifted = {i: np.roll(roi, 40, axis=1) for i, roi in truth.items()}
    wrong = TaskMeter(segmenter, frames, range(len(frames)), labels=shifted).start()
    for index, rgb in run.captured.items():
        wrong.add(index, rgb)
    assert wrong.accuracy()[1] < iiou_labels - 0.02


def test_only_the_chosen_frames_are_segmented(scene):
    frames, segmenter, *_ = scene
    assert scored_indexes(60, 20)[:3] == [0, 3, 6] and scored_indexes(60, 20)[-1] == 59
    assert len(scored_indexes(60, 20)) == 20 and scored_indexes(6, None) == list(range(6))
    meter = TaskMeter(segmenter, frames, [0, 5])
    score = meter.start()
    for index, frame in enumerate(frames):
        score.add(index, frame)
    assert score.frames == 2 and score.accuracy() == (1.0, 1.0)   # originals vs themselves


def test_pareto_drops_points_a_cheaper_point_matches():
    rates, accuracy = pareto([4.0, 1.0, 2.0, 3.0], [0.95, 0.90, 0.96, 0.94])
    assert rates == [1.0, 2.0] and accuracy == [0.90, 0.96]



def test_sac_eval_reports_a_task_bd_rate_for_every_mode(capsys, eval_config, scene, tmp_path):
    """`sac eval`: task_bd_rate entries in the JSON for every mode (dual_crf per dCRF,
    roi_qp per offset, per codec) with both figures, task columns in the CSV, the
    printed lines and the RD plot."""
    import yaml

    frames = scene[0]
    config = yaml.safe_load(eval_config.read_text())
    config["eval"]["delta_crfs"] = [5, 9]
    config["eval"]["crf_sweep"] = {"h264": CRFS, "hevc": [c + 5 for c in CRFS]}
    config["eval"]["task_frames"] = 4
    config_path = tmp_path / "c.yaml"
    config_path.write_text(yaml.safe_dump(config))
    clip = write_mp4(tmp_path / "clip.mp4", frames)
    out = tmp_path / "out"
    code = main([str(a) for a in ("eval", clip, "--model", "default", "--config", config_path,
                                  "--out", out, "--no-progress")])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    stdout = captured.out
    data = json.loads((out / "results.json").read_text())
    assert data["task"]["reference"] == "original" and data["task"]["frames_scored"] == 4
    expected = {(codec, "dual_crf", d) for codec in ("h264", "hevc") for d in (5.0, 9.0)}
    expected |= {("h264", "roi_qp", 4.6), ("hevc", "roi_qp", 9.0)}
    entries = {(e["codec"], e["mode"], e["delta"]): e for e in data["task_bd_rate"]}
    assert set(entries) == expected
    for entry in entries.values():   # a figure, or a note that says why there is none
        assert entry["frames_scored"] == 4
        for name, key in (("mIoU", "task_bd_rate_miou_pct"),
                          ("ROI iIoU", "task_bd_rate_roi_iiou_pct")):
            assert (entry[key] is not None) != any(n.startswith(name + ":")
                                                   for n in entry["notes"]), entry
    for codec in ("h264", "hevc"):
        assert any(e["task_bd_rate_roi_iiou_pct"] is not None
                   for key, e in entries.items() if key[0] == codec), entries
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert all(0.5 < float(r["task_miou"]) <= 1.0 and 0.5 < float(r["task_roi_iiou"]) <= 1.0
               for r in rows)
    assert "Task BD-rate against uniform" in stdout and "ROI iIoU" in stdout
    assert (out / "task_rd_x264.png").stat().st_size > 10_000
    anchor = data["rd_points"]["h264 uniform"]     # the points the BD-rates are taken on
    assert [p["c_roi"] for p in anchor] == CRFS and all(0.5 < p["task_roi_iiou"] <= 1.0
                                                        for p in anchor)


def test_sac_eval_with_labels_scores_against_them_and_none_switches_it_off(
        capsys, eval_config, scene, tmp_path):
    frames, segmenter, *_ = scene
    folder, labels = tmp_path / "frames", tmp_path / "labels"
    folder.mkdir()
    labels.mkdir()
    for index, frame in enumerate(frames[:3]):
        stem = f"city_000000_{index:06d}"
        Image.fromarray(frame).save(folder / f"{stem}_leftImg8bit.png")
        ids = np.where(segmenter.predict(frame).roi, 7, 23).astype(np.uint8)  # road / sky
        Image.fromarray(ids, mode="L").save(labels / f"{stem}_gtFine_labelIds.png")
    out = tmp_path / "out"
    code = main([str(a) for a in ("eval", folder, "--labels", labels, "--codecs", "h264",
                                  "--roi-qp-offsets", "6", "--config", eval_config, "--out",
                                  out, "--no-progress", "--perception-model", "default")])
    assert code == 0, capsys.readouterr().err
    data = json.loads((out / "results.json").read_text())
    assert data["task"]["reference"] == "labels" and data["task"]["miou_over"] == "ROI / non-ROI"
    assert {(e["mode"], e["delta"]) for e in data["task_bd_rate"]} == {("dual_crf", 9.0),
                                                                        ("roi_qp", 6.0)}
    assert "against the labels" in capsys.readouterr().out
    out2 = tmp_path / "off"
    code = main([str(a) for a in ("eval", folder, "--labels", labels, "--codecs", "h264",
                                  "--roi-qp-offsets", "6", "--config", eval_config, "--out",
                                  out2, "--no-progress", "--perception-model", "none")])
    assert code == 0
    data = json.loads((out2 / "results.json").read_text())
    assert data["task"] is None and data["task_bd_rate"] == []
    assert "Task BD-rate" not in capsys.readouterr().out


def test_task_frames_must_be_a_positive_whole_number(tmp_path):
    import yaml
    from conftest import SHIPPED_CONFIG

    data = yaml.safe_load(SHIPPED_CONFIG.read_text())
    data["eval"]["task_frames"] = 0
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(SacError, match="eval.task_frames"):
        load_core_config(path)


def test_sac_reproduce_reports_the_task_bd_rate_against_the_labels(tmp_path, capsys):
    """`sac reproduce --model`: task curves summed over two Cityscapes snippets, scored on
    the labelled frames against the labels. The uniform CRF 23 and SA 18/27 points equal
    Table IV's figures of the same runs, measured by the other path (reproduce._segment)."""
    from bags_fixtures import make_cityscapes, tiny_segmenter

    root = tmp_path / "cityscapes"
    make_cityscapes(root, [("train", "aachen", 0, 0, 5, {3}), ("val", "bonn", 2, 10, 4, {1})])
    out = tmp_path / "out"
    code = main([str(a) for a in ("reproduce", "--cityscapes", root, "--size", "native",
                                  "--model", tiny_segmenter(tmp_path / "rule.onnx"),
                                  "--codecs", "h264", "--preset", "ultrafast", "--out", out,
                                  "--no-progress")])
    stdout = capsys.readouterr().out
    assert code == 0
    result = json.loads((out / "results.json").read_text())
    entries = {(e["mode"], e["delta"]): e for e in result["task_bd_rate"]}
    assert set(entries) == {("dual_crf", 5.0), ("dual_crf", 9.0), ("roi_qp", 4.6)}
    assert all(e["reference"] == "labels" and e["frames_scored"] == 2
               for e in entries.values())
    rows = {r["method"]: r for r in result["rows"]}
    uniform = {round(p["kb_per_frame"], 6): p for p in result["task_points"]["h264 uniform 0"]}
    row = rows["H.264 crf 23"]
    point = uniform[round(row["kb_per_frame"], 6)]
    assert point["task_roi_iiou"] == pytest.approx(row["iiou_vs_labels"], abs=1e-12)
    assert point["task_miou"] == pytest.approx(row["miou_vs_labels"], abs=1e-12)
    sa = rows["SA-X264 18/27"]
    first = result["task_points"]["h264 dual_crf 9"][0]          # CRF 18 / 27
    assert first["kb_per_frame"] == pytest.approx(sa["kb_per_frame"])
    assert first["task_roi_iiou"] == pytest.approx(sa["iiou_vs_labels"], abs=1e-12)
    assert "Task BD-rate against uniform" in stdout and "roi_qp offset +4.6" in stdout


def test_sac_eval_sweeps_the_task_aware_modes_too(capsys, eval_config, scene, tmp_path):
    """--nonroi-filter and --class-qp (issue 20's modes) get curves of their own, hence a
    ROI and a task BD-rate entry each, named by their variant; the plain modes' entries
    are the same as without them."""
    clip = write_mp4(tmp_path / "clip.mp4", scene[0])
    common = ("eval", clip, "--model", "default", "--codecs", "h264", "--config", eval_config,
              "--no-progress")
    plain, aware = tmp_path / "plain", tmp_path / "aware"
    assert main([str(a) for a in (*common, "--out", plain)]) == 0
    assert main([str(a) for a in (*common, "--out", aware, "--nonroi-filter", "blur",
                                  "--nonroi-filter-strength", "2", "--class-qp")]) == 0
    capsys.readouterr()
    plain_bd, aware_bd = (json.loads((out / "results.json").read_text())["task_bd_rate"]
                          for out in (plain, aware))
    names = {(e["mode"], e["variant"]) for e in aware_bd}
    assert names == {("dual_crf", ""), ("roi_qp", ""), ("dual_crf", "blur sigma 2 px"),
                     ("roi_qp", "blur sigma 2 px"), ("roi_qp", "classes")}, names
    assert [e for e in aware_bd if not e["variant"]] == plain_bd
    roi_bd = json.loads((aware / "results.json").read_text())
    assert {(b["mode"], b["variant"]) for b in roi_bd["bd_rates"] + roi_bd["bd_rates_roi_qp"]
            } == names
