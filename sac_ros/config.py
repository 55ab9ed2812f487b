"""Load and validate ``config/*.yaml`` (the only place configuration lives).

The loaders return frozen dataclasses. Every default is defined once, as a field
default below; the codec's are ``EncoderSettings``' own, and the ROI polygon has no
default in code: ``config/sac.yaml`` ``mask.roi_polygon`` is its one definition.
Every value is validated at load, with a one-line ``SacError``.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sac_ros.core.classes import CLASS_MAPS
from sac_ros.core.classqp import check_offsets
from sac_ros.core.codec import EncoderSettings, canonical_codec, check_crf
from sac_ros.core.errors import SacError
from sac_ros.core.mask import PolygonMaskSource
from sac_ros.core.prefilter import Prefilter
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


# ------------------------------------------------------------------ sac.yaml

@dataclass(frozen=True)
class MaskConfig:
    """sac.yaml ``mask``."""

    roi_polygon: tuple[tuple[float, float], ...]  # (x, y) in 0-1, y down; no default
    block_size: int = 16
    non_roi_classes: dict[str, list[int]] = field(default_factory=dict)  # per class map
    hysteresis_frames: int = 0
    segment_every: int = 1  # segmenter: every N-th (and key) frame, carried in between
    carry: str = "motion"   # between segmentations: along the block motion, or held still


@dataclass(frozen=True)
class EvalConfig:
    """sac.yaml ``eval``: per-codec tables are keyed by canonical codec names."""

    input: str = "sample"
    start: int = 0
    frames: int = 60
    codecs: tuple[str, ...] = ("h264", "hevc")
    crf_sweep: dict[str, list[float]] = field(default_factory=dict)
    delta_crfs: tuple[float, ...] = ()
    paper_pairs: dict[str, list[float]] = field(default_factory=dict)
    uniform_reference: dict[str, float] = field(default_factory=dict)
    matched_sac_roi_crf: dict[str, float] = field(default_factory=dict)
    size_tolerance: float = 0.01
    roi_qp_offsets: dict[str, list[float]] = field(default_factory=dict)
    perception_model: str | None = None  # task accuracy on reconstructions (eval/task.py)
    task_frames: int | None = None       # frames of each run it segments; None = all


@dataclass(frozen=True)
class RateControlConfig:
    """sac.yaml ``ratecontrol`` (``sac eval --target-mbps`` writes it as given here)."""

    modes: tuple[str, ...] = ("roi_qp", "dual_crf")
    spread: dict[str, float] = field(default_factory=lambda: {"dual_crf": 9.0, "roi_qp": 9.0})
    roi_crf_range: tuple[float, float] = (10.0, 36.0)
    non_roi_crf_max: float = 51.0
    cap_ratio: float = 1.1
    vbv_buffer_s: float = 0.3
    margin: float = 0.03
    halving_crf: float = 5.0
    max_step: float = 8.0
    gop_s: float = 1.0
    frames: int = 221


@dataclass(frozen=True)
class ClassQpConfig:
    """sac.yaml ``class_qp``: per-category QP offsets for roi_qp (core/classqp.py)."""

    enabled: bool = False
    offsets: dict[str, float] = field(default_factory=dict)  # validated: all categories


@dataclass(frozen=True)
class CoreConfig:
    """config/sac.yaml. ``codec`` holds its codec section as encoder settings (codec h264
    at 30 fps until a caller replaces them: ``dataclasses.replace(cfg.codec, ...)``)."""

    codec: EncoderSettings
    mask: MaskConfig
    eval: EvalConfig
    ratecontrol: RateControlConfig
    prefilter: Prefilter = Prefilter()   # sac.yaml prefilter (non-ROI pre-filtering)
    class_qp: ClassQpConfig = ClassQpConfig()


CODEC_KEYS = ("preset", "gop", "threads", "aq_mode")  # sac.yaml codec: EncoderSettings fields
EVAL_CODEC_TABLES = ("crf_sweep", "paper_pairs", "uniform_reference", "matched_sac_roi_crf")


def _names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


def _check_keys(data: dict, allowed: set[str], where: str) -> None:
    unknown = set(data) - allowed
    if unknown:
        raise SacError(f"unknown key(s) in {where}: {', '.join(sorted(unknown))}")


def _sections(data: dict, keys: dict[str, set[str]], where: str = "config") -> dict[str, dict]:
    """The mapping sections of ``data`` (missing ones empty), their keys checked."""
    sections = {}
    for name, allowed in keys.items():
        section = data.get(name, {})
        if not isinstance(section, dict):
            raise SacError(f"{where} section '{name}' must be a mapping")
        _check_keys(section, allowed, f"{where} section '{name}'")
        sections[name] = section
    return sections


def _per_codec(table: Any, where: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise SacError(f"{where} must map codec names to values")
    return {canonical_codec(k): v for k, v in table.items()}


def _whole(value: Any, low: int, high: int | None = None) -> bool:
    """Whether ``value`` is a whole number (not a bool) in [low, high]."""
    return (isinstance(value, int) and not isinstance(value, bool) and value >= low
            and (high is None or value <= high))


def load_core_config(path: str | Path | None = None) -> CoreConfig:
    """Load sac.yaml and validate every value; codec names are canonicalised."""
    data = load_yaml(path)
    keys = {"codec": set(CODEC_KEYS), "mask": _names(MaskConfig), "eval": _names(EvalConfig),
            "ratecontrol": _names(RateControlConfig),
            "prefilter": {"nonroi_filter", "nonroi_filter_strength"},
            "class_qp": _names(ClassQpConfig)}
    _check_keys(data, set(keys), "config")
    sections = _sections(data, keys)
    codec = _codec(sections["codec"])
    evaluation = _eval(sections["eval"])
    ratecontrol = _ratecontrol(sections["ratecontrol"])
    return CoreConfig(codec, _mask(sections["mask"]), evaluation, ratecontrol,
                      *_task_coding(sections["prefilter"], sections["class_qp"]))


def _task_coding(prefilter: dict[str, Any],
                 class_qp: dict[str, Any]) -> tuple[Prefilter, ClassQpConfig]:
    """sac.yaml ``prefilter`` and ``class_qp`` (missing sections: off)."""
    try:
        pre = Prefilter(prefilter.get("nonroi_filter", "none"),
                        prefilter.get("nonroi_filter_strength", 2.0))
    except SacError as exc:
        raise SacError(f"config prefilter: {exc}") from None
    enabled = class_qp.get("enabled", False)
    if not isinstance(enabled, bool):
        raise SacError(f"class_qp.enabled must be true or false, got {enabled!r}")
    offsets = class_qp.get("offsets")
    if offsets is None and enabled:
        raise SacError("class_qp.enabled needs class_qp.offsets")
    return pre, ClassQpConfig(enabled, {} if offsets is None else check_offsets(offsets))


def _codec(section: dict[str, Any]) -> EncoderSettings:
    aq_mode = section.get("aq_mode")
    if aq_mode is not None and (isinstance(aq_mode, bool) or not isinstance(aq_mode, int)):
        raise SacError(f"codec.aq_mode must be a whole number or null, got {aq_mode!r}")
    whole = {key: int(section[key]) for key in ("gop", "threads") if key in section}
    return EncoderSettings(**{**section, **whole})


def encoder_settings(cfg: CoreConfig, preset: str | None = None, fps: float = 30,
                     codec: str | None = None) -> EncoderSettings:
    """The codec section's settings for ``codec`` (default: h264) at ``fps`` (in whole
    frames, at least 1), with ``preset`` instead of the configured one when given."""
    return dataclasses.replace(cfg.codec, codec=codec or cfg.codec.codec,
                               preset=preset or cfg.codec.preset, fps=max(1, round(fps)))


def _mask(section: dict[str, Any]) -> MaskConfig:
    if "roi_polygon" not in section:
        raise SacError("config mask.roi_polygon is missing (the static ROI polygon)")
    mask = MaskConfig(**section)
    if int(mask.block_size) not in (8, 16, 32, 64):
        raise SacError("mask.block_size must be 8, 16, 32 or 64")
    hold = mask.hysteresis_frames
    if not _whole(hold, 0, 1000):
        raise SacError(f"mask.hysteresis_frames must be a whole number in 0-1000, got {hold!r}")
    if not _whole(mask.segment_every, 1, 1000):
        raise SacError(f"mask.segment_every must be a whole number in 1-1000, got "
                       f"{mask.segment_every!r}")
    if mask.carry not in ("motion", "still"):
        raise SacError(f"mask.carry must be motion or still, got {mask.carry!r}")
    classes = mask.non_roi_classes or {}
    if not isinstance(classes, dict):
        raise SacError("mask.non_roi_classes must map class maps to lists of ids")
    for name, ids in classes.items():
        if name not in CLASS_MAPS:
            raise SacError(f"mask.non_roi_classes: unknown class map '{name}'")
        if not all(isinstance(i, int) and 0 <= i <= 255 for i in ids):
            raise SacError(f"mask.non_roi_classes.{name} must be a list of ids in 0-255")
    try:
        polygon = PolygonMaskSource(mask.roi_polygon).polygon  # validated, (x, y) floats
    except (TypeError, ValueError):
        raise SacError("mask.roi_polygon must be a list of [x, y] points in 0-1") from None
    return dataclasses.replace(mask, roi_polygon=tuple(polygon), block_size=int(mask.block_size),
                               non_roi_classes=classes)


def _eval(section: dict[str, Any]) -> EvalConfig:
    ev = EvalConfig(**section)
    tables = {key: _per_codec(getattr(ev, key), f"eval.{key}") for key in EVAL_CODEC_TABLES}
    codecs = tuple(canonical_codec(c) for c in ev.codecs)
    for codec in codecs:
        for key in EVAL_CODEC_TABLES:
            if codec not in tables[key]:
                raise SacError(f"eval.{key} has no entry for codec {codec}")
        sweep_crfs = [check_crf(c, f"eval.crf_sweep.{codec}") for c in tables["crf_sweep"][codec]]
        if len(sweep_crfs) < 2:
            raise SacError(f"eval.crf_sweep.{codec} needs at least two CRFs")
        pair = tables["paper_pairs"][codec]
        if len(pair) != 2:
            raise SacError(f"eval.paper_pairs.{codec} must be [roi_crf, non_roi_crf]")
        for c in (*pair, tables["uniform_reference"][codec],
                  tables["matched_sac_roi_crf"][codec]):
            check_crf(c, f"eval CRF for {codec}")
    for delta in ev.delta_crfs:
        if not 0 < float(delta) <= 51:
            raise SacError(f"eval.delta_crfs: {delta} must be in (0, 51]")
    if not 0 < float(ev.size_tolerance) < 0.5:
        raise SacError("eval.size_tolerance must be between 0 and 0.5")
    offsets = _per_codec(ev.roi_qp_offsets, "eval.roi_qp_offsets")
    for codec, values in offsets.items():
        if not isinstance(values, list) or not all(
                isinstance(o, (int, float)) and not isinstance(o, bool) and 0 < o <= 51
                for o in values):
            raise SacError(f"eval.roi_qp_offsets.{codec} must be a list of QP offsets in (0, 51]")
    if ev.perception_model is not None and (not isinstance(ev.perception_model, str)
                                            or not ev.perception_model):
        raise SacError("eval.perception_model must be 'default', a model path or null")
    if ev.task_frames is not None and not _whole(ev.task_frames, 1):
        raise SacError("eval.task_frames must be a whole number >= 1 or null (every frame)")
    return dataclasses.replace(
        ev, input=str(ev.input), start=int(ev.start), frames=int(ev.frames), codecs=codecs,
        delta_crfs=tuple(ev.delta_crfs), size_tolerance=float(ev.size_tolerance),
        roi_qp_offsets=offsets, **tables)


# ------------------------------------------------------------------ rate control

def _ratecontrol(section: dict[str, Any]) -> RateControlConfig:
    """Validate the section; the values themselves by building a controller."""
    where = "ratecontrol"
    rc = RateControlConfig(**section)
    if (not isinstance(rc.modes, (list, tuple)) or not rc.modes
            or not set(rc.modes) <= set(RATE_MODES)):
        raise SacError(f"{where}.modes must be a list drawn from {', '.join(RATE_MODES)}")
    if not isinstance(rc.spread, dict) or set(rc.spread) != {"dual_crf", "roi_qp"}:
        raise SacError(f"{where}.spread must give dual_crf and roi_qp")
    if not isinstance(rc.roi_crf_range, (list, tuple)) or len(rc.roi_crf_range) != 2:
        raise SacError(f"{where}.roi_crf_range must be [min, max]")
    _number(rc.gop_s, f"{where}.gop_s", 0.04, 100.0)
    _number(rc.cap_ratio, f"{where}.cap_ratio", 1.0, 100.0)
    if not _whole(rc.frames, 2):
        raise SacError(f"{where}.frames must be a whole number >= 2")
    rc = dataclasses.replace(rc, modes=tuple(rc.modes), roi_crf_range=tuple(rc.roi_crf_range))
    for mode in ("dual_crf", "roi_qp"):
        try:
            rate_controller(rc, 1e6, 25.0, 25, mode)
        except SacError as exc:
            raise SacError(f"config {where}: {exc}") from None
    return rc


def rate_gop(section: RateControlConfig, fps: float) -> int:
    """Key-frame interval under rate control: ``gop_s`` seconds, in whole frames."""
    return max(1, round(float(fps) * float(section.gop_s)))


def rate_controller(section: RateControlConfig, target_bps: float, fps: float, gop: int,
                    mode: str, width: int | None = None, height: int | None = None,
                    block_size: int = 16, roi_share: float | None = None) -> RateController:
    """A ``RateController`` for one camera from the (validated) ``ratecontrol`` section.

    ``roi_share``: the first mask's ROI block fraction, for the first GOP's VBV split.
    """
    spread = section.spread.get(mode, 0.0)
    low, high = section.roi_crf_range
    return RateController(
        target_bps, fps, gop, mode, spread=spread,
        cap_bps=float(target_bps) * float(section.cap_ratio),
        vbv_buffer_s=section.vbv_buffer_s, margin=section.margin, roi_crf_min=low,
        roi_crf_max=high, non_roi_crf_max=section.non_roi_crf_max,
        halving_crf=section.halving_crf, max_step=section.max_step, width=width,
        height=height, block_size=block_size, roi_share=roi_share)


# ------------------------------------------------------------------ segmentation.yaml

LR_SCHEDULES = ("constant", "cosine")
MAX_DEPTH = 8  # SacRoiNet extra blocks per stride (train.depth, sac train --depth)
SEGMENTATION_BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
SEGMENTATION_CLASS_MAPS = ("auto", "cityscapes_train_ids", "cityscapes_label_ids", "kitti_step",
                           "four_class", "binary")


@dataclass(frozen=True)
class NormalizeConfig:
    """Input normalisation (0-255 scale) for models without sac metadata: ImageNet's."""

    mean: tuple[float, float, float] = (123.675, 116.28, 103.53)
    std: tuple[float, float, float] = (58.395, 57.12, 57.375)


@dataclass(frozen=True)
class TrainConfig:
    """segmentation.yaml ``train``: the papers' recipe (``sac train``'s defaults)."""

    lr: float = 3e-4
    lr_schedule: str = "constant"
    betas: tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 1e-5
    batch_size: int = 8
    epochs: int = 40
    crop: tuple[int, int] = (768, 384)
    scale: tuple[float, float] = (0.6, 1.1)
    width: float = 1.5
    depth: int = 0
    shadows: float = 0.5
    ema: float = 0.99
    seed: int = 0


@dataclass(frozen=True)
class ExportConfig:
    """segmentation.yaml ``export``: the TensorRT profile, (width, height) each."""

    opt_shape: tuple[int, int] = (1024, 512)
    min_shape: tuple[int, int] = (512, 256)
    max_shape: tuple[int, int] = (2048, 1024)
    fp16: bool = True
    workspace_mb: int = 1024


@dataclass(frozen=True)
class SegmentationConfig:
    """config/segmentation.yaml."""

    model: str = "default"
    backend: str = "auto"
    class_map: str = "auto"
    input_size: str | tuple[int, int] = "native"
    roi_threshold: float = 0.5
    block_threshold: float = 0.5
    device: str = "auto"
    threads: int = 0
    on_size_mismatch: str = "resize"
    normalize: NormalizeConfig = NormalizeConfig()
    train: TrainConfig = TrainConfig()
    export: ExportConfig = ExportConfig()


def _size_pair(value: Any, where: str, multiple: int = 32) -> tuple[int, int]:
    """A [width, height] pair of positive multiples of ``multiple``."""
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise SacError(f"{where} must be [width, height] in pixels")
    if any(v <= 0 or v % multiple for v in value):
        raise SacError(f"{where} {value[0]}x{value[1]}: width and height must be positive "
                       f"multiples of {multiple}")
    return int(value[0]), int(value[1])


def _number(value: Any, name: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
        raise SacError(f"{name} must be a number in [{low:g}, {high:g}], got {value!r}")
    return float(value)


def _choice(value: Any, choices: tuple[str, ...], message: str) -> str:
    if value not in choices:
        raise SacError(message)
    return value


def load_segmentation_config(path: str | Path | None = None) -> SegmentationConfig:
    """Load segmentation.yaml and validate every value."""
    data = load_yaml(path, "segmentation.yaml")
    where = "segmentation config"
    nested = {"normalize": NormalizeConfig, "train": TrainConfig, "export": ExportConfig}
    _check_keys(data, _names(SegmentationConfig), where)
    for name in nested:
        if not isinstance(data.get(name, {}), dict):
            raise SacError(f"{where}: {name} must be a mapping"
                           + (" with mean and std" if name == "normalize" else ""))
    sections = _sections(data, {name: _names(cls) for name, cls in nested.items()},
                         f"{where}")
    top = {k: v for k, v in data.items() if k not in nested}
    cfg = SegmentationConfig(**top)
    size = cfg.input_size
    threads = cfg.threads
    if not _whole(threads, 0):
        raise SacError(f"{where}: threads must be a whole number >= 0")
    return dataclasses.replace(
        cfg, model=str(cfg.model),
        backend=_choice(cfg.backend, SEGMENTATION_BACKENDS,
                        f"{where}: backend must be one of {', '.join(SEGMENTATION_BACKENDS)}"),
        class_map=_choice(cfg.class_map, SEGMENTATION_CLASS_MAPS, f"{where}: class_map must "
                          f"be one of {', '.join(SEGMENTATION_CLASS_MAPS)}"),
        input_size=size if size == "native" else _size_pair(size, f"{where}: input_size"),
        roi_threshold=_number(cfg.roi_threshold, f"{where}.roi_threshold", 0.0, 1.0),
        block_threshold=_number(cfg.block_threshold, f"{where}.block_threshold", 0.0, 1.0),
        device=_choice(cfg.device, ("auto", "cpu", "cuda"),
                       f"{where}: device must be auto, cpu or cuda"),
        on_size_mismatch=_choice(cfg.on_size_mismatch, ("resize", "error"),
                                 f"{where}: on_size_mismatch must be resize or error"),
        normalize=_normalize(sections["normalize"], where),
        train=_train(sections["train"], where), export=_export(sections["export"], where))


def _normalize(section: dict[str, Any], where: str) -> NormalizeConfig:
    norm = NormalizeConfig(**section)
    for key in ("mean", "std"):
        values = getattr(norm, key)
        if (not isinstance(values, (list, tuple)) or len(values) != 3
                or not all(isinstance(v, (int, float)) for v in values)):
            raise SacError(f"{where}: normalize.{key} must be three numbers (R, G, B)")
        if key == "std" and any(v <= 0 for v in values):
            raise SacError(f"{where}: normalize.std values must be positive")
    return NormalizeConfig(tuple(norm.mean), tuple(norm.std))


def _train(section: dict[str, Any], where: str) -> TrainConfig:
    train = TrainConfig(**section)
    if not (isinstance(train.betas, (list, tuple)) and len(train.betas) == 2
            and all(isinstance(b, (int, float)) and 0 <= b < 1 for b in train.betas)):
        raise SacError(f"{where}: train.betas must be two numbers in [0, 1)")
    for key, minimum in (("batch_size", 1), ("epochs", 1), ("seed", 0)):
        if not _whole(getattr(train, key), minimum):
            raise SacError(f"{where}: train.{key} must be a whole number >= {minimum}")
    scale = train.scale
    if (not isinstance(scale, (list, tuple)) or len(scale) != 2
            or not all(isinstance(s, (int, float)) and 0 < s <= 4 for s in scale)
            or scale[0] > scale[1]):
        raise SacError(f"{where}: train.scale must be [low, high] with 0 < low <= high <= 4")
    if not _whole(train.depth, 0, MAX_DEPTH):
        raise SacError(f"{where}: train.depth must be a whole number from 0 to {MAX_DEPTH}")
    name = f"{where}: train"
    return dataclasses.replace(
        train, lr=_number(train.lr, f"{name}.lr", 1e-7, 1.0),
        lr_schedule=_choice(train.lr_schedule, LR_SCHEDULES, f"{where}: train.lr_schedule "
                            f"must be one of {', '.join(LR_SCHEDULES)}"),
        weight_decay=_number(train.weight_decay, f"{name}.weight_decay", 0.0, 1.0),
        betas=tuple(train.betas), crop=_size_pair(train.crop, f"{name}.crop", 64),
        scale=tuple(scale), width=_number(train.width, f"{name}.width", 0.25, 4.0),
        shadows=_number(train.shadows, f"{name}.shadows", 0.0, 1.0),
        ema=_number(train.ema, f"{name}.ema", 0.0, 0.9999))


def _export(section: dict[str, Any], where: str) -> ExportConfig:
    export = ExportConfig(**section)
    lo, opt, hi = (_size_pair(getattr(export, key), f"{where}: export.{key}")
                   for key in ("min_shape", "opt_shape", "max_shape"))
    if not all(lo[i] <= opt[i] <= hi[i] for i in range(2)):
        raise SacError(f"{where}: export shapes must satisfy min <= opt <= max")
    if not isinstance(export.fp16, bool):
        raise SacError(f"{where}: export.fp16 must be true or false")
    return dataclasses.replace(
        export, min_shape=lo, opt_shape=opt, max_shape=hi,
        workspace_mb=int(_number(export.workspace_mb, f"{where}: export.workspace_mb", 16,
                                 1 << 20)))
