"""FP16 and INT8 as ONNX graphs, for strongly typed TensorRT builds.

TensorRT 11 removed the builder's precision flags (``BuilderFlag.FP16``/``INT8``) and
implicit INT8 calibration: the network itself must carry its precision. So the
reduced-precision model is made here, as ONNX, before TensorRT sees it:

- FP16: weights and arithmetic in float16, inputs and outputs kept float32 (so the
  engine's I/O and the backend's buffers do not change), with onnxconverter-common;
- INT8: explicit quantization, QuantizeLinear/DequantizeLinear pairs with symmetric
  int8 scales (per output channel for weights) calibrated on a folder of images by
  ONNX Runtime's static quantizer, the form TensorRT builds INT8 kernels from.

TensorRT 10 builds the same graphs as a strongly typed network, so one path serves
both. Both models run in ONNX Runtime on the CPU, which is how they are checked against
the float32 model before any GPU is involved.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from sac_ros.core.errors import SacError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


def to_fp16(source: str | Path, target: str | Path) -> Path:
    """Write a float16 copy of an ONNX model with float32 inputs and outputs."""
    import onnx
    from onnxconverter_common import float16

    target = Path(target)
    try:
        model = onnx.load(str(source))
        with warnings.catch_warnings():  # tiny weights rounding to float16's subnormals
            warnings.simplefilter("ignore", UserWarning)
            half = float16.convert_float_to_float16(model, keep_io_types=True)
        onnx.checker.check_model(half)
        onnx.save(half, str(target))
    except Exception as exc:  # onnx and the converter raise many types
        raise SacError(f"FP16 conversion of {source} failed: {_brief(exc)}") from None
    return target


def _brief(exc: Exception) -> str:
    return " ".join(str(exc).split())[:400] or type(exc).__name__


def image_files(folder: str | Path, what: str = "image folder") -> list[Path]:
    """The .png/.jpg files under ``folder``, sorted; an error names ``what`` if none."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise SacError(f"{what} {folder} holds no .png/.jpg images")
    return files


def quantize_int8(source: str | Path, target: str | Path, segmenter, folder: str | Path,
                  hw: tuple[int, int], method: str = "entropy") -> Path:
    """Write an explicitly quantized (Q/DQ) copy of ``source``, calibrated on the images
    of ``folder`` resized to ``hw`` (H, W) and prepared as ``segmenter`` prepares frames."""
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    methods = {"entropy": CalibrationMethod.Entropy, "minmax": CalibrationMethod.MinMax,
               "percentile": CalibrationMethod.Percentile}
    if method not in methods:
        raise SacError(f"unknown calibration method '{method}'; choose {', '.join(methods)}")
    files = image_files(folder, "INT8 calibration folder")
    input_name = segmenter.backend.input_name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.files = iter(files)

        def get_next(self):
            file = next(self.files, None)
            if file is None:
                return None
            with Image.open(file) as img:
                rgb = np.asarray(img.convert("RGB").resize((hw[1], hw[0]),
                                                           Image.Resampling.BILINEAR))
            return {input_name: segmenter.input_tensor(rgb)}

    target = Path(target)
    prepared = target.with_name(target.stem + ".prep.onnx")
    try:
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)
        quantize_static(str(prepared), str(target), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        per_channel=True, calibrate_method=methods[method],
                        # TensorRT's explicit quantization: symmetric scales, a Q/DQ pair
                        # on every weight and one pair per consumer
                        extra_options={"ActivationSymmetric": True, "WeightSymmetric": True,
                                       "AddQDQPairToWeight": True, "DedicatedQDQPair": True})
    except SacError:
        raise
    except Exception as exc:  # the quantizer, onnx and PIL raise many types
        raise SacError(f"INT8 quantization of {source} failed: {_brief(exc)}") from None
    finally:
        prepared.unlink(missing_ok=True)
    return target
