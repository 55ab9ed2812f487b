"""Checkpoints written by `sac train`: model weights, optimizer state and the run's settings."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from sac_ros.core.errors import SacError
from sac_ros.segmentation.backends.torch_backend import import_torch

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
