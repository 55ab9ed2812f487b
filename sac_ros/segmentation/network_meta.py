"""Metadata that sac models carry (ONNX metadata_props, engine sidecars); no torch needed."""

from __future__ import annotations

from sac_ros import __version__

ONNX_OPSET = 17
NETWORK_STRIDE = 64  # SacRoiNet's input H and W must be multiples of this


def sac_metadata(class_map: str, width: float | None = None, depth: int = 0) -> dict[str, str]:
    """``sac_input: rgb255`` = the graph normalises raw 0-255 RGB itself."""
    meta = {"sac_class_map": class_map, "sac_input": "rgb255", "sac_stride": str(NETWORK_STRIDE),
            "sac_block_size": "16", "sac_producer": f"sac_ros {__version__}"}
    if width is not None:
        meta["sac_network"] = f"SacRoiNet width {width:g}" + (f" depth {depth}" if depth else "")
    return meta
