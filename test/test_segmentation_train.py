"""`sac train` / `sac export` with real torch on tiny fixtures in the real folder layouts."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch", reason="training needs torch (pip install 'sac_ros[train]')")
pytest.importorskip("cityscapesscripts", reason="label definitions come from cityscapesscripts")

from sac_ros.config import load_segmentation_config  # noqa: E402
from sac_ros.core.errors import SacError  # noqa: E402
from sac_ros.segmentation import load_segmenter  # noqa: E402
from sac_ros.segmentation.backends.torch_backend import (  # noqa: E402
    load_checkpoint,
    model_from_checkpoint,
)
from sac_ros.segmentation.classmaps import ClassMapAdapter, four_class_lookup  # noqa: E402
from sac_ros.segmentation.datasets import augment, open_dataset, shadow_field  # noqa: E402
from sac_ros.segmentation.network import SacRoiNet, count_parameters  # noqa: E402
from sac_ros.segmentation.train import TrainSettings, train  # noqa: E402

# Cityscapes labelIds / trainIds used by the synthetic scenes
LABEL_IDS = {"sky": 23, "vegetation": 21, "building": 11, "road": 7, "car": 26}
TRAIN_IDS = {"sky": 10, "vegetation": 8, "building": 2, "road": 0, "car": 13}
COLOURS = {"sky": (90, 140, 230), "vegetation": (40, 120, 40), "building": (150, 140, 130),
           "road": (70, 70, 75), "car": (200, 30, 30)}


def scene(rng, height=128, width=256):
    """A random road scene: class names per pixel and the matching RGB image."""
    horizon = int(rng.integers(height // 3, height // 2))
    names = np.full((height, width), "road", dtype=object)
    names[:horizon] = "sky"
    tree_top = horizon - int(rng.integers(5, 20))
    names[tree_top:horizon + 6, : width // 3] = "vegetation"
    left = int(rng.integers(width // 2, width - 60))
    names[tree_top - 10:horizon + 4, left:left + 50] = "building"
    car_x = int(rng.integers(40, width - 60))
    names[horizon + 10:horizon + 30, car_x:car_x + 40] = "car"
    image = np.zeros((height, width, 3), np.float32)
    for name, colour in COLOURS.items():
        image[names == name] = colour
    image += rng.normal(0, 12, image.shape)
    return names, np.clip(image, 0, 255).astype(np.uint8)


def to_ids(names, table):
    ids = np.zeros(names.shape, np.uint8)
    for name, value in table.items():
        ids[names == name] = value
    return ids


@pytest.fixture(scope="module")
def cityscapes_root(tmp_path_factory):
    """ROOT/leftImg8bit/<split>/<city>/*_leftImg8bit.png + ROOT/gtFine/.../*_labelIds.png."""
    root = tmp_path_factory.mktemp("cityscapes")
    rng = np.random.default_rng(1)
    for split, city, count in (("train", "aachen", 6), ("val", "frankfurt", 2)):
        images = root / "leftImg8bit" / split / city
        labels = root / "gtFine" / split / city
        images.mkdir(parents=True)
        labels.mkdir(parents=True)
        for k in range(count):
            names, rgb = scene(rng)
            stem = f"{city}_{k:06d}_000019"
            Image.fromarray(rgb).save(images / f"{stem}_leftImg8bit.png")
            Image.fromarray(to_ids(names, LABEL_IDS)).save(labels / f"{stem}_gtFine_labelIds.png")
            # the other gtFine files sit beside it in real downloads
            Image.fromarray(rgb).save(labels / f"{stem}_gtFine_color.png")
    return root


@pytest.fixture(scope="module")
def kitti_root(tmp_path_factory):
    """ROOT/images/<split>/<seq>/<frame>.png + ROOT/panoptic_maps/... (R = semantic id)."""
    root = tmp_path_factory.mktemp("kitti_step")
    rng = np.random.default_rng(2)
    for split, seq, count in (("train", "0000", 6), ("val", "0002", 2)):
        images = root / "images" / split / seq
        panoptic = root / "panoptic_maps" / split / seq
        images.mkdir(parents=True)
        panoptic.mkdir(parents=True)
        for k in range(count):
            names, rgb = scene(rng)
            semantic = to_ids(names, TRAIN_IDS)
            instance = (names == "car").astype(np.uint8)  # G/B: instance ids
            label = np.stack([semantic, instance, np.zeros_like(semantic)], axis=2)
            Image.fromarray(rgb).save(images / f"{k:06d}.png")
            Image.fromarray(label).save(panoptic / f"{k:06d}.png")
    return root


def quick(dataset, root, out, **overrides):
    # one thread: these tensors are tiny, and thread hand-offs dominate on a busy 2-core box
    # no shadows: 20 steps on synthetic fixtures check the data path and the optimiser
    # (the shadows have their own test)
    values = dict(dataset=dataset, data_root=str(root), out=out, epochs=1, steps_per_epoch=20,
                  batch_size=4, crop=(128, 64), scale=(0.8, 1.0), width=0.5, progress=False,
                  seed=0, lr=3e-3, threads=1, shadow_prob=0.0)
    values.update(overrides)
    return TrainSettings(**values)


def assert_loss_falls(history_losses):
    first, last = np.mean(history_losses[:3]), np.mean(history_losses[-3:])
    assert last < 0.85 * first, (first, last)


def test_cityscapes_targets_use_the_label_definitions():
    table = four_class_lookup(ClassMapAdapter("cityscapes_label_ids"))
    assert table[LABEL_IDS["building"]] == 1 and table[14] == 1  # guard rail: construction
    assert table[LABEL_IDS["vegetation"]] == 2 and table[22] == 2  # terrain: nature
    assert table[LABEL_IDS["sky"]] == 3
    assert table[LABEL_IDS["road"]] == 0 and table[LABEL_IDS["car"]] == 0
    kitti = four_class_lookup(ClassMapAdapter("kitti_step"))
    assert (kitti[2], kitti[8], kitti[10], kitti[0], kitti[9]) == (1, 2, 3, 0, 0)
    assert kitti[255] == 255  # void is ignored by the loss
    with pytest.raises(SacError, match="category 'object'"):
        four_class_lookup(ClassMapAdapter("cityscapes_label_ids", {17, 23}))  # pole


@pytest.mark.parametrize("dataset", ["cityscapes", "kitti_step"])
def test_training_loss_falls_on_real_layouts(dataset, cityscapes_root, kitti_root, tmp_path,
                                             monkeypatch):
    root = cityscapes_root if dataset == "cityscapes" else kitti_root
    data = open_dataset(dataset, root, "train", "four_class")
    rgb, target = data.load(0)
    assert rgb.shape == (128, 256, 3) and set(np.unique(target)) == {0, 1, 2, 3}
    losses = []
    import sac_ros.segmentation.train as training

    original = training.batch_loss

    def recording(*args, **kwargs):
        result = original(*args, **kwargs)
        losses.append(float(result[0].detach()))
        return result

    monkeypatch.setattr(training, "batch_loss", recording)
    state = train(quick(dataset, root, tmp_path))
    assert len(losses) == 20
    assert_loss_falls(losses)
    val = state["history"][-1]["val"]
    assert 0.0 <= val["block_iiou"] <= 1.0 and 0.0 <= val["pixel_miou"] <= 1.0
    assert (tmp_path / "last.pt").is_file() and (tmp_path / "history.json").is_file()


def test_resume_continues_from_the_checkpoint(cityscapes_root, tmp_path):
    first = train(quick("cityscapes", cityscapes_root, tmp_path, epochs=1, steps_per_epoch=3))
    resumed = train(quick("cityscapes", cityscapes_root, tmp_path, epochs=2, steps_per_epoch=3,
                          resume=tmp_path / "last.pt"))
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["step"] == 6
    assert resumed["history"][0] == json.loads(json.dumps(first["history"][0]))
    with pytest.raises(SacError, match="nothing to do"):
        train(quick("cityscapes", cityscapes_root, tmp_path, epochs=2,
                    resume=tmp_path / "last.pt"))
    with pytest.raises(SacError, match="cannot resume"):
        train(quick("cityscapes", cityscapes_root, tmp_path / "b", epochs=3, width=1.0,
                    resume=tmp_path / "last.pt"))


def test_binary_head_and_bad_dataset_folders(kitti_root, tmp_path):
    state = train(quick("kitti_step", kitti_root, tmp_path, head="binary", steps_per_epoch=2))
    assert state["num_classes"] == 2 and state["class_map"] == "binary"
    with pytest.raises(SacError, match="not a Cityscapes folder"):
        open_dataset("cityscapes", kitti_root, "train", "four_class")
    with pytest.raises(SacError, match="not a KITTI-STEP folder"):
        open_dataset("kitti_step", tmp_path, "train", "four_class")
    with pytest.raises(SacError, match="--data-root is required"):
        open_dataset("cityscapes", None, "train", "four_class")


def test_export_to_onnx_matches_torch_and_loads_everywhere(tmp_path):
    from sac_ros.segmentation.backends.torch_backend import save_checkpoint
    from sac_ros.segmentation.export import compare, export_onnx

    torch.manual_seed(0)
    model = SacRoiNet(4, 0.5)
    with torch.no_grad():  # non-trivial batch-norm statistics
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    checkpoint = tmp_path / "model.pt"
    save_checkpoint(checkpoint, {"model": model.state_dict(), "num_classes": 4, "width": 0.5,
                                 "class_map": "four_class", "epoch": 1, "step": 1})
    onnx_path, _, metadata = export_onnx(checkpoint, tmp_path / "model.onnx")
    assert metadata["sac_class_map"] == "four_class"
    cfg = load_segmentation_config()
    via_torch = load_segmenter(cfg, checkpoint)
    via_onnx = load_segmenter(cfg, onnx_path)
    assert via_onnx.backend.name == "onnxruntime" and via_torch.backend.name == "torch"
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((541, 962), (256, 320))]
    agreement = compare(via_torch, via_onnx, frames)  # two sizes: dynamic H and W
    assert agreement.max_abs_logit_diff < 1e-3
    assert agreement.class_agreement > 0.999 and agreement.block_agreement == 1.0
    # TorchScript files load on the torch backend too
    scripted = tmp_path / "scripted.pt"
    torch.jit.trace(model.eval(), torch.zeros(1, 3, 64, 64)).save(str(scripted))
    via_script = load_segmenter(dataclasses.replace(cfg, class_map="four_class"), scripted)
    np.testing.assert_array_equal(via_script.block_roi(frames[1]), via_torch.block_roi(frames[1]))


def sac(*args, cwd):
    script = Path(sys.executable).parent / "sac"
    command = [str(script)] if script.is_file() else [sys.executable, "-m", "sac_ros.cli.main"]
    env = dict(os.environ, OMP_NUM_THREADS="1")  # tiny tensors: one thread is fastest
    return subprocess.run([*command, *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env=env)


def test_cli_train_then_export(cityscapes_root, tmp_path):
    result = sac("train", "--dataset", "cityscapes", "--data-root", cityscapes_root, "--out",
                 tmp_path / "run", "--epochs", "1", "--steps-per-epoch", "2", "--batch-size", "2",
                 "--crop", "128x64", "--width", "0.5", "--no-progress", "--onnx",
                 tmp_path / "run" / "model.onnx", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "epoch 1/1" in result.stderr and "val pixel iIoU" in result.stderr
    assert (tmp_path / "run" / "model.onnx").is_file()
    result = sac("export", tmp_path / "run" / "last.pt", "--onnx", tmp_path / "again.onnx",
                 "--frames", "1", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "ONNX Runtime vs PyTorch" in result.stdout
    # bad input: one line, no traceback
    result = sac("train", "--dataset", "cityscapes", "--data-root", tmp_path / "nowhere",
                 "--out", tmp_path / "x", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [
        f"sac train: error: dataset folder {tmp_path / 'nowhere'} does not exist"]
    result = sac("export", tmp_path / "run" / "model.onnx", cwd=tmp_path)
    assert result.returncode == 2 and "give --engine" in result.stderr
    result = sac("train", "--dataset", "cityscapes", "--data-root", cityscapes_root,
                 "--out", tmp_path / "y", "--depth", "9", cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        "sac train: error: --depth must be from 0 to 8"]
    assert not (tmp_path / "y").exists()


def test_shadows_vary_the_light_but_not_the_labels():
    for seed in range(8):  # at the training crop size
        gain = shadow_field(384, 768, np.random.default_rng(seed))
        assert gain.shape == (384, 768) and gain.dtype == np.float32
        assert 0.3 - 1e-5 <= gain.min() and gain.max() <= 1.6 + 1e-5
        assert gain.max() - gain.min() > 0.2        # patches, not a uniform gain
    rgb = np.full((128, 256, 3), 128, np.uint8)
    target = np.random.default_rng(0).integers(0, 4, (128, 256)).astype(np.uint8)
    plain, plain_labels = augment(rgb, target, (128, 64), (1.0, 1.0), np.random.default_rng(5))
    shaded, shaded_labels = augment(rgb, target, (128, 64), (1.0, 1.0),
                                    np.random.default_rng(5), shadow_prob=1.0)
    assert np.array_equal(plain_labels, shaded_labels)
    assert np.abs(shaded - plain).mean() > 5.0


def test_depth_and_weight_averaging_reach_the_checkpoint(cityscapes_root, tmp_path):
    train(quick("cityscapes", cityscapes_root, tmp_path, steps_per_epoch=3, depth=1))
    checkpoint = load_checkpoint(tmp_path / "last.pt")
    assert checkpoint["depth"] == 1 and "averaged" in checkpoint
    model = model_from_checkpoint(checkpoint)
    assert count_parameters(model) > count_parameters(SacRoiNet(4, 0.5))
    # the exported model is the averaged one, which lags the raw weights
    name = "class_head.weight"
    assert torch.equal(model.state_dict()[name], checkpoint["averaged"][name])
    assert not torch.equal(checkpoint["averaged"][name], checkpoint["model"][name])
    with pytest.raises(SacError, match="depth 1; it cannot resume"):
        train(quick("cityscapes", cityscapes_root, tmp_path, epochs=2, depth=0,
                    resume=tmp_path / "last.pt"))
    train(quick("cityscapes", cityscapes_root, tmp_path / "raw", steps_per_epoch=3, ema=0.0))
    assert "averaged" not in load_checkpoint(tmp_path / "raw" / "last.pt")


def test_weight_average_forgets_the_initial_weights_quickly():
    from sac_ros.segmentation.train import _averaged_model

    model = SacRoiNet(4, 0.5)
    averaged = _averaged_model(torch, model, 0.99)
    averaged.update_parameters(model)                  # the first call copies
    with torch.no_grad():
        for param in model.parameters():
            param.fill_(1.0)
    for _ in range(10):
        averaged.update_parameters(model)
    weight = averaged.module.class_head.weight.detach()
    # warm-up: after 10 steps the average is mostly the new weights (plain EMA at 0.99
    # would still be 90% the old ones), and batch-norm step counts follow the model
    assert float(weight.min()) > 0.7
    assert _averaged_model(torch, model, 0.0) is None


def test_cosine_schedule_decays_the_learning_rate(cityscapes_root, tmp_path):
    from sac_ros.segmentation.train import cosine_lr

    assert cosine_lr(3e-4, 0, 100) == pytest.approx(3e-4)
    assert cosine_lr(3e-4, 99, 100) == pytest.approx(3e-6)
    assert cosine_lr(3e-4, 25, 100) > cosine_lr(3e-4, 50, 100) > cosine_lr(3e-4, 75, 100)
    lrs = []
    original_step = torch.optim.Adam.step

    def recording_step(self, *args, **kwargs):
        lrs.append(self.param_groups[0]["lr"])
        return original_step(self, *args, **kwargs)

    torch.optim.Adam.step = recording_step
    try:
        train(quick("cityscapes", cityscapes_root, tmp_path, epochs=2, steps_per_epoch=3,
                    lr_schedule="cosine"))
        # a resumed run continues the schedule from its step count
        train(quick("cityscapes", cityscapes_root, tmp_path, epochs=3, steps_per_epoch=3,
                    lr_schedule="cosine", resume=tmp_path / "last.pt"))
        train(quick("cityscapes", cityscapes_root, tmp_path / "flat", steps_per_epoch=3))
    finally:
        torch.optim.Adam.step = original_step
    assert lrs[:6] == pytest.approx([cosine_lr(3e-3, step, 6) for step in range(6)])
    assert lrs[6:9] == pytest.approx([cosine_lr(3e-3, step, 9) for step in range(6, 9)])
    assert lrs[8] == pytest.approx(3e-5)
    assert lrs[9:] == [3e-3] * 3
    assert load_checkpoint(tmp_path / "last.pt")["settings"]["lr_schedule"] == "cosine"
