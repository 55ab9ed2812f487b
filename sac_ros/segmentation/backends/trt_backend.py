"""TensorRT backend: a serialized engine run with pycuda buffers on a CUDA stream.

Written against the TensorRT 10 API (named I/O tensors, ``set_input_shape``,
``set_tensor_address``, ``execute_async_v3``). Buffers are allocated once, for the
largest shape of the engine's optimisation profile: pinned host memory and device
memory are reused for every frame. FP16 engines and FP16 I/O tensors work (the
host buffers take the engine's tensor types).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sac_ros.core.errors import SacError
from sac_ros.segmentation.backends.base import InputSpec

FALLBACK = ("use the ONNX model on onnxruntime instead (backend: onnxruntime, "
            "model: the .onnx file `sac export` started from)")


def import_tensorrt():
    """tensorrt and pycuda.driver, or a SacError naming what is missing and the fallback."""
    missing = []
    try:
        import tensorrt as trt
    except ImportError:
        trt, missing = None, missing + ["tensorrt"]
    try:
        import pycuda.driver as cuda
    except ImportError:
        cuda, missing = None, missing + ["pycuda"]
    if missing:
        raise SacError(f"the TensorRT backend needs {' and '.join(missing)} (pip install "
                       f"tensorrt pycuda, on a machine with an NVIDIA GPU); {FALLBACK}")
    try:
        cuda.init()
        count = cuda.Device.count()
    except cuda.Error as exc:
        raise SacError(f"CUDA is not usable ({exc}); {FALLBACK}") from None
    if count == 0:
        raise SacError(f"no CUDA GPU found; {FALLBACK}")
    return trt, cuda


def sidecar_path(engine_path: Path) -> Path:
    """``model.engine`` -> ``model.engine.json``: what the engine was built with."""
    return engine_path.with_name(engine_path.name + ".json")


def make_logger(trt):
    class Logger(trt.ILogger):
        """Keeps warnings and errors so a failed load can say why."""

        def __init__(self):
            trt.ILogger.__init__(self)
            self.messages: list[str] = []

        def log(self, severity, msg):
            if int(severity) <= int(trt.ILogger.Severity.WARNING):
                self.messages.append(msg)

    return Logger()


class TensorRTBackend:
    name = "tensorrt"

    def __init__(self, model_path: str | Path, device_index: int = 0):
        trt, cuda = import_tensorrt()
        self.trt, self.cuda = trt, cuda
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise SacError(f"engine {self.model_path} does not exist")
        if device_index >= cuda.Device.count():
            raise SacError(f"GPU {device_index} does not exist ({cuda.Device.count()} found)")
        device = cuda.Device(device_index)
        self.gpu_name = device.name()
        major, minor = device.compute_capability()
        self.compute_capability = f"{major}.{minor}"
        self.metadata = self._read_sidecar()
        self._cuda_context = device.retain_primary_context()
        self._cuda_context.push()
        try:
            self._load(trt, cuda)
        finally:
            self._cuda_context.pop()

    # ------------------------------------------------------------------ loading

    def _read_sidecar(self) -> dict[str, str]:
        path = sidecar_path(self.model_path)
        if not path.is_file():
            return {}
        try:
            info = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            raise SacError(f"cannot read {path}: {exc}") from None
        built_trt = info.get("tensorrt_version")
        if built_trt and built_trt != self.trt.__version__:
            raise SacError(f"{self.model_path} was built with TensorRT {built_trt} but this is "
                           f"TensorRT {self.trt.__version__}; engines only run on the TensorRT "
                           "version (and GPU) that built them: rebuild it here with `sac export`")
        built_cc = info.get("compute_capability")
        if built_cc and built_cc != self.compute_capability:
            here = f"{self.gpu_name} ({self.compute_capability})"
            raise SacError(f"{self.model_path} was built for a {info.get('gpu', 'GPU')} (compute "
                           f"capability {built_cc}) but this is a {here}; rebuild it for this GPU "
                           "with `sac export`")
        return {str(k): str(v) for k, v in info.get("metadata", {}).items()}

    def _load(self, trt, cuda) -> None:
        logger = make_logger(trt)
        self._runtime = trt.Runtime(logger)
        engine = self._runtime.deserialize_cuda_engine(self.model_path.read_bytes())
        if engine is None:
            detail = " ".join(" ".join(logger.messages).split()) or "no details"
            raise SacError(f"{self.model_path} cannot be loaded by TensorRT {trt.__version__} on "
                           f"this {self.gpu_name}: it was built for another TensorRT version or "
                           f"GPU, or is not an engine ({detail}); rebuild it with `sac export`")
        self.engine = engine
        self.context = engine.create_execution_context()
        if self.context is None:
            raise SacError(f"TensorRT could not create an execution context for "
                           f"{self.model_path} (out of GPU memory?)")
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.output_names = [n for n in names if engine.get_tensor_mode(n) ==
                             trt.TensorIOMode.OUTPUT]
        if len(inputs) != 1:
            raise SacError(f"{self.model_path}: expected one image input, got {inputs}")
        self.input_name = inputs[0]
        shape = tuple(engine.get_tensor_shape(self.input_name))
        if len(shape) != 4:
            raise SacError(f"{self.model_path}: the input is {shape}, expected N x 3 x H x W")
        self._dtypes = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        if -1 in shape:
            lo, opt, hi = (tuple(s) for s in engine.get_tensor_profile_shape(self.input_name, 0))
            self.input_spec = InputSpec(min_hw=lo[2:], max_hw=hi[2:], opt_hw=opt[2:])
            largest = hi
        else:
            self.input_spec = InputSpec(fixed=shape[2:])
            largest = shape
        # One allocation per tensor, sized for the profile's largest input.
        self.context.set_input_shape(self.input_name, largest)
        self._host: dict[str, np.ndarray] = {}
        self._device: dict[str, object] = {}
        for name in names:
            dims = (largest if name == self.input_name
                    else tuple(self.context.get_tensor_shape(name)))
            count = int(np.prod(dims))
            self._host[name] = cuda.pagelocked_empty(count, self._dtypes[name])
            self._device[name] = cuda.mem_alloc(max(1, self._host[name].nbytes))
            self.context.set_tensor_address(name, int(self._device[name]))
        self._channels = {n: int(engine.get_tensor_shape(n)[1]) for n in self.output_names
                          if len(engine.get_tensor_shape(n)) == 4
                          and engine.get_tensor_shape(n)[1] > 0}
        self.stream = cuda.Stream()
        self._shape: tuple[int, ...] | None = None
        self._views: dict[str, np.ndarray] = {}

    # ------------------------------------------------------------------ running

    def output_channels(self, output: str) -> int | None:
        return self._channels.get(output)

    def _set_shape(self, shape: tuple[int, ...]) -> None:
        if not self.input_spec.accepts(shape[2], shape[3]):
            raise SacError(f"input {shape[3]}x{shape[2]} is outside the engine's profile "
                           f"({self.input_spec.describe()}); resize the frames or rebuild the "
                           "engine with `sac export --min-shape/--max-shape`")
        if not self.context.set_input_shape(self.input_name, shape):
            raise SacError(f"TensorRT rejected input shape {shape}")
        self._views = {self.input_name: self._host[self.input_name][:int(np.prod(shape))]
                       .reshape(shape)}
        for name in self.output_names:
            dims = tuple(self.context.get_tensor_shape(name))
            self._views[name] = self._host[name][:int(np.prod(dims))].reshape(dims)
        self._shape = shape

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        cuda = self.cuda
        self._cuda_context.push()
        try:
            if batch.shape != self._shape:
                self._set_shape(batch.shape)
            host_input = self._views[self.input_name]
            np.copyto(host_input, batch, casting="same_kind")  # float32 -> FP16 I/O if needed
            cuda.memcpy_htod_async(self._device[self.input_name], host_input, self.stream)
            if not self.context.execute_async_v3(self.stream.handle):
                raise SacError("TensorRT inference failed (execute_async_v3 returned False)")
            for name in self.output_names:
                cuda.memcpy_dtoh_async(self._views[name], self._device[name], self.stream)
            self.stream.synchronize()
        finally:
            self._cuda_context.pop()
        return {name: self._views[name] for name in self.output_names}

    def close(self) -> None:
        if getattr(self, "_cuda_context", None) is None:
            return
        self._cuda_context.push()
        try:
            for buffer in self._device.values():
                buffer.free()
            self._device.clear()
            self.context = self.engine = self._runtime = None
        finally:
            self._cuda_context.pop()
            self._cuda_context.detach()
            self._cuda_context = None
