"""`sac export`: PyTorch -> ONNX -> TensorRT engine, each step checked against the last.

1. A ``sac train`` checkpoint or a TorchScript file is exported to ONNX (opset 17, dynamic
   H and W, sac metadata) and compared with PyTorch on sample frames through ONNX Runtime.
2. With ``--engine``, the ONNX model is turned into its FP16 or INT8 (Q/DQ) form
   (``precision.py``; checked against the float32 model in ONNX Runtime), built into a
   strongly typed TensorRT engine with the Python builder API (one optimisation
   profile; TensorRT 10 and 11) and compared with ONNX Runtime on the same frames; its
   latency and fps at the profile's optimal shape are measured. A ``<engine>.json``
   beside it records the TensorRT version and GPU it was built for, so a mismatch is
   reported clearly.
"""

from __future__ import annotations

import json
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sac_ros.core.errors import SacError
from sac_ros.segmentation.network_meta import ONNX_OPSET


@dataclass
class Agreement:
    """How closely two backends agree on the same frames."""

    max_abs_logit_diff: float
    class_agreement: float   # share of pixels with the same class
    block_agreement: float   # share of blocks with the same ROI decision

    def line(self) -> str:
        return (f"max |logit diff| {self.max_abs_logit_diff:.4g}, same class on "
                f"{100 * self.class_agreement:.3f}% of pixels, same block decision on "
                f"{100 * self.block_agreement:.3f}% of blocks")


def export_onnx(source: str | Path, onnx_path: str | Path,
                sample_hw: tuple[int, int] = (512, 1024),
                class_map: str | None = None) -> tuple[Path, Any, dict[str, str]]:
    """Export a checkpoint or TorchScript model to ONNX; returns (path, model, metadata).

    A checkpoint knows its class map and normalisation; for a foreign TorchScript model
    only ``class_map`` (if given) is recorded and the config's normalisation applies.
    """
    from sac_ros.segmentation.backends.torch_backend import TorchBackend, import_torch
    from sac_ros.segmentation.network import BLOCK_OUTPUT, CLASS_OUTPUT, INPUT_NAME

    torch = import_torch()
    backend = TorchBackend(source, device="cpu")
    model = backend.model
    metadata = dict(backend.metadata)
    if class_map is not None:
        metadata["sac_class_map"] = class_map
    onnx_path = Path(onnx_path)
    onnx_path.parent.mkdir(parents=True, exist_ok=True)
    dummy = torch.zeros(1, 3, *sample_hw)
    with torch.inference_mode():
        result = model(dummy)
    outputs = [CLASS_OUTPUT, BLOCK_OUTPUT] if isinstance(result, (tuple, list)) and len(
        result) == 2 else [CLASS_OUTPUT]
    dynamic = {INPUT_NAME: {2: "height", 3: "width"}}
    dynamic.update({name: {2: f"{name}_h", 3: f"{name}_w"} for name in outputs})
    try:
        with warnings.catch_warnings():  # the TorchScript exporter's deprecation notices
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(model, (dummy,), str(onnx_path), input_names=[INPUT_NAME],
                              output_names=outputs, dynamic_axes=dynamic,
                              opset_version=ONNX_OPSET, dynamo=False)
    except Exception as exc:  # the exporter raises many types
        raise SacError(f"ONNX export of {source} failed: {' '.join(str(exc).split())[:400]}"
                       ) from None
    add_onnx_metadata(onnx_path, metadata)
    return onnx_path, model, metadata


def add_onnx_metadata(onnx_path: Path, metadata: dict[str, str]) -> None:
    """Store sac_* keys in the ONNX file and run the ONNX checker on it."""
    import onnx

    model = onnx.load(str(onnx_path))
    del model.metadata_props[:]
    for key, value in sorted(metadata.items()):
        entry = model.metadata_props.add()
        entry.key, entry.value = key, str(value)
    onnx.checker.check_model(model)
    onnx.save(model, str(onnx_path))


def compare(reference, candidate, frames: list[np.ndarray]) -> Agreement:
    """Run two Segmenters on the same frames and measure their agreement."""
    worst, same_class, same_block, pixels, blocks = 0.0, 0, 0, 0, 0
    for rgb in frames:
        a, b = reference.predict(rgb), candidate.predict(rgb)
        la = np.asarray(a._outputs[reference.class_output], np.float32)
        lb = np.asarray(b._outputs[candidate.class_output], np.float32)
        if la.shape != lb.shape:
            raise SacError(f"class outputs differ in shape: {la.shape} vs {lb.shape}")
        worst = max(worst, float(np.abs(la - lb).max()))
        same_class += int((a.class_map == b.class_map).sum())
        pixels += a.class_map.size
        same_block += int((a.block_roi == b.block_roi).sum())
        blocks += a.block_roi.size
    return Agreement(worst, same_class / pixels, same_block / blocks)


def sample_frames(count: int, folder: str | Path | None = None) -> list[np.ndarray]:
    """Validation frames: images from a folder, else frames of the bundled sample clips."""
    if folder:
        from sac_ros.segmentation.precision import image_files

        files = image_files(folder, "frames folder")[:count]
        frames = []
        for file in files:
            with Image.open(file) as img:
                frames.append(np.array(img.convert("RGB")))
        return frames
    from sac_ros.segmentation.evalset import load_labels, read_frames

    labelled = load_labels(split="heldout")
    step = max(1, len(labelled) // max(1, count))
    return read_frames(labelled[::step][:count])


# ------------------------------------------------------------------ TensorRT

PRECISIONS = ("fp32", "fp16", "int8")


def reduced_precision_onnx(onnx_path: str | Path, engine_path: str | Path, precision: str,
                           segmenter=None, calibration: str | Path | None = None,
                           calibration_hw: tuple[int, int] = (512, 1024),
                           metadata: dict[str, str] | None = None) -> Path:
    """The ONNX model TensorRT builds for ``precision``: written beside the engine as
    ``<engine>.fp16.onnx`` / ``<engine>.int8.onnx`` (``fp32``: the model itself)."""
    from sac_ros.segmentation import precision as reduced

    if precision not in PRECISIONS:
        raise SacError(f"unknown precision '{precision}'; choose {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return Path(onnx_path)
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    target = engine_path.with_name(f"{engine_path.stem}.{precision}.onnx")
    if precision == "fp16":
        reduced.to_fp16(onnx_path, target)
    else:
        if calibration is None or segmenter is None:
            raise SacError("INT8 needs a folder of calibration images (--int8 DIR)")
        reduced.quantize_int8(onnx_path, target, segmenter, calibration, calibration_hw)
    if metadata:
        add_onnx_metadata(target, metadata)
    return target


def strongly_typed_flags(trt) -> int:
    """Network creation flags: TensorRT 10 opts in to strong typing; in TensorRT 11 every
    network is strongly typed (and the flag may be gone)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    return 1 << int(flag) if flag is not None else 0


def build_engine(onnx_path: str | Path, engine_path: str | Path, min_hw: tuple[int, int],
                 opt_hw: tuple[int, int], max_hw: tuple[int, int], precision: str = "fp32",
                 workspace_mb: int = 1024, metadata: dict[str, str] | None = None) -> Path:
    """Build and serialize a strongly typed TensorRT engine (TensorRT 10 and 11).

    The ONNX model carries its own precision (``reduced_precision_onnx``): no builder
    precision flags or calibrators, which TensorRT 11 no longer has.
    """
    from sac_ros.segmentation.backends.trt_backend import (
        import_tensorrt,
        make_logger,
        sidecar_path,
    )

    trt, cuda = import_tensorrt()
    onnx_path, engine_path = Path(onnx_path), Path(engine_path)
    device = cuda.Device(0)
    context = device.retain_primary_context()
    context.push()
    try:
        logger = make_logger(trt)
        builder = trt.Builder(logger)
        network = builder.create_network(strongly_typed_flags(trt))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse(onnx_path.read_bytes()):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise SacError(f"TensorRT cannot parse {onnx_path}: {errors}")
        input_name = network.get_input(0).name
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
        profile = builder.create_optimization_profile()
        profile.set_shape(input_name, (1, 3, *min_hw), (1, 3, *opt_hw), (1, 3, *max_hw))
        config.add_optimization_profile(profile)
        serialized = builder.build_serialized_network(network, config)
        if serialized is None:
            raise SacError("TensorRT failed to build the engine: "
                           + (" ".join(logger.messages)[-400:] or "no details"))
        engine_path.parent.mkdir(parents=True, exist_ok=True)
        engine_path.write_bytes(bytes(serialized))
    finally:
        context.pop()
    info = {"tensorrt_version": trt.__version__, "gpu": device.name(),
            "compute_capability": "{}.{}".format(*device.compute_capability()),
            "source": onnx_path.name, "precision": precision,
            "fp16": precision == "fp16", "int8": precision == "int8",
            "min_shape": [min_hw[1], min_hw[0]], "opt_shape": [opt_hw[1], opt_hw[0]],
            "max_shape": [max_hw[1], max_hw[0]], "metadata": metadata or {}}
    sidecar_path(engine_path).write_text(json.dumps(info, indent=1) + "\n")
    return engine_path


def time_backend(segmenter, hw: tuple[int, int], runs: int = 200) -> dict[str, float]:
    """Latency of the backend alone and of block_roi end to end, on one H x W frame."""
    rgb = np.random.default_rng(0).integers(0, 256, (hw[0], hw[1], 3), dtype=np.uint8)
    batch = np.random.default_rng(1).uniform(0, 255, (1, 3, hw[0], hw[1])).astype(np.float32)
    for _ in range(20):
        segmenter.backend.infer(batch)
        segmenter.block_roi(rgb)
    model_times, total_times = [], []
    for _ in range(runs):
        start = time.perf_counter()
        segmenter.backend.infer(batch)
        model_times.append(time.perf_counter() - start)
    for _ in range(runs):
        start = time.perf_counter()
        segmenter.block_roi(rgb)
        total_times.append(time.perf_counter() - start)
    model_ms = 1000 * float(np.median(model_times))
    total_ms = 1000 * float(np.median(total_times))
    return {"model_ms": model_ms, "model_fps": 1000 / model_ms, "block_roi_ms": total_ms,
            "block_roi_fps": 1000 / total_ms}
