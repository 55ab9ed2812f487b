"""Open a model file on the right backend and wrap it in a Segmenter."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sac_ros.core.errors import SacError
from sac_ros.segmentation.classmaps import ClassMapAdapter
from sac_ros.segmentation.segmenter import Segmenter, SegmenterMaskSource

if TYPE_CHECKING:
    from sac_ros.config import SegmentationConfig

DEFAULT_MODEL = Path(__file__).resolve().parent / "models" / "sac_roi_default.onnx"
BACKEND_BY_SUFFIX = {".onnx": "onnxruntime", ".engine": "tensorrt", ".plan": "tensorrt",
                     ".trt": "tensorrt", ".pt": "torch", ".pth": "torch", ".ts": "torch"}


def resolve_model(spec: str | Path) -> Path:
    """``default`` is the shipped ONNX model; anything else is a path."""
    if str(spec) == "default":
        if not DEFAULT_MODEL.is_file():
            raise SacError(f"the default model {DEFAULT_MODEL} is missing from this install")
        return DEFAULT_MODEL
    path = Path(spec)
    if not path.is_file():
        raise SacError(f"model {spec} does not exist")
    return path


def choose_backend(path: Path, requested: str = "auto") -> str:
    if requested != "auto":
        return requested
    backend = BACKEND_BY_SUFFIX.get(path.suffix.lower())
    if backend is None:
        raise SacError(f"cannot tell the backend of {path.name} from its extension; use one of "
                       f"{', '.join(sorted(BACKEND_BY_SUFFIX))} or set backend in the config")
    return backend


def open_backend(name: str, path: Path, device: str = "auto", threads: int = 0):
    if name == "onnxruntime":
        from sac_ros.segmentation.backends.ort_backend import OnnxRuntimeBackend

        return OnnxRuntimeBackend(path, device, threads)
    if name == "tensorrt":
        from sac_ros.segmentation.backends.trt_backend import TensorRTBackend

        return TensorRTBackend(path)
    if name == "torch":
        from sac_ros.segmentation.backends.torch_backend import TorchBackend

        return TorchBackend(path, device, threads)
    raise SacError(f"unknown backend '{name}'")


def load_segmenter(cfg: SegmentationConfig | None = None, model: str | Path | None = None,
                   backend: str | None = None, input_size: Any = None,
                   non_roi_ids: Iterable[int] | None = None) -> Segmenter:
    """A Segmenter from a validated segmentation config, with optional overrides."""
    if cfg is None:
        from sac_ros.config import load_segmentation_config

        cfg = load_segmentation_config()
    path = resolve_model(model if model is not None else cfg.model)
    engine = open_backend(choose_backend(path, backend or cfg.backend), path, cfg.device,
                          cfg.threads)
    try:
        meta = engine.metadata
        class_map = cfg.class_map
        if class_map == "auto":
            class_map = meta.get("sac_class_map")
            if class_map is None:
                raise SacError(f"{path.name} does not say which labels it outputs; set "
                               "class_map in the segmentation config (cityscapes_train_ids, "
                               "cityscapes_label_ids, kitti_step, four_class or binary)")
        adapter = ClassMapAdapter(class_map, non_roi_ids)
        own_normalisation = meta.get("sac_input") == "rgb255"
        normalize = None if own_normalisation else (cfg.normalize.mean, cfg.normalize.std)
        return Segmenter(engine, adapter,
                         input_size=input_size if input_size is not None else cfg.input_size,
                         roi_threshold=cfg.roi_threshold,
                         block_threshold=cfg.block_threshold, normalize=normalize,
                         on_size_mismatch=cfg.on_size_mismatch)
    except BaseException:
        engine.close()
        raise


def segmenter_mask_source(model: str, non_roi_classes: dict) -> tuple[SegmenterMaskSource, str]:
    """A segmenter as the mask source of an offline run (``sac eval --model``), from the config.

    (mask source, description); ``non_roi_classes`` are sac.yaml's overrides.
    """
    from sac_ros.config import load_segmentation_config

    segmenter = load_segmenter(load_segmentation_config(), model)
    overrides = non_roi_classes.get(segmenter.class_adapter.name)
    if overrides is not None:  # sac.yaml mask.non_roi_classes applies to the model's labels
        segmenter.set_non_roi_ids(overrides)
    return segmenter.mask_source(), f"segmenter {segmenter.name}"
