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
    "codec": {"preset", "gop", "threads"},
    "mask": {"block_size", "roi_polygon", "non_roi_classes"},
    "eval": {"input", "start", "frames", "codecs", "crf_sweep", "delta_crfs", "paper_pairs",
             "uniform_reference", "matched_sac_roi_crf", "size_tolerance"},
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
    return cfg


def encoder_settings(section: dict[str, Any], codec: str = "h264",
                     fps: int = 30) -> EncoderSettings:
    return EncoderSettings(codec=codec, preset=section.get("preset", "veryfast"),
                           gop=int(section.get("gop", 30)), threads=int(section.get("threads", 0)),
                           fps=fps)
