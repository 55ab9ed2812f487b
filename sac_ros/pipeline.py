"""Which nodes a pipeline config starts, and the processes that run them.

Shared by the launch file, `sac pipeline` and `sac bag run`: the node list
(``pipeline_nodes``), their command lines (``node_command``), the node processes
(``Children``, which first reclaims the shared memory of dead nodes) and, for
`sac pipeline --source`, a measured run (``run_with_source``). Every run summary
(`sac pipeline`, `sac bag run`, `sac report`, the pipeline benchmark) leads with the
same headline (``delivery_headline``) and checks the cameras' total bit rate against
the link budget the same way (``link_budget``).

ROS-free at import: it reads config/pipeline.yaml (a ROS 2 parameter file) and starts
processes; only ``run_with_source`` imports rclpy, when called.
"""

from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from sac_ros.config import config_dir, load_yaml
from sac_ros.core.errors import SacError
from sac_ros.core.wire import IMAGE_TOPIC, INPUT_TOPIC, PACKET_TOPIC, topic_in
from sac_ros.shm import reclaim_and_report

# executable name -> Python module with main(); setup.py, bin/ and CMakeLists.txt list the same.
EXECUTABLES = {
    "sac_sensor": "sac_ros.nodes.sensor",
    "sac_ecu": "sac_ros.nodes.ecu",
    "sac_perception": "sac_ros.nodes.perception",
    "sac_video_source": "sac_ros.nodes.video_source",
    "sac_view": "sac_ros.nodes.view",
}
PIPELINE_KEY = "sac_pipeline"
TRANSPORTS_VAR = "FASTDDS_BUILTIN_TRANSPORTS"
FASTDDS_TRANSPORT_MODES = ("DEFAULT", "DEFAULTv6", "SHM", "UDPv4", "UDPv6", "LARGE_DATA",
                           "LARGE_DATAv6", "NONE")
# The options Fast DDS accepts after "MODE?", joined by "&". Anything else makes it log
# an error and fall back to its stock transports, silently slower.
FASTDDS_TRANSPORT_OPTION = re.compile(r"(max_msg_size|sockets_size)=\d+[A-Za-z]*"
                                      r"|non_blocking=(true|false)|tcp_negotiation_timeout=\d+")
# In-vehicle links the cameras' total bit rate is checked against (Mbit/s of payload).
LINKS_MBPS = {"10BASE-T1S": 10.0, "100BASE-T1": 100.0, "1000BASE-T1": 1000.0,
              "2.5GBASE-T1": 2500.0, "5GBASE-T1": 5000.0, "10GBASE-T1": 10000.0}
DEFAULT_LINK_BUDGET_MBPS = 100.0


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
    packet_topic: str = PACKET_TOPIC  # the sensors' packet_topic in the parameter file
    link_budget_mbps: float = DEFAULT_LINK_BUDGET_MBPS  # the cameras' shared link
    input_topic: str = INPUT_TOPIC  # the sensors' input_topic in the parameter file
    perception_raw_topic: str = ""  # perception's raw_topic there ("" = no comparison)

    def environment(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """The environment the nodes start with: ``base`` plus the configured transports."""
        env = dict(os.environ if base is None else base)
        if self.fastdds_transports:
            env[TRANSPORTS_VAR] = self.fastdds_transports
        return env

    def readers(self, specs: list[NodeSpec] = ()) -> dict[str, int]:
        """Readers each camera's topics have once a run's own listener (the runner's
        summary or the bag recorder) is up: the camera input (sensor, listener
        [, perception when it compares with it]), packets (ECU, listener) and
        reconstructed images (listener [, perception]). ``specs``: the nodes started,
        whose overrides win over the parameter file."""
        extra = 1 if self.perception else 0
        raw = str(overridden(specs, "sac_perception", "raw_topic", self.perception_raw_topic))
        source = input_topic(self, specs)
        compares = 1 if self.perception and raw and raw.strip("/") == source.strip("/") else 0
        return {"input": 2 + compares, "packets": 2, "image": 1 + extra}


def default_pipeline_config() -> Path:
    return config_dir() / "pipeline.yaml"


def load_layout(config: str | Path | None = None) -> PipelineLayout:
    path = Path(config) if config else default_pipeline_config()
    data = load_yaml(path)
    section = (data.get(PIPELINE_KEY) or {}).get("ros__parameters")
    if not isinstance(section, dict):
        raise SacError(f"{path}: missing '{PIPELINE_KEY}: ros__parameters:' section")
    unknown = set(section) - {"cameras", "perception", "fastdds_builtin_transports",
                              "link_budget_mbps"}
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
    try:
        budget = parse_link_budget(section.get("link_budget_mbps", DEFAULT_LINK_BUDGET_MBPS))
    except SacError as exc:
        raise SacError(f"{path}: {PIPELINE_KEY}.link_budget_mbps: {exc}") from None
    return PipelineLayout(
        path.resolve(), cameras, bool(section.get("perception", True)), transports,
        str(node_parameter(data, "sac_sensor", "packet_topic", PACKET_TOPIC)), budget,
        str(node_parameter(data, "sac_sensor", "input_topic", INPUT_TOPIC)),
        str(node_parameter(data, "sac_perception", "raw_topic", "")))


def parse_link_budget(value) -> float:
    """A link budget in Mbit/s: a number (``100``) or a link name (``100BASE-T1``)."""
    name = str(value).strip().upper()
    if name in LINKS_MBPS:
        return LINKS_MBPS[name]
    try:
        mbps = float(value)
    except (TypeError, ValueError):
        mbps = float("nan")
    if isinstance(value, bool) or not 0 < mbps < 1e6:
        raise SacError(f"link budget '{value}' must be Mbit/s above 0 or one of "
                       f"{', '.join(LINKS_MBPS)}")
    return mbps


def _mbps(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def link_budget(rates_mbps: list[float], budget_mbps: float,
                peaks_mbps: list[float] | None = None) -> dict:
    """The cameras' total bit rate against the link they share: the numbers, and the
    line every summary prints (``line``). ``peaks_mbps``: each camera's busiest 1-s
    window; their sum bounds the link's busiest second from above (the cameras' peaks
    need not coincide)."""
    known = [r for r in rates_mbps if r is not None and math.isfinite(r)]
    total, cameras = float(sum(known)), len(rates_mbps)
    names = [n for n, v in LINKS_MBPS.items() if v == budget_mbps]
    link = (f"{names[0]} ({budget_mbps:g} Mbit/s)" if names
            else f"a {budget_mbps:g} Mbit/s link")
    headroom = 100.0 * (1.0 - total / budget_mbps)
    fits = total <= budget_mbps
    who = f"{cameras} camera{'s' if cameras != 1 else ''}"
    if not known:
        line = f"total bit rate of {who}: not measured (no packets), link {link}"
    elif fits:
        shown = f"{headroom:.0f}" if 1 <= headroom <= 99 else f"{math.floor(headroom * 10) / 10:g}"
        line = f"total {_mbps(total)} Mbit/s for {who}: fits {link} with {shown}% headroom"
    else:
        line = (f"total {_mbps(total)} Mbit/s for {who}: does NOT fit {link}, "
                f"{-headroom:.0f}% over")
    if known and len(known) < cameras:
        line += f" ({cameras - len(known)} without a measured rate)"
    peaks = [p for p in (peaks_mbps or []) if p is not None and math.isfinite(p)]
    # Only a sum over every camera bounds the link (a run under 1 s has no peak).
    peak_total = float(sum(peaks)) if known and len(peaks) == cameras else None
    if peak_total is not None:
        line += (f"; busiest seconds add up to {_mbps(peak_total)} Mbit/s"
                 + ("" if peak_total <= budget_mbps else ", which does NOT fit"))
    return {"total_mbps": total if known else None, "cameras": cameras,
            "budget_mbps": budget_mbps, "fits": fits if known else None,
            "headroom_pct": headroom if known else None, "peak_total_mbps": peak_total,
            "peak_fits": None if peak_total is None else peak_total <= budget_mbps,
            "line": line}


def delivery_headline(delivered: int, sent: int, drops: dict[str, int],
                      unaccounted: int = 0) -> str:
    """What a run summary leads with: frames delivered: N of M (P%), then the drops by
    reason. Frames counted as drops are accounted for, not delivered."""
    pct = round(100.0 * delivered / sent, 1) if sent else 0.0
    if delivered < sent:  # never rounded up to a clean 100%
        pct = min(pct, 99.9)
    line = f"frames delivered: {delivered} of {sent} ({pct:.1f}%)"
    lost = [f"{reason} {count}" for reason, count in drops.items() if count]
    if unaccounted > 0:
        lost.append(f"unaccounted for {unaccounted}")
    if lost:
        return f"{line}; dropped: {', '.join(lost)}"
    return line if delivered >= sent else f"{line}; no drop counted"


def node_parameter(data: dict, executable: str, name: str, default):
    """A node's parameter in a parameter file's contents (under ``/**/NODE``, ``NODE`` or
    ``/NS/NODE``: the first that sets it), else ``default``."""
    for key, section in data.items():
        if str(key).rstrip("/").rsplit("/", 1)[-1] == executable and isinstance(section, dict):
            params = section.get("ros__parameters") or {}
            if isinstance(params, dict) and name in params:
                return params[name]
    return default


def overridden(specs: list[NodeSpec], executable: str, name: str, default):
    """A node's parameter as started: the first spec's override (``-p`` or the runner's),
    else ``default`` (the parameter file's)."""
    for spec in specs:
        if spec.executable == executable and name in spec.overrides:
            return spec.overrides[name]
    return default


def input_topic(layout: PipelineLayout, specs: list[NodeSpec]) -> str:
    """The camera topic the sensors read: an override, else the config's."""
    return str(overridden(specs, "sac_sensor", "input_topic", layout.input_topic))


def packet_topic(layout: PipelineLayout, specs: list[NodeSpec]) -> str:
    """The packet topic the sensors publish on: a ``-p`` override, else the config's."""
    return str(overridden(specs, "sac_sensor", "packet_topic", layout.packet_topic))


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
                   video_source: bool = False, view: bool = False) -> list[NodeSpec]:
    """The nodes to start, one set per camera namespace, with launch-time overrides;
    ``view``: one sac_view (Foxglove) for all the cameras, in the root namespace."""
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
    if view:
        specs.append(NodeSpec("sac_view", "/", {"cameras": list(layout.cameras)}))
    return specs


def parse_params(items: list[str]) -> list[tuple[str, str, str]]:
    """``NODE.NAME=VALUE`` overrides as (executable, name, value)."""
    parsed = []
    for item in items:
        target, sep, value = item.partition("=")
        executable, dot, name = target.partition(".")
        if not sep or not dot or executable not in EXECUTABLES or not name:
            raise SacError(f"--param '{item}' must look like NODE.NAME=VALUE with NODE one of "
                           f"{', '.join(EXECUTABLES)}")
        parsed.append((executable, name, value))
    return parsed


def apply_params(specs: list[NodeSpec], items: list[str]) -> None:
    """Apply ``NODE.NAME=VALUE`` overrides to every node of that executable."""
    for executable, name, value in parse_params(items):
        for spec in specs:
            if spec.executable == executable:
                spec.overrides[name] = value


def node_command(spec: NodeSpec, config: str, extra: dict | None = None) -> list[str]:
    """The command line that starts one node: the same executable and parameters as launch."""
    cmd = [sys.executable, "-m", spec.module, "--ros-args", "-r", f"__node:={spec.name}",
           "-r", f"__ns:={spec.namespace}", "--params-file", config]
    for key, value in {**spec.overrides, **(extra or {})}.items():
        # rcl refuses "-p name:=" outright; an empty string is spelled the YAML way.
        cmd += ["-p", f"{key}:={value}" if str(value) != "" else f"{key}:=''"]
    return cmd


class Children:
    """Node processes, stopped together with SIGTERM (then SIGKILL).

    SIGTERM, not SIGINT: a node still importing when it comes (a sibling failed at
    start-up) dies silently, where SIGINT printed a KeyboardInterrupt traceback; once
    rclpy is up, it handles both the same way. Each node has its own session, so the
    terminal's Ctrl-C reaches the runner only, and the runner stops them.
    """

    STOPPED = (0, -signal.SIGINT, -signal.SIGTERM)

    def __init__(self, env: dict, label: str = "sac pipeline"):
        self.env = env
        self.label = label  # prefixes the shared-memory clean-up's line
        self.procs: list[tuple[str, subprocess.Popen]] = []

    def start(self, label: str, cmd: list[str]) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, env=self.env, start_new_session=True)
        self.procs.append((label, proc))
        return proc

    def wait_until(self, ready, deadline: float, timeout_message) -> None:
        """Poll ``ready()`` until true; SacError if a node stops or ``deadline`` passes."""
        while not ready():
            if self.failed():
                raise SacError(f"node(s) stopped: {', '.join(self.failed())}")
            if time.monotonic() > deadline:
                raise SacError(timeout_message())
            time.sleep(0.1)

    def reclaim(self) -> None:
        """Remove the shared memory of nodes SIGKILLed earlier (only whose owner is dead)."""
        reclaim_and_report(self.label)

    def start_nodes(self, specs, config: str) -> None:
        for spec in specs:
            self.start(f"{spec.namespace} {spec.name}", node_command(spec, config))

    def failed(self) -> list[str]:
        return [f"{label} (exit {p.returncode})" for label, p in self.procs
                if p.poll() is not None and p.returncode not in self.STOPPED]

    def stop(self) -> None:
        for _, proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 10
        killed = False
        for _, proc in self.procs:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                killed = True
        if killed:  # a SIGKILLed node leaves its shared memory behind
            reclaim_and_report(self.label)


def source_size(source: str) -> tuple[int, int]:
    """(width, height) of a video / folder / sample source, from its first frame."""
    from sac_ros.core.io import iter_frames, resolve_input

    for rgb, _ in iter_frames(resolve_input(source), 0, 1):
        return rgb.shape[1], rgb.shape[0]
    raise SacError(f"{source} has no frames")


@dataclass
class SourceRun:
    """What `sac pipeline --source` publishes and measures."""

    source: str
    frames: int = 0                          # 0: the source once; N: N frames, looping
    size: tuple[int, int] | None = None
    fps: float = 0.0                         # 0: the config's sac_video_source fps
    quality_every: int = 1
    startup_timeout: float = 60.0
    input_topic: str = ""                    # "": the config's (image_raw)


MATCH_SETTLE_S = 0.5  # after the writers report their readers, before the first frame


def run_with_source(run: SourceRun, layout: PipelineLayout, specs: list[NodeSpec],
                    children: Children, config: str, log=print) -> list[dict]:
    """Publish the source on every camera once the pipeline is matched, let it drain,
    and return the summary listener's row per camera."""
    import rclpy

    from sac_ros.nodes.common import make_executor
    from sac_ros.nodes.summary import SummaryCollector

    namespaces = [f"/{c}" if c else "/" for c in layout.cameras]
    rclpy.init()
    collector = SummaryCollector(namespaces, input_topic(layout, specs), run.quality_every,
                                 packet_topic(layout, specs))
    executor = make_executor()
    executor.add_node(collector)
    threading.Thread(target=executor.spin, daemon=True).start()
    try:
        _wait_matched(run, layout, specs, namespaces, collector, children)
        sources = _start_sources(run, specs, children, config, layout.readers(specs)["input"])
        log(f"sac pipeline: publishing {run.source} on {len(sources)} camera(s)")
        for proc in sources:
            proc.wait()
            if proc.returncode != 0:
                raise SacError(f"the video source failed (exit {proc.returncode})")
        while not collector.settled(idle_s=3.0):  # let the pipeline drain
            time.sleep(0.2)
        time.sleep(1.2)  # one more stats period from every node
        collector.finish_quality()
        return [cam.row() for cam in collector.cameras.values()]
    finally:
        collector.finish_quality()
        executor.shutdown()
        collector.destroy_node()
        rclpy.shutdown()


def _wait_matched(run: SourceRun, layout: PipelineLayout, specs: list[NodeSpec],
                  namespaces: list[str], collector, children: Children) -> None:
    """Discovery, then every hop's writers matched to their readers."""
    from sac_ros.nodes.readiness import ReadinessProbe

    source_topic = input_topic(layout, specs)
    deadline = time.monotonic() + run.startup_timeout
    readers = layout.readers(specs)
    # Discovery: every sensor subscribes to its camera topic, every ECU publishes images.
    children.wait_until(
        lambda: all(
            collector.count_subscribers(topic_in(ns, source_topic)) >= readers["input"]
            and collector.count_publishers(topic_in(ns, IMAGE_TOPIC)) >= 1
            for ns in namespaces),
        deadline, lambda: f"nodes not discovered after {run.startup_timeout:g} s")
    # The graph shows endpoints before every writer has matched every reader (sensor ->
    # ECU was seen to lag by 1-2 s, losing the first GOP): wait for the nodes to report
    # their outputs matched.
    probe = ReadinessProbe(collector, namespaces, readers, collector.output_subscriptions)
    try:
        children.wait_until(probe.ready, deadline,
                            lambda: f"node outputs not matched after "
                                    f"{run.startup_timeout:g} s: {probe.missing()}")
    finally:
        probe.destroy()
    time.sleep(MATCH_SETTLE_S)


def _start_sources(run: SourceRun, specs: list[NodeSpec], children: Children, config: str,
                   input_readers: int) -> list[subprocess.Popen]:
    # --frames N publishes N frames, looping a shorter source.
    params = {"input": run.source, "max_frames": run.frames, "loop": run.frames > 0,
              "wait_for_subscribers": input_readers}
    if run.fps:  # otherwise the config's rate (whose 0 means the source's own)
        params["fps"] = run.fps
    if run.size:
        params.update(width=run.size[0], height=run.size[1])
    return [children.start(f"{spec.namespace} source", node_command(spec, config, params))
            for spec in specs if spec.executable == "sac_video_source"]
