"""The segmenter interface on real ONNX Runtime: geometry, outputs, config, bad input.

A tiny hand-built ONNX model makes the geometry checkable exactly: its ROI logit is
the red channel minus 128, pooled over 8x8 cells (class head) and max-pooled over
16x16 cells (block head), so a bright-red rectangle must come out as exactly the
macroblock mask of that rectangle.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnx
import pytest
import yaml
from onnx import TensorProto, helper

from sac_ros.config import config_dir, load_segmentation_config
from sac_ros.core.errors import SacError
from sac_ros.core.mask import block_mask
from sac_ros.core.metrics import binary_iou
from sac_ros.segmentation import DEFAULT_MODEL, ClassMapAdapter, load_segmenter
from sac_ros.segmentation.backends.ort_backend import OnnxRuntimeBackend
from sac_ros.segmentation.evalset import load_labels, read_frames
from sac_ros.segmentation.loader import choose_backend
from sac_ros.segmentation.segmenter import (
    Segmenter,
    argmax_of_upsampled_planes,
    check_rgb,
    upsampled_argmax,
)


def red_roi_model(path, with_block_head=True, classes=2):
    """ONNX: class logits [-p, p] (binary: 1 = ROI) with p = avgpool8(R - 128)."""
    nodes = [
        helper.make_node("Slice", ["rgb", "c0", "c1", "axis1"], ["red"]),
        helper.make_node("Sub", ["red", "mid"], ["centred"]),
        helper.make_node("AveragePool", ["centred"], ["pooled"], kernel_shape=[8, 8],
                         strides=[8, 8]),
        helper.make_node("Neg", ["pooled"], ["negated"]),
        helper.make_node("Concat", ["negated", "pooled"] + ["pooled"] * (classes - 2),
                         ["class_logits"], axis=1),
    ]
    outputs = [helper.make_tensor_value_info("class_logits", TensorProto.FLOAT,
                                             [1, classes, "h8", "w8"])]
    if with_block_head:
        nodes.append(helper.make_node("MaxPool", ["centred"], ["block_logits"],
                                      kernel_shape=[16, 16], strides=[16, 16]))
        outputs.append(helper.make_tensor_value_info("block_logits", TensorProto.FLOAT,
                                                     [1, 1, "h16", "w16"]))
    inits = [helper.make_tensor("c0", TensorProto.INT64, [1], [0]),
             helper.make_tensor("c1", TensorProto.INT64, [1], [1]),
             helper.make_tensor("axis1", TensorProto.INT64, [1], [1]),
             helper.make_tensor("mid", TensorProto.FLOAT, [], [128.0])]
    graph = helper.make_graph(nodes, "red_roi", [helper.make_tensor_value_info(
        "rgb", TensorProto.FLOAT, [1, 3, "h", "w"])], outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    for key, value in {"sac_class_map": "binary", "sac_input": "rgb255",
                       "sac_stride": "32"}.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def red_frame(height, width, box):
    """Dark frame with a bright-red rectangle box = (top, bottom, left, right)."""
    frame = np.full((height, width, 3), 40, np.uint8)
    top, bottom, left, right = box
    frame[top:bottom, left:right, 0] = 255
    truth = np.zeros((height, width), bool)
    truth[top:bottom, left:right] = True
    return frame, truth


@pytest.fixture(scope="module")
def red_model(tmp_path_factory):
    return red_roi_model(tmp_path_factory.mktemp("onnx") / "red.onnx")


@pytest.fixture(scope="module")
def config():
    return load_segmentation_config()


@pytest.mark.parametrize("size", [(541, 962), (540, 960), (720, 1280), (64, 48)])
def test_block_head_lands_exactly_on_frame_macroblocks(red_model, config, size):
    height, width = size
    box = (height // 3 + 5, height - 7, width // 4 + 3, width - 1)  # odd, edge-touching
    frame, truth = red_frame(height, width, box)
    segmenter = load_segmenter(config, red_model)
    assert segmenter.input_size == "native"
    blocks = segmenter.block_roi(frame)
    assert blocks.shape == (-(-height // 16), -(-width // 16))
    np.testing.assert_array_equal(blocks, block_mask(truth))
    # the MaskSource adapter hands the core exactly the same blocks
    pixels = segmenter.mask_source().roi_pixels(0, frame)
    assert pixels.shape == truth.shape
    np.testing.assert_array_equal(block_mask(pixels), blocks)


def test_pixel_outputs_at_frame_resolution(red_model, config):
    frame, truth = red_frame(541, 962, (200, 480, 240, 800))
    segmenter = load_segmenter(config, red_model)
    prediction = segmenter.predict(frame)
    probability = prediction.roi_probability
    assert probability.shape == truth.shape and probability.dtype == np.float32
    assert 0.0 <= probability.min() and probability.max() <= 1.0
    assert probability[300, 500] > 0.99 and probability[50, 50] < 0.01
    classes = segmenter.class_map(frame)
    assert classes.shape == truth.shape and classes.dtype == np.uint8
    assert set(np.unique(classes)) == {0, 1}
    assert binary_iou(truth, classes == 1) > 0.98
    assert binary_iou(truth, prediction.roi) > 0.98
    np.testing.assert_array_equal(segmenter.roi_probability(frame), probability)


def test_resized_input_keeps_every_roi_block(red_model, config):
    frame, truth = red_frame(541, 962, (200, 480, 240, 800))
    segmenter = load_segmenter(config, red_model, input_size=(512, 256))
    blocks = segmenter.block_roi(frame)
    expected = block_mask(truth)
    assert blocks.shape == expected.shape
    assert not (expected & ~blocks).any()  # a block overlapping a ROI cell stays ROI
    # 512x256 cells are ~2 frame blocks wide: at most one ring of cells is added
    # ((280 + 64) * (560 + 64)) / (280 * 560) -> IoU >= 0.73
    assert binary_iou(expected, blocks) > 0.73


def test_model_without_block_head_uses_the_macroblock_filter(tmp_path, config):
    model = red_roi_model(tmp_path / "pixels_only.onnx", with_block_head=False)
    frame, truth = red_frame(544, 960, (160, 480, 320, 800))  # 8-aligned: exact pixels
    segmenter = load_segmenter(config, model)
    assert segmenter.block_output is None
    np.testing.assert_array_equal(segmenter.block_roi(frame), block_mask(truth))


def test_class_count_mismatch_is_a_clear_error(tmp_path, config):
    model = red_roi_model(tmp_path / "three.onnx", classes=3)
    with pytest.raises(SacError, match="outputs 3 classes but class map 'binary' has 2"):
        load_segmenter(config, model)
    cfg = dataclasses.replace(config, class_map="cityscapes_train_ids")
    with pytest.raises(SacError, match="outputs 2 classes but class map 'cityscapes_train_ids'"
                                       " has 19.*binary"):
        load_segmenter(cfg, red_roi_model(tmp_path / "two.onnx"))


@pytest.mark.parametrize("frame, fragment", [
    (np.zeros((64, 64), np.uint8), "shape (64, 64)"),
    (np.zeros((64, 64, 4), np.uint8), "RGBA"),
    (np.zeros((64, 64, 3), np.float32), "float32"),
    (np.zeros((8, 8, 3), np.uint8), "too small"),
    ([[1, 2, 3]], "numpy array"),
])
def test_non_rgb_frames_are_refused_with_a_hint(frame, fragment):
    with pytest.raises(SacError, match="RGB|small|numpy") as info:
        check_rgb(frame)
    assert fragment in str(info.value)


def test_backend_from_extension_and_missing_files(tmp_path, config):
    assert choose_backend(DEFAULT_MODEL) == "onnxruntime"
    assert choose_backend(tmp_path / "a.engine") == "tensorrt"
    assert choose_backend(tmp_path / "a.plan") == "tensorrt"
    assert choose_backend(tmp_path / "a.pt") == "torch"
    assert choose_backend(tmp_path / "a.bin", "onnxruntime") == "onnxruntime"
    with pytest.raises(SacError, match="cannot tell the backend"):
        choose_backend(tmp_path / "a.bin")
    with pytest.raises(SacError, match="does not exist"):
        load_segmenter(config, tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(SacError, match="onnxruntime cannot load"):
        load_segmenter(config, junk)


def test_foreign_model_needs_a_class_map_and_gets_normalised(tmp_path, config):
    model = onnx.load(str(red_roi_model(tmp_path / "foreign.onnx")))
    del model.metadata_props[:]
    onnx.save(model, str(tmp_path / "foreign.onnx"))
    with pytest.raises(SacError, match="set class_map"):
        load_segmenter(config, tmp_path / "foreign.onnx")
    segmenter = load_segmenter(dataclasses.replace(config, class_map="binary"),
                               tmp_path / "foreign.onnx")
    # ImageNet normalisation now applies: 255 red -> (255 - 123.7) / 58.4 = 2.25 < 128,
    # so the red test model sees no ROI at all.
    frame, _ = red_frame(128, 128, (32, 96, 32, 96))
    assert not segmenter.block_roi(frame).any()


def test_tensorrt_absence_names_the_fallback(tmp_path, config):
    pytest.importorskip("onnxruntime")
    try:
        import pycuda.driver  # noqa: F401
        import tensorrt  # noqa: F401
        has_trt = True
    except ImportError:
        has_trt = False
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\0" * 64)
    with pytest.raises(SacError) as info:
        load_segmenter(config, engine)
    message = str(info.value)
    assert "onnxruntime" in message
    if has_trt:  # a GPU box: the junk engine is refused as incompatible instead
        assert "sac export" in message
    else:
        assert "tensorrt" in message


def test_default_model_is_small_and_self_describing(config):
    assert DEFAULT_MODEL.is_file()
    assert DEFAULT_MODEL.stat().st_size < 4 * 1024 * 1024
    backend = OnnxRuntimeBackend(DEFAULT_MODEL)
    assert backend.metadata["sac_class_map"] == "four_class"
    assert backend.metadata["sac_input"] == "rgb255"
    assert backend.output_names == ["class_logits", "block_logits"]
    assert backend.input_spec.fixed is None  # dynamic H and W
    segmenter = Segmenter(backend, ClassMapAdapter("four_class"))
    frame = np.random.default_rng(0).integers(0, 256, (541, 962, 3), dtype=np.uint8)
    assert segmenter.block_roi(frame).shape == (34, 61)
    assert segmenter.class_map(frame).max() <= 3


def test_shipped_segmentation_config_and_bad_values(tmp_path):
    cfg = load_segmentation_config()
    assert cfg.model == "default" and cfg.backend == "auto"
    assert cfg.train.lr == 3e-4 and cfg.train.betas == (0.9, 0.999)
    assert cfg.train.weight_decay == 1e-5
    shipped = yaml.safe_load((config_dir() / "segmentation.yaml").read_text())
    bad = [({"backend": "tflite"}, "backend must be"), ({"input_size": [1000, 512]}, "multiples"),
           ({"roi_threshold": 1.5}, "roi_threshold"), ({"class_map": "coco"}, "class_map"),
           ({"threads": -1}, "threads"), ({"surprise": 1}, "unknown key"),
           ({"train": {"lr": 0}}, "train.lr"), ({"train": {"crop": [100, 64]}}, "crop"),
           ({"train": {"depth": 9}}, "train.depth"), ({"train": {"depth": 1.5}}, "train.depth"),
           ({"train": {"shadows": 2}}, "train.shadows"), ({"train": {"ema": 1}}, "train.ema"),
           ({"train": {"lr_schedule": "step"}}, "train.lr_schedule"),
           ({"export": {"min_shape": [2048, 1024]}}, "min <= opt <= max"),
           ({"normalize": {"std": [0, 1, 1]}}, "positive")]
    for override, fragment in bad:
        data = dict(shipped, **override)
        path = tmp_path / "seg.yaml"
        path.write_text(yaml.safe_dump(data))
        with pytest.raises(SacError, match=fragment):
            load_segmentation_config(path)


def test_evaluation_set_is_real_and_split_by_time():
    frames = load_labels()
    assert len(frames) >= 30
    clips = {f.clip for f in frames}
    assert len(clips) >= 5
    heldout = [f for f in frames if f.split == "heldout"]
    assert len(heldout) >= 24 and len({f.clip for f in heldout}) >= 6
    for clip in clips:  # held-out frames come from a later time range of each clip
        train_idx = [f.index for f in frames if f.clip == clip and f.split == "train"]
        held_idx = [f.index for f in frames if f.clip == clip and f.split == "heldout"]
        if train_idx and held_idx:
            assert min(held_idx) > max(train_idx)
    label = frames[0].label_map()
    assert label.shape == (frames[0].height, frames[0].width)
    assert set(np.unique(label)) <= {0, 1, 2, 3} and len(np.unique(label)) >= 3


def test_block_iiou_interval_brackets_the_score_and_narrows_with_frames():
    from sac_ros.segmentation.scoring import Scores

    rng = np.random.default_rng(3)

    def scored(frames):
        scores = Scores(four_class=False)
        for _ in range(frames):
            truth = np.where(rng.random((64, 96)) < 0.5, 0, 2).astype(np.uint8)
            truth[: rng.integers(8, 56)] = 3  # frames differ in how much ROI they hold
            roi = truth == 0
            roi_blocks = block_mask(roi) ^ (rng.random(block_mask(roi).shape) < 0.15)
            scores.add(truth, roi, roi_blocks)
        return scores

    few, many = scored(6), scored(60)
    for scores in (few, many):
        low, high = scores.block_iiou_interval()
        assert low < scores.summary()["block_iiou"] < high
    assert np.subtract(*many.block_iiou_interval()[::-1]) < \
        np.subtract(*few.block_iiou_interval()[::-1])
    # identical frames leave nothing to resample
    same = Scores(four_class=False)
    truth = np.zeros((32, 32), np.uint8)
    truth[:16] = 3
    for _ in range(5):
        same.add(truth, truth == 0, np.array([[False, False], [True, False]]))
    assert same.block_iiou_interval() == (0.5, 0.5)
    with pytest.raises(SacError, match="between 0 and 1"):
        same.block_iiou_interval(level=95)


def test_evaluation_frames_decode_from_the_sample_clips(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    frame = min(load_labels(), key=lambda f: f.index)  # the earliest frame decodes quickly
    (rgb,) = read_frames([frame])
    assert rgb.shape == (frame.height, frame.width, 3) and rgb.dtype == np.uint8
    assert rgb.std() > 10
    cached = list(tmp_path.rglob("*.png"))
    assert len(cached) == 1
    (again,) = read_frames([frame])
    np.testing.assert_array_equal(rgb, again)
    with pytest.raises(SacError, match="unknown split"):
        load_labels(split="test")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"frames": [{"clip": "x", "index": 0}]}))
    with pytest.raises(SacError, match="malformed"):
        load_labels(bad)


@pytest.mark.parametrize("channels,rows,cols,width,height,box", [
    (4, 64, 128, 1024, 512, (0, 0, 128, 64)),         # the default model at 1024x512
    (19, 34, 60, 960, 540, (0, 0, 60, 33.75)),        # padded input: the frame is a sub-box
    (34, 20, 30, 333, 201, (0, 0, 30, 20)),           # odd sizes, Cityscapes labelIds
    (2, 5, 7, 40, 40, (0.5, 0.2, 6.1, 4.9)),          # a box off the origin
])
def test_class_map_upsampling_matches_upsampling_every_plane(channels, rows, cols, width,
                                                             height, box):
    rng = np.random.default_rng(channels)
    # noise (a boundary at nearly every cell) and smooth blobs (few boundaries)
    noise = rng.normal(0, 3, (channels, rows, cols)).astype(np.float32)
    yy, xx = np.mgrid[0:rows, 0:cols]
    blobs = np.stack([np.sin(xx / (3 + c) + c) + np.cos(yy / (2 + c)) for c in range(channels)])
    for logits in (noise, blobs.astype(np.float32)):
        fast = upsampled_argmax(logits, width, height, box)
        assert fast.shape == (height, width) and fast.dtype == np.uint8
        assert np.array_equal(fast, argmax_of_upsampled_planes(logits, width, height, box))


def test_class_map_of_the_default_model_on_real_frames():
    segmenter = load_segmenter()
    rgb = read_frames(load_labels(None, "heldout"))[0]
    prediction = segmenter.predict(rgb)
    logits = prediction._class_logits
    box = prediction._geo.valid_box(*logits.shape[1:])
    want = argmax_of_upsampled_planes(logits, rgb.shape[1], rgb.shape[0], box)
    assert np.array_equal(prediction.class_map, want)
    assert len(np.unique(want)) >= 3  # a real scene, with class boundaries to get right
