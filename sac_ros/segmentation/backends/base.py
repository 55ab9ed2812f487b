"""What every backend provides to the Segmenter."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np


@dataclass(frozen=True)
class InputSpec:
    """Input shapes a backend accepts (N x 3 x H x W, batch 1).

    ``fixed`` is (H, W) for a model with a static input size. ``min_hw`` and
    ``max_hw`` are a TensorRT profile's bounds (None: unbounded).
    """

    fixed: tuple[int, int] | None = None
    min_hw: tuple[int, int] | None = None
    max_hw: tuple[int, int] | None = None
    opt_hw: tuple[int, int] | None = None

    def accepts(self, height: int, width: int) -> bool:
        if self.fixed is not None:
            return (height, width) == self.fixed
        if self.min_hw and (height < self.min_hw[0] or width < self.min_hw[1]):
            return False
        if self.max_hw and (height > self.max_hw[0] or width > self.max_hw[1]):
            return False
        return True

    def describe(self) -> str:
        if self.fixed is not None:
            return f"{self.fixed[1]}x{self.fixed[0]}"
        lo = f"{self.min_hw[1]}x{self.min_hw[0]}" if self.min_hw else "any"
        hi = f"{self.max_hw[1]}x{self.max_hw[0]}" if self.max_hw else "any"
        return f"min {lo}, max {hi}"


class Backend(Protocol):
    name: str
    model_path: Path
    metadata: dict[str, str]     # sac_* keys written by `sac export` / `sac train`
    output_names: list[str]
    input_spec: InputSpec

    def output_channels(self, output: str) -> int | None:
        """Channel count of an output when the model states it, else None."""

    def infer(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """Run one N x 3 x H x W float32 batch; returns outputs by name.

        Returned arrays may be views of buffers reused by the next call.
        """

    def close(self) -> None:
        ...


def static_dim(value) -> int | None:
    """An ONNX / TensorRT dimension as an int, or None when symbolic or dynamic."""
    return value if isinstance(value, int) and value > 0 else None
