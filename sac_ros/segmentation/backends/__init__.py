"""Inference backends: ONNX Runtime (CPU, CUDA), TensorRT engines, PyTorch."""

from sac_ros.segmentation.backends.base import Backend, InputSpec

__all__ = ["Backend", "InputSpec"]
