"""Which nodes a pipeline config starts, shared by the launch file and `sac pipeline`.

ROS-free: it only reads config/pipeline.yaml (a ROS 2 parameter file).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from sac_ros.config import config_dir, load_yaml
from sac_ros.core.errors import SacError

# executable name -> Python module with main(); setup.py, bin/ and CMakeLists.txt list the same.
EXECUTABLES = {
    "sac_sensor": "sac_ros.nodes.sensor",
    "sac_ecu": "sac_ros.nodes.ecu",
    "sac_perception": "sac_ros.nodes.perception",
    "sac_video_source": "sac_ros.nodes.video_source",
}
PIPELINE_KEY = "sac_pipeline"
TRANSPORTS_VAR = "FASTDDS_BUILTIN_TRANSPORTS"
FASTDDS_TRANSPORT_MODES = ("DEFAULT", "DEFAULTv6", "SHM", "UDPv4", "UDPv6", "LARGE_DATA",
                           "LARGE_DATAv6", "NONE")
# The options Fast DDS accepts after "MODE?", joined by "&". Anything else makes it log
# an error and fall back to its stock transports, silently slower.
FASTDDS_TRANSPORT_OPTION = re.compile(r"(max_msg_size|sockets_size)=\d+[A-Za-z]*"
                                      r"|non_blocking=(true|false)|tcp_negotiation_timeout=\d+")


@dataclass
class NodeSpec:
    executable: str
    namespace: str
    overrides: dict = field(default_factory=dict)

    @property
    def module(self) -> str:
        return EXECUTABLES[self.executable]

    @property
    def name(self) -> str:
        return self.executable


@dataclass
class PipelineLayout:
    config: Path
    cameras: list[str]
    perception: bool
    fastdds_transports: str  # FASTDDS_BUILTIN_TRANSPORTS for the nodes; "" = Fast DDS default

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment the nodes start with: ``base`` plus the configured transports."""
        env = dict(os.environ if base is None else base)
        if self.fastdds_transports:
            env[TRANSPORTS_VAR] = self.fastdds_transports
        return env

    def readers(self) -> dict[str, int]:
        """Readers each camera's topics have once a run's own listener (the runner's
        summary or the bag recorder) is up: the camera input (sensor, listener
        [, perception]), packets (ECU, listener) and reconstructed images (listener
        [, perception])."""
        extra = 1 if self.perception else 0
        return {"input": 2 + extra, "packets": 2, "image": 1 + extra}


def default_pipeline_config() -> Path:
    return config_dir() / "pipeline.yaml"


def load_layout(config: str | Path | None = None) -> PipelineLayout:
    path = Path(config) if config else default_pipeline_config()
    data = load_yaml(path)
    section = (data.get(PIPELINE_KEY) or {}).get("ros__parameters")
    if not isinstance(section, dict):
        raise SacError(f"{path}: missing '{PIPELINE_KEY}: ros__parameters:' section")
    unknown = set(section) - {"cameras", "perception", "fastdds_builtin_transports"}
    if unknown:
        raise SacError(f"{path}: unknown {PIPELINE_KEY} key(s): {', '.join(sorted(unknown))}")
    cameras = section.get("cameras", [""])
    if (not isinstance(cameras, list) or not cameras
            or not all(isinstance(c, str) for c in cameras)):
        raise SacError(f"{path}: {PIPELINE_KEY}.cameras must be a non-empty list of namespaces")
    cameras = [c.strip("/") for c in cameras]
    if len(set(cameras)) != len(cameras):
        raise SacError(f"{path}: duplicate camera namespaces in {PIPELINE_KEY}.cameras")
    for camera in cameras:
        if camera and not all(part.isidentifier() for part in camera.split("/")):
            raise SacError(f"{path}: '{camera}' is not a valid ROS namespace")
    transports = section.get("fastdds_builtin_transports", "")
    _check_transports(path, transports)
    return PipelineLayout(path.resolve(), cameras, bool(section.get("perception", True)),
                          transports)


def _check_transports(path: Path, transports) -> None:
    key = f"{path}: {PIPELINE_KEY}.fastdds_builtin_transports '{transports}'"
    if not isinstance(transports, str):
        raise SacError(f"{key} must be a string")
    if not transports:
        return
    mode, _, options = transports.partition("?")
    if mode not in FASTDDS_TRANSPORT_MODES:
        raise SacError(f"{key} must be empty or one of {', '.join(FASTDDS_TRANSPORT_MODES)} "
                       "(with optional ?options)")
    parts = options.split("&") if options else []
    bad = [part for part in parts if not FASTDDS_TRANSPORT_OPTION.fullmatch(part)]
    if bad or len(parts) > 4:
        raise SacError(f"{key}: unknown option(s) {', '.join(bad) or options}; Fast DDS takes "
                       "max_msg_size=N[unit], sockets_size=N[unit], non_blocking=true|false and "
                       "tcp_negotiation_timeout=MS, joined by &")


def pipeline_nodes(layout: PipelineLayout, input_topic: str = "", model: str = "",
                   video_source: bool = False) -> list[NodeSpec]:
    """The nodes to start, one set per camera namespace, with launch-time overrides."""
    sensor, perception = {}, {}
    if input_topic:
        sensor["input_topic"] = input_topic
        perception["raw_topic"] = input_topic
    if model:
        sensor.update(mask_source="model", model=model)
        perception["model"] = model
    specs = []
    for camera in layout.cameras:
        namespace = f"/{camera}" if camera else "/"
        if video_source:
            specs.append(NodeSpec("sac_video_source", namespace,
                                  {"topic": input_topic} if input_topic else {}))
        specs.append(NodeSpec("sac_sensor", namespace, dict(sensor)))
        specs.append(NodeSpec("sac_ecu", namespace, {}))
        if layout.perception:
            specs.append(NodeSpec("sac_perception", namespace, dict(perception)))
    return specs
