"""Tiny datasets in the exact Cityscapes / KITTI-STEP layouts, built at test time.

Frames are a synthetic road scene (blue sky on top, green vegetation on the left of the
horizon band, grey road with a moving yellow lane mark below) with matching labels:
Cityscapes ``labelIds`` (sky 23, vegetation 21, road 7, car 26) and KITTI-STEP panoptic
maps (R = trainId: sky 10, vegetation 8, road 0, car 13 with an instance id in G/B).
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

CS_IDS = {"sky": 23, "vegetation": 21, "road": 7, "car": 26}
KITTI_IDS = {"sky": 10, "vegetation": 8, "road": 0, "car": 13}


def scene(height: int, width: int, t: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(RGB frame, region masks) of frame ``t``; everything moves a little per frame."""
    rng = np.random.default_rng(t)
    y, x = np.mgrid[0:height, 0:width]
    horizon = height * 3 // 8
    sky = y < horizon
    vegetation = (y >= horizon) & (y < height // 2) & (x < width // 2)
    car = (y >= height * 5 // 8) & (y < height * 3 // 4) & (abs(x - (width // 3 + 2 * t)) < 6)
    rgb = np.empty((height, width, 3), np.float64)
    rgb[:] = (105, 104, 100)                                  # road
    lane = (abs(x - width // 2 - (y - horizon) // 3) < 2) & (((y + 3 * t) // 5) % 2 == 0)
    rgb[lane & ~sky] = (230, 200, 60)
    rgb[sky] = (90, 140, 220)
    rgb[vegetation] = (40, 120, 40)
    rgb[vegetation, 1] += 20 * np.sin(x[vegetation] / 3.0 + t)
    rgb[car] = (200, 30, 30)
    rgb += rng.normal(0, 4, rgb.shape) + 8 * np.sin(x / 5.0 + y / 7.0 + 0.4 * t)[..., None]
    regions = {"sky": sky, "vegetation": vegetation & ~car, "car": car,
               "road": ~sky & ~vegetation & ~car}
    return np.clip(rgb, 0, 255).astype(np.uint8), regions


def _ids(regions, table) -> np.ndarray:
    ids = np.zeros(next(iter(regions.values())).shape, np.uint8)
    for name, mask in regions.items():
        ids[mask] = table[name]
    return ids


def make_cityscapes(root: Path, sequences, height: int = 48, width: int = 80) -> dict:
    """``sequences``: (split, city, seq, first frame number, frames, labelled offsets).

    Returns {"frames": [(path, rgb)], "labels": {frame path: labelIds}} in file order.
    """
    out = {"frames": [], "labels": {}}
    t = 0
    for split, city, seq, first, count, labelled in sequences:
        folder = root / "leftImg8bit_sequence" / split / city
        labels = root / "gtFine" / split / city
        folder.mkdir(parents=True, exist_ok=True)
        for offset in range(count):
            name = f"{city}_{seq:06d}_{first + offset:06d}"
            rgb, regions = scene(height, width, t)
            t += 1
            path = folder / f"{name}_leftImg8bit.png"
            Image.fromarray(rgb).save(path)
            out["frames"].append((path, rgb))
            if offset in labelled:
                labels.mkdir(parents=True, exist_ok=True)
                ids = _ids(regions, CS_IDS)
                Image.fromarray(ids, mode="L").save(labels / f"{name}_gtFine_labelIds.png")
                out["labels"][path] = ids
    return out


def make_kitti(root: Path, sequences, height: int = 40, width: int = 72,
               labels: bool = True) -> dict:
    """``sequences``: (split, sequence id, frames). Panoptic labels for every frame."""
    out = {"frames": [], "labels": {}}
    t = 0
    for split, seq, count in sequences:
        folder = root / "images" / split / seq
        folder.mkdir(parents=True, exist_ok=True)
        panoptic_dir = root / "panoptic_maps" / split / seq
        for index in range(count):
            rgb, regions = scene(height, width, t)
            t += 1
            path = folder / f"{index:06d}.png"
            Image.fromarray(rgb).save(path)
            out["frames"].append((path, rgb))
            if labels:
                panoptic_dir.mkdir(parents=True, exist_ok=True)
                panoptic = np.zeros((height, width, 3), np.uint8)
                panoptic[..., 0] = _ids(regions, KITTI_IDS)
                panoptic[regions["car"], 2] = 1 + index % 3   # instance id in G * 256 + B
                Image.fromarray(panoptic, mode="RGB").save(panoptic_dir / f"{index:06d}.png")
                out["labels"][path] = panoptic
    return out


def make_video(path: Path, frames: int = 6, height: int = 48, width: int = 64,
               fps: int = 12) -> list[np.ndarray]:
    """A tiny lossless-ish H.264 video (yuv444, qp 0) of the scene; returns the frames."""
    import av

    written = []
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264rgb", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "rgb24"
        stream.options = {"qp": "0", "preset": "ultrafast"}
        for index in range(frames):
            rgb, _ = scene(height, width, index)
            written.append(rgb)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return written


def tiny_segmenter(path: Path) -> Path:
    """A real ONNX model with a fixed rule: a pixel is ROI unless its blue channel >= 128.

    One 1x1 convolution (ROI logit = 8 - B / 16) with the metadata the loader reads
    (binary class map, raw 0-255 input). Sky is non-ROI and road is ROI, as in the labels;
    vegetation is wrongly ROI, so IoUs are below 1 in a known way.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.array([0, 0, -1 / 16], np.float32).reshape(1, 3, 1, 1),
                                     "w")
    bias = numpy_helper.from_array(np.array([8.0], np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["image", "w", "b"], ["class_logits"])], "sac_test_rule",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, "H", "W"])],
        [helper.make_tensor_value_info("class_logits", TensorProto.FLOAT, ["N", 1, "H", "W"])],
        [weight, bias])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    for key, value in (("sac_class_map", "binary"), ("sac_input", "rgb255"),
                       ("sac_stride", "16")):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(model, str(path))
    return path


def sac(*args, cwd=None, env=None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real ``sac`` console script."""
    script = Path(sys.executable).parent / "sac"
    cmd = [str(script)] if script.is_file() else [sys.executable, "-m", "sac_ros.cli.main"]
    return subprocess.run([*cmd, *map(str, args)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def sac_inprocess(capsys, *args) -> subprocess.CompletedProcess:
    """The same ``sac`` entry point in this process (faster than a new interpreter)."""
    from sac_ros.cli.main import main

    code = main([str(a) for a in args])
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(list(args), code, captured.out, captured.err)


def one_line_error(result, command: str, fragment: str) -> str:
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"sac {command}: error: "), lines[0]
    assert fragment in lines[0], lines[0]
    return lines[0]


def write_mp4(path, frames, fps=25):
    """RGB frames as an H.264 MP4 (a clip for the CLI tests)."""
    import av

    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return path
