"""ONNX Runtime backend: the CPU provider, plus the CUDA provider when it is present."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sac_ros.core.errors import SacError
from sac_ros.segmentation.backends.base import InputSpec, static_dim


class OnnxRuntimeBackend:
    name = "onnxruntime"

    def __init__(self, model_path: str | Path, device: str = "auto", threads: int = 0):
        try:
            import onnxruntime as ort
        except ImportError:
            raise SacError("onnxruntime is not installed: pip install onnxruntime") from None
        self.model_path = Path(model_path)
        available = ort.get_available_providers()
        if device == "cuda" and "CUDAExecutionProvider" not in available:
            raise SacError("device 'cuda' needs onnxruntime-gpu with a CUDA GPU; this "
                           f"onnxruntime offers {', '.join(available)} (use device: cpu)")
        providers = ["CPUExecutionProvider"]
        if device in ("auto", "cuda") and "CUDAExecutionProvider" in available:
            providers.insert(0, "CUDAExecutionProvider")
        options = ort.SessionOptions()
        # Idle pool threads otherwise spin after each run and steal the CPU from the
        # encoders sharing the node (measured: RGB->I420 went from 3 to 14 ms per frame).
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.add_session_config_entry("session.inter_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = threads
        options.log_severity_level = 3  # keep the CUDA provider's fallback chatter off stderr
        try:
            self.session = ort.InferenceSession(str(self.model_path), options,
                                                providers=providers)
        except Exception as exc:  # onnxruntime raises its own exception types
            detail = " ".join(str(exc).split())
            raise SacError(f"onnxruntime cannot load {self.model_path}: {detail}") from None
        self.providers = self.session.get_providers()
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise SacError(f"{self.model_path}: expected one N x 3 x H x W image input, got "
                           + ", ".join(f"{i.name} {i.shape}" for i in inputs))
        self.input_name = inputs[0].name
        self.input_dtype = np.float16 if inputs[0].type == "tensor(float16)" else np.float32
        shape = inputs[0].shape
        if static_dim(shape[1]) not in (None, 3):
            raise SacError(f"{self.model_path}: the input has {shape[1]} channels, expected 3")
        height, width = static_dim(shape[2]), static_dim(shape[3])
        self.input_spec = InputSpec(fixed=(height, width) if height and width else None)
        self._outputs = {o.name: o.shape for o in self.session.get_outputs()}
        self.output_names = list(self._outputs)
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)

    def output_channels(self, output: str) -> int | None:
        shape = self._outputs[output]
        return static_dim(shape[1]) if len(shape) == 4 else None

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        if batch.dtype != self.input_dtype:
            batch = batch.astype(self.input_dtype)
        results = self.session.run(None, {self.input_name: batch})
        return dict(zip(self.output_names, results, strict=True))

    def close(self) -> None:
        self.session = None
