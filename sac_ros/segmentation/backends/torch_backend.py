"""PyTorch backend: TorchScript files, or checkpoints written by `sac train` (their format
is defined here too: model weights, optimizer state and the run's settings)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from sac_ros.core.errors import SacError
from sac_ros.segmentation.backends.base import InputSpec


def import_torch():
    try:
        import torch
    except ImportError:
        raise SacError("the PyTorch backend needs torch: pip install 'sac_ros[train]' "
                       "(or use an .onnx model with onnxruntime)") from None
    return torch


FORMAT = "sac_ros-segmenter-checkpoint-v1"


def save_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Write atomically, so an interrupted run never leaves a half-written file."""
    torch = import_torch()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({"format": FORMAT, **state}, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    torch = import_torch()
    try:
        checkpoint = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a foreign file
        detail = " ".join(str(exc).split())[:300]
        raise SacError(f"{path} is neither TorchScript nor a sac train checkpoint "
                       f"({detail})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise SacError(f"{path} is not a sac train checkpoint (format {FORMAT})")
    return checkpoint


def model_from_checkpoint(checkpoint: dict[str, Any]):
    from sac_ros.segmentation.network import SacRoiNet

    model = SacRoiNet(int(checkpoint["num_classes"]), float(checkpoint["width"]),
                      int(checkpoint.get("depth", 0)))  # checkpoints before depth have 0
    # the averaged weights when the run kept them (what training validated), else the raw ones
    model.load_state_dict(checkpoint.get("averaged", checkpoint["model"]))
    return model


class TorchBackend:
    name = "torch"

    def __init__(self, model_path: str | Path, device: str = "auto", threads: int = 0):
        torch = import_torch()
        self.torch = torch
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise SacError(f"model {self.model_path} does not exist")
        if device == "cuda" and not torch.cuda.is_available():
            raise SacError("device 'cuda' requested but torch sees no CUDA GPU (use device: cpu)")
        self.device = torch.device("cuda" if device in ("auto", "cuda")
                                   and torch.cuda.is_available() else "cpu")
        if threads:
            torch.set_num_threads(threads)
        self.metadata: dict[str, str] = {}
        self.model, names = self._load()
        self.model.eval()
        self.output_names = names
        self.input_spec = InputSpec()
        self._channels: dict[str, int] = {}

    def _load(self):
        torch = self.torch
        try:
            module = torch.jit.load(str(self.model_path), map_location=self.device)
            return module, ["class_logits", "block_logits"]  # names fixed up on first run
        except RuntimeError:
            pass  # not TorchScript: try a checkpoint

        checkpoint = load_checkpoint(self.model_path)
        model = model_from_checkpoint(checkpoint).to(self.device)
        self.metadata = checkpoint_metadata(checkpoint)
        from sac_ros.segmentation.network import BLOCK_OUTPUT, CLASS_OUTPUT

        return model, [CLASS_OUTPUT, BLOCK_OUTPUT]

    def output_channels(self, output: str) -> int | None:
        return self._channels.get(output)

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        torch = self.torch
        with torch.inference_mode():
            result = self.model(torch.from_numpy(batch).to(self.device))
        if isinstance(result, dict):  # e.g. {"out": logits} from torchvision-style models
            self.output_names, tensors = list(result), list(result.values())
        else:
            tensors = list(result) if isinstance(result, (tuple, list)) else [result]
        if len(tensors) == 1:
            self.output_names = self.output_names[:1]
        outputs = {name: t.float().cpu().numpy()
                   for name, t in zip(self.output_names, tensors, strict=False)}
        for name, array in outputs.items():
            if array.ndim == 4:
                self._channels[name] = array.shape[1]
        return outputs

    def close(self) -> None:
        self.model = None


def checkpoint_metadata(checkpoint: dict) -> dict[str, str]:
    from sac_ros.segmentation.network_meta import sac_metadata

    return sac_metadata(checkpoint["class_map"], checkpoint["width"], checkpoint.get("depth", 0))


class ModuleBackend(TorchBackend):
    """An in-memory SacRoiNet (used for validation while training)."""

    def __init__(self, model, class_map: str, name: str = "model in training"):
        from sac_ros.segmentation.network_meta import sac_metadata

        torch = import_torch()
        self.torch = torch
        self.model = model
        self.model_path = Path(name)
        self.device = next(model.parameters()).device
        self.metadata = sac_metadata(class_map)
        self.output_names = ["class_logits", "block_logits"]
        self.input_spec = InputSpec()
        self._channels = {"class_logits": model.num_classes}

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        was_training = self.model.training
        self.model.eval()
        try:
            return super().infer(batch)
        finally:
            self.model.train(was_training)

    def close(self) -> None:
        pass  # the model belongs to the caller
