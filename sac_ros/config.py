"""Load and validate ``config/*.yaml`` (the only place configuration lives)."""

from __future__ import annotations

import copy
import os
import sys
from pathlib import Path
from typing import Any

import yaml

from sac_ros.core.classes import CLASS_MAPS
from sac_ros.core.codec import EncoderSettings, canonical_codec, check_crf
from sac_ros.core.errors import SacError
from sac_ros.core.ratecontrol import RATE_MODES, RateController

PACKAGE = "sac_ros"


def config_dir() -> Path:
    """The config folder: the source tree's, else the installed share/sac_ros/config."""
    source = Path(__file__).resolve().parent.parent / "config"
    if source.is_dir():
        return source
    for prefix in [sys.prefix, *os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)]:
        candidate = Path(prefix) / "share" / PACKAGE / "config"
        if prefix and candidate.is_dir():
            return candidate
    raise SacError("cannot find the sac_ros config folder; pass --config")


def load_yaml(path: str | Path | None, name: str = "sac.yaml") -> dict[str, Any]:
    path = Path(path) if path else config_dir() / name
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle) or {}
    except OSError as exc:
        raise SacError(f"cannot read config {path}: {exc.strerror}") from None
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        detail = " ".join(str(exc).split())  # SacError messages are printed as one line
        raise SacError(f"config {path} is not valid YAML: {detail}") from None
    if not isinstance(data, dict):
        raise SacError(f"config {path} must be a mapping at the top level")
    return data


SCHEMA = {
    "codec": {"preset", "gop", "threads", "aq_mode"},
    "mask": {"block_size", "roi_polygon", "non_roi_classes", "hysteresis_frames"},
    "eval": {"input", "start", "frames", "codecs", "crf_sweep", "delta_crfs", "paper_pairs",
             "uniform_reference", "matched_sac_roi_crf", "size_tolerance", "roi_qp_offsets"},
    "ratecontrol": {"modes", "spread", "roi_crf_range", "non_roi_crf_max", "cap_ratio",
                    "vbv_buffer_s", "margin", "halving_crf", "max_step", "gop_s", "frames"},
}


def _check_keys(data: dict, allowed: set[str], where: str) -> None:
    unknown = set(data) - allowed
    if unknown:
        raise SacError(f"unknown key(s) in {where}: {', '.join(sorted(unknown))}")


def _per_codec(table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise SacError(f"{where} must map codec names to values")
    return {canonical_codec(k): v for k, v in table.items()}


def load_core_config(path: str | Path | None = None) -> dict[str, Any]:
    """Load sac.yaml, validate every value, and return it with codecs canonicalised."""
    cfg = copy.deepcopy(load_yaml(path))
    _check_keys(cfg, set(SCHEMA), "config")
    for section, keys in SCHEMA.items():
        cfg.setdefault(section, {})
        if not isinstance(cfg[section], dict):
            raise SacError(f"config section '{section}' must be a mapping")
        _check_keys(cfg[section], keys, f"config section '{section}'")
    cfg["encoder"] = encoder_settings(cfg["codec"])
    mask = cfg["mask"]
    if int(mask.get("block_size", 16)) not in (8, 16, 32, 64):
        raise SacError("mask.block_size must be 8, 16, 32 or 64")
    hold = mask.setdefault("hysteresis_frames", 0)
    if isinstance(hold, bool) or not isinstance(hold, int) or not 0 <= hold <= 1000:
        raise SacError(f"mask.hysteresis_frames must be a whole number in 0-1000, got {hold!r}")
    classes = mask.get("non_roi_classes") or {}
    for name, ids in classes.items():
        if name not in CLASS_MAPS:
            raise SacError(f"mask.non_roi_classes: unknown class map '{name}'")
        if not all(isinstance(i, int) and 0 <= i <= 255 for i in ids):
            raise SacError(f"mask.non_roi_classes.{name} must be a list of ids in 0-255")
    ev = cfg["eval"]
    ev["codecs"] = [canonical_codec(c) for c in ev.get("codecs", ["h264", "hevc"])]
    for key in ("crf_sweep", "paper_pairs", "uniform_reference", "matched_sac_roi_crf"):
        ev[key] = _per_codec(ev.get(key, {}), f"eval.{key}")
    for codec in ev["codecs"]:
        for key in ("crf_sweep", "paper_pairs", "uniform_reference", "matched_sac_roi_crf"):
            if codec not in ev[key]:
                raise SacError(f"eval.{key} has no entry for codec {codec}")
        sweep_crfs = [check_crf(c, f"eval.crf_sweep.{codec}") for c in ev["crf_sweep"][codec]]
        if len(sweep_crfs) < 2:
            raise SacError(f"eval.crf_sweep.{codec} needs at least two CRFs")
        pair = ev["paper_pairs"][codec]
        if len(pair) != 2:
            raise SacError(f"eval.paper_pairs.{codec} must be [roi_crf, non_roi_crf]")
        for c in (*pair, ev["uniform_reference"][codec], ev["matched_sac_roi_crf"][codec]):
            check_crf(c, f"eval CRF for {codec}")
    for delta in ev.get("delta_crfs", []):
        if not 0 < float(delta) <= 51:
            raise SacError(f"eval.delta_crfs: {delta} must be in (0, 51]")
    if not 0 < float(ev.get("size_tolerance", 0.01)) < 0.5:
        raise SacError("eval.size_tolerance must be between 0 and 0.5")
    ev["roi_qp_offsets"] = _per_codec(ev.get("roi_qp_offsets", {}), "eval.roi_qp_offsets")
    for codec, offsets in ev["roi_qp_offsets"].items():
        if not isinstance(offsets, list) or not all(
                isinstance(o, (int, float)) and not isinstance(o, bool) and 0 < o <= 51
                for o in offsets):
            raise SacError(f"eval.roi_qp_offsets.{codec} must be a list of QP offsets in (0, 51]")
    _check_ratecontrol(cfg["ratecontrol"])
    return cfg


def encoder_settings(section: dict[str, Any], codec: str = "h264",
                     fps: int = 30) -> EncoderSettings:
    aq_mode = section.get("aq_mode")
    if aq_mode is not None and (isinstance(aq_mode, bool) or not isinstance(aq_mode, int)):
        raise SacError(f"codec.aq_mode must be a whole number or null, got {aq_mode!r}")
    return EncoderSettings(codec=codec, preset=section.get("preset", "veryfast"),
                           gop=int(section.get("gop", 30)), threads=int(section.get("threads", 0)),
                           fps=fps, aq_mode=aq_mode)


# ------------------------------------------------------------------ rate control

RATECONTROL_DEFAULTS = {
    "modes": ["roi_qp", "dual_crf"], "spread": {"dual_crf": 9.0, "roi_qp": 9.0},
    "roi_crf_range": [10.0, 36.0], "non_roi_crf_max": 51.0, "cap_ratio": 1.1,
    "vbv_buffer_s": 0.3, "margin": 0.03, "halving_crf": 5.0, "max_step": 8.0, "gop_s": 1.0,
    "frames": 221,
}


def _check_ratecontrol(section: dict[str, Any]) -> None:
    """Fill in the defaults and validate; the values themselves by building a controller."""
    where = "ratecontrol"
    for key, default in RATECONTROL_DEFAULTS.items():
        section.setdefault(key, copy.deepcopy(default))
    modes = section["modes"]
    if not isinstance(modes, list) or not modes or not set(modes) <= set(RATE_MODES):
        raise SacError(f"{where}.modes must be a list drawn from {', '.join(RATE_MODES)}")
    spread = section["spread"]
    if not isinstance(spread, dict) or set(spread) != {"dual_crf", "roi_qp"}:
        raise SacError(f"{where}.spread must give dual_crf and roi_qp")
    crf_range = section["roi_crf_range"]
    if not isinstance(crf_range, list) or len(crf_range) != 2:
        raise SacError(f"{where}.roi_crf_range must be [min, max]")
    for key in ("gop_s", "cap_ratio"):
        _number(section, key, where, 0.04 if key == "gop_s" else 1.0, 100.0, 1.0)
    frames = section["frames"]
    if isinstance(frames, bool) or not isinstance(frames, int) or frames < 2:
        raise SacError(f"{where}.frames must be a whole number >= 2")
    for mode in ("dual_crf", "roi_qp"):
        try:
            rate_controller(section, 1e6, 25.0, 25, mode)
        except SacError as exc:
            raise SacError(f"config {where}: {exc}") from None


def rate_gop(section: dict[str, Any], fps: float) -> int:
    """Key-frame interval under rate control: ``gop_s`` seconds, in whole frames."""
    return max(1, round(float(fps) * float(section["gop_s"])))


def rate_controller(section: dict[str, Any], target_bps: float, fps: float, gop: int,
                    mode: str, width: int | None = None, height: int | None = None,
                    block_size: int = 16, roi_share: float | None = None) -> RateController:
    """A ``RateController`` for one camera from the (validated) ``ratecontrol`` section.

    ``roi_share``: the first mask's ROI block fraction, for the first GOP's VBV split.
    """
    spread = section["spread"].get(mode, 0.0)
    low, high = section["roi_crf_range"]
    return RateController(
        target_bps, fps, gop, mode, spread=spread,
        cap_bps=float(target_bps) * float(section["cap_ratio"]),
        vbv_buffer_s=section["vbv_buffer_s"], margin=section["margin"], roi_crf_min=low,
        roi_crf_max=high, non_roi_crf_max=section["non_roi_crf_max"],
        halving_crf=section["halving_crf"], max_step=section["max_step"], width=width,
        height=height, block_size=block_size, roi_share=roi_share)


# ------------------------------------------------------------------ segmentation

SEGMENTATION_KEYS = {"model", "backend", "class_map", "input_size", "roi_threshold",
                     "block_threshold", "device", "threads", "on_size_mismatch", "normalize",
                     "train", "export"}
SEGMENTATION_TRAIN_KEYS = {"lr", "lr_schedule", "betas", "weight_decay", "batch_size", "epochs",
                           "crop", "scale", "width", "depth", "shadows", "ema", "seed"}
SEGMENTATION_EXPORT_KEYS = {"opt_shape", "min_shape", "max_shape", "fp16", "workspace_mb"}
LR_SCHEDULES = ("constant", "cosine")
MAX_DEPTH = 8  # SacRoiNet extra blocks per stride (train.depth, sac train --depth)
SEGMENTATION_BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
SEGMENTATION_CLASS_MAPS = ("auto", "cityscapes_train_ids", "cityscapes_label_ids", "kitti_step",
                           "four_class", "binary")


def _size_pair(value: Any, where: str, multiple: int = 32) -> list[int]:
    """A [width, height] pair of positive multiples of ``multiple``."""
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise SacError(f"{where} must be [width, height] in pixels")
    if any(v <= 0 or v % multiple for v in value):
        raise SacError(f"{where} {value[0]}x{value[1]}: width and height must be positive "
                       f"multiples of {multiple}")
    return [int(value[0]), int(value[1])]


def _number(section: dict, key: str, where: str, low: float, high: float,
            default: float) -> float:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise SacError(f"{where}.{key} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def load_segmentation_config(path: str | Path | None = None) -> dict[str, Any]:
    """Load segmentation.yaml, validate every value, and fill in the defaults."""
    cfg = copy.deepcopy(load_yaml(path, "segmentation.yaml"))
    _check_keys(cfg, SEGMENTATION_KEYS, "segmentation config")
    where = "segmentation config"
    cfg["model"] = str(cfg.get("model", "default"))
    if cfg.setdefault("backend", "auto") not in SEGMENTATION_BACKENDS:
        raise SacError(f"{where}: backend must be one of {', '.join(SEGMENTATION_BACKENDS)}")
    if cfg.setdefault("class_map", "auto") not in SEGMENTATION_CLASS_MAPS:
        raise SacError(f"{where}: class_map must be one of {', '.join(SEGMENTATION_CLASS_MAPS)}")
    size = cfg.setdefault("input_size", "native")
    if size != "native":
        cfg["input_size"] = _size_pair(size, f"{where}: input_size")
    for key in ("roi_threshold", "block_threshold"):
        cfg[key] = _number(cfg, key, where, 0.0, 1.0, 0.5)
    if cfg.setdefault("device", "auto") not in ("auto", "cpu", "cuda"):
        raise SacError(f"{where}: device must be auto, cpu or cuda")
    threads = cfg.setdefault("threads", 0)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 0:
        raise SacError(f"{where}: threads must be a whole number >= 0")
    if cfg.setdefault("on_size_mismatch", "resize") not in ("resize", "error"):
        raise SacError(f"{where}: on_size_mismatch must be resize or error")
    norm = cfg.setdefault("normalize", {})
    if not isinstance(norm, dict):
        raise SacError(f"{where}: normalize must be a mapping with mean and std")
    _check_keys(norm, {"mean", "std"}, f"{where} section 'normalize'")
    for key, default in (("mean", [123.675, 116.28, 103.53]), ("std", [58.395, 57.12, 57.375])):
        values = norm.setdefault(key, default)
        if (not isinstance(values, list) or len(values) != 3
                or not all(isinstance(v, (int, float)) for v in values)):
            raise SacError(f"{where}: normalize.{key} must be three numbers (R, G, B)")
        if key == "std" and any(v <= 0 for v in values):
            raise SacError(f"{where}: normalize.std values must be positive")
    train = cfg.setdefault("train", {})
    if not isinstance(train, dict):
        raise SacError(f"{where}: train must be a mapping")
    _check_keys(train, SEGMENTATION_TRAIN_KEYS, f"{where} section 'train'")
    train["lr"] = _number(train, "lr", f"{where}: train", 1e-7, 1.0, 3e-4)
    if train.setdefault("lr_schedule", "constant") not in LR_SCHEDULES:
        raise SacError(f"{where}: train.lr_schedule must be one of {', '.join(LR_SCHEDULES)}")
    train["weight_decay"] = _number(train, "weight_decay", f"{where}: train", 0.0, 1.0, 1e-5)
    betas = train.setdefault("betas", [0.9, 0.999])
    if (not isinstance(betas, list) or len(betas) != 2
            or not all(isinstance(b, (int, float)) and 0 <= b < 1 for b in betas)):
        raise SacError(f"{where}: train.betas must be two numbers in [0, 1)")
    for key, default, minimum in (("batch_size", 8, 1), ("epochs", 40, 1), ("seed", 0, 0)):
        value = train.setdefault(key, default)
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            raise SacError(f"{where}: train.{key} must be a whole number >= {minimum}")
    train["crop"] = _size_pair(train.get("crop", [768, 384]), f"{where}: train.crop", 64)
    scale = train.setdefault("scale", [0.5, 1.1])
    if (not isinstance(scale, list) or len(scale) != 2
            or not all(isinstance(s, (int, float)) and 0 < s <= 4 for s in scale)
            or scale[0] > scale[1]):
        raise SacError(f"{where}: train.scale must be [low, high] with 0 < low <= high <= 4")
    train["width"] = _number(train, "width", f"{where}: train", 0.25, 4.0, 1.5)
    depth = train.setdefault("depth", 0)
    if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= MAX_DEPTH:
        raise SacError(f"{where}: train.depth must be a whole number from 0 to {MAX_DEPTH}")
    train["shadows"] = _number(train, "shadows", f"{where}: train", 0.0, 1.0, 0.5)
    train["ema"] = _number(train, "ema", f"{where}: train", 0.0, 0.9999, 0.99)
    export = cfg.setdefault("export", {})
    if not isinstance(export, dict):
        raise SacError(f"{where}: export must be a mapping")
    _check_keys(export, SEGMENTATION_EXPORT_KEYS, f"{where} section 'export'")
    for key, default in (("min_shape", [512, 256]), ("opt_shape", [1024, 512]),
                         ("max_shape", [2048, 1024])):
        export[key] = _size_pair(export.get(key, default), f"{where}: export.{key}")
    lo, opt, hi = export["min_shape"], export["opt_shape"], export["max_shape"]
    if not all(lo[i] <= opt[i] <= hi[i] for i in range(2)):
        raise SacError(f"{where}: export shapes must satisfy min <= opt <= max")
    if not isinstance(export.setdefault("fp16", True), bool):
        raise SacError(f"{where}: export.fp16 must be true or false")
    export["workspace_mb"] = int(_number(export, "workspace_mb", f"{where}: export", 16,
                                         1 << 20, 1024))
    return cfg
