"""Camera calibration for ``sensor_msgs/CameraInfo``: ROS YAML, Cityscapes JSON, KITTI calib.

- ``*.yaml`` / ``*.yml``: the ROS ``camera_info`` file (camera_calibration_parsers format:
  image_width, image_height, camera_matrix, distortion_model, distortion_coefficients,
  rectification_matrix, projection_matrix).
- ``*.json``: a Cityscapes ``camera/<split>/<city>/*_camera.json`` (intrinsic fx, fy, u0, v0;
  the images are rectified, so no distortion).
- ``*.txt``: a KITTI calibration file; the projection ``P2`` (left colour camera) or
  ``P_rect_02``, or another key given as ``FILE:KEY``.

Resizing the frames scales the intrinsics (pixel-centre convention).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from sac_ros.core.errors import SacError


@dataclass
class Calibration:
    width: int | None            # None: the frames' size
    height: int | None
    k: np.ndarray                # 3 x 3
    p: np.ndarray                # 3 x 4
    d: list[float] = field(default_factory=list)
    r: np.ndarray = field(default_factory=lambda: np.eye(3))
    distortion_model: str = "plumb_bob"
    source: str = ""

    def scaled(self, src_w: int, src_h: int, dst_w: int, dst_h: int) -> Calibration:
        """Intrinsics for frames resized from src to dst (pixel centres stay aligned)."""
        if (self.width, self.height) not in ((None, None), (src_w, src_h)):
            raise SacError(f"calibration {self.source} is for {self.width}x{self.height} "
                           f"images but the frames are {src_w}x{src_h}")
        sx, sy = dst_w / src_w, dst_h / src_h
        scale = np.array([[sx, 0, 0.5 * sx - 0.5], [0, sy, 0.5 * sy - 0.5], [0, 0, 1]])
        k, p = scale @ self.k, scale @ self.p
        if (sx, sy) == (1.0, 1.0):
            k, p = self.k.copy(), self.p.copy()
        return Calibration(dst_w, dst_h, k, p, list(self.d), self.r.copy(),
                           self.distortion_model, self.source)


def _matrix(data, rows: int, cols: int, what: str, path: Path) -> np.ndarray:
    values = data.get("data") if isinstance(data, dict) else data
    try:
        array = np.asarray(values, dtype=float)
    except (TypeError, ValueError):
        array = np.empty(0)
    if array.size != rows * cols:
        raise SacError(f"{path}: {what} needs {rows * cols} numbers")
    return array.reshape(rows, cols)


def _ros_yaml(path: Path) -> Calibration:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise SacError(f"{path} is not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict) or "camera_matrix" not in data:
        raise SacError(f"{path} is not a ROS camera_info file (no camera_matrix)")
    k = _matrix(data["camera_matrix"], 3, 3, "camera_matrix", path)
    p = (_matrix(data["projection_matrix"], 3, 4, "projection_matrix", path)
         if "projection_matrix" in data else np.hstack([k, np.zeros((3, 1))]))
    r = (_matrix(data["rectification_matrix"], 3, 3, "rectification_matrix", path)
         if "rectification_matrix" in data else np.eye(3))
    dist = data.get("distortion_coefficients", {})
    d = [float(v) for v in (dist.get("data", []) if isinstance(dist, dict) else dist)]
    try:
        width, height = int(data["image_width"]), int(data["image_height"])
    except (KeyError, TypeError, ValueError):
        width = height = None
    return Calibration(width, height, k, p, d, r, str(data.get("distortion_model", "plumb_bob")),
                       str(path))


def _cityscapes_json(path: Path) -> Calibration:
    try:
        intrinsic = json.loads(path.read_text(encoding="utf-8"))["intrinsic"]
        fx, fy, u0, v0 = (float(intrinsic[k]) for k in ("fx", "fy", "u0", "v0"))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SacError(f"{path} is not a Cityscapes camera JSON (intrinsic fx, fy, u0, v0): "
                       f"{exc}") from None
    k = np.array([[fx, 0, u0], [0, fy, v0], [0, 0, 1]])
    return Calibration(None, None, k, np.hstack([k, np.zeros((3, 1))]), [0.0] * 5,
                       source=str(path))


def _kitti_txt(path: Path, key: str | None) -> Calibration:
    rows = {}
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        name, sep, rest = line.partition(":")
        if sep:
            rows[name.strip()] = rest.split()
    keys = [key] if key else ["P2", "P_rect_02"]
    for name in keys:
        if name in rows:
            p = _matrix([float(v) for v in rows[name]], 3, 4, name, path)
            return Calibration(None, None, p[:, :3].copy(), p, [0.0] * 5, source=str(path))
    raise SacError(f"{path}: no {' or '.join(keys)} line (KITTI calibration)")


def load_calibration(spec: str) -> Calibration:
    """Parse ``FILE`` or ``FILE:KEY`` (KITTI)."""
    path, key = Path(spec), None
    if not path.is_file() and ":" in spec:
        head, _, key = spec.rpartition(":")
        path = Path(head)
    if not path.is_file():
        raise SacError(f"calibration file {spec} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".yaml", ".yml"):
        return _ros_yaml(path)
    if suffix == ".json":
        return _cityscapes_json(path)
    if suffix == ".txt":
        return _kitti_txt(path, key)
    raise SacError(f"calibration {path.name}: use a ROS camera_info .yaml, a Cityscapes "
                   "camera .json or a KITTI calib .txt")
