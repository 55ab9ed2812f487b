"""PyTorch backend: TorchScript files, or checkpoints written by `sac train`."""

from __future__ import annotations

from pathlib import Path

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
        from sac_ros.segmentation.checkpoint import load_checkpoint, model_from_checkpoint

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
