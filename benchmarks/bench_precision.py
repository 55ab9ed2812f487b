#!/usr/bin/env python3
"""How faithful the FP16 and INT8 ONNX models that TensorRT engines are built from are.

The float16 copy and the Q/DQ-quantized copy of a model (``sac export --engine``'s first
step, ``sac_ros/segmentation/precision.py``) are compared with the float32 model in ONNX
Runtime on held-out evaluation frames. INT8 is calibrated on training frames of the
evaluation set at ``--calib-size``. CPU only: no TensorRT is needed.

    .venv/bin/python benchmarks/bench_precision.py [--model default] [--frames 4]
        [--calib-frames 6] [--calib-size 512x256]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from PIL import Image

from sac_ros.config import load_segmentation_config
from sac_ros.core.errors import SacError
from sac_ros.core.io import parse_size
from sac_ros.segmentation import export
from sac_ros.segmentation.evalset import load_labels, read_frames
from sac_ros.segmentation.loader import load_segmenter, resolve_model


def size(text: str) -> tuple[int, int]:
    try:
        return parse_size(text)
    except SacError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def spread(items: list, count: int) -> list:
    return items[::max(1, len(items) // max(1, count))][:count]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--frames", type=int, default=4, help="held-out frames compared")
    parser.add_argument("--calib-frames", type=int, default=6, help="INT8 calibration frames")
    parser.add_argument("--calib-size", type=size, default=(512, 256), help="WxH")
    args = parser.parse_args()
    cfg = load_segmentation_config()
    source = resolve_model(args.model)
    reference = load_segmenter(cfg, source, "onnxruntime")
    frames = read_frames(spread(load_labels(split="heldout"), args.frames))
    width, height = args.calib_size
    with tempfile.TemporaryDirectory() as tmp:
        calib = Path(tmp, "calib")
        calib.mkdir()
        for i, rgb in enumerate(read_frames(spread(load_labels(split="train"),
                                                   args.calib_frames))):
            Image.fromarray(rgb).save(calib / f"{i}.png")
        print(f"model: {source.name}; {len(frames)} held-out frames; INT8 calibrated on "
              f"{args.calib_frames} training frames at {width}x{height}")
        for precision in ("fp16", "int8"):
            path = export.reduced_precision_onnx(source, Path(tmp, "m.engine"), precision,
                                                 reference, calib, (height, width),
                                                 reference.backend.metadata)
            candidate = load_segmenter(cfg, path, "onnxruntime")
            agreement = export.compare(reference, candidate, frames)
            print(f"{precision} vs float32: {agreement.line()} "
                  f"({path.stat().st_size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
