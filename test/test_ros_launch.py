"""Static checks (no ROS needed): the launch file, the runner and the install agree (issue 4).

launch/pipeline.launch.py cannot be run here (no ``launch`` package), so its source is
read with ``ast``; the runner's command lines come from ``node_command`` itself.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import re
import sys
from pathlib import Path

import pytest
import yaml

from sac_ros.core.errors import SacError
from sac_ros.pipeline import (
    EXECUTABLES,
    TRANSPORTS_VAR,
    apply_params,
    delivery_headline,
    input_topic,
    link_budget,
    load_layout,
    node_command,
    pipeline_nodes,
)

REPO = Path(__file__).resolve().parent.parent
LAUNCH = REPO / "launch" / "pipeline.launch.py"


def _is_name(node, name: str) -> bool:
    return isinstance(node, ast.Name) and node.id == name


def _is_attr(node, owner: str, attr: str) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == attr and _is_name(node.value, owner)


def _is_launch_config(node, name: str) -> bool:
    """``LaunchConfiguration("<name>").perform(context)``."""
    return (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
            and node.func.attr == "perform" and isinstance(node.func.value, ast.Call)
            and _is_name(node.func.value.func, "LaunchConfiguration")
            and [a.value for a in node.func.value.args if isinstance(a, ast.Constant)] == [name])


def _calls(tree, name: str) -> list[ast.Call]:
    return [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _is_name(n.func, name)]


@pytest.fixture(scope="module")
def launch_tree():
    return ast.parse(LAUNCH.read_text(), str(LAUNCH))


def test_launch_file_builds_its_nodes_from_pipeline_nodes(launch_tree):
    imports = {(n.module, a.name) for n in ast.walk(launch_tree)
               if isinstance(n, ast.ImportFrom) for a in n.names}
    assert {("sac_ros.pipeline", "load_layout"), ("sac_ros.pipeline", "pipeline_nodes")} <= imports

    # config = LaunchConfiguration("config").perform(context); layout = load_layout(config)
    assigns = {n.targets[0].id: n.value for n in ast.walk(launch_tree)
               if isinstance(n, ast.Assign) and len(n.targets) == 1
               and isinstance(n.targets[0], ast.Name)}
    assert _is_launch_config(assigns["config"], "config")
    layout = assigns["layout"]
    assert isinstance(layout, ast.Call) and _is_name(layout.func, "load_layout")
    assert len(layout.args) == 1 and _is_name(layout.args[0], "config")

    # for spec in pipeline_nodes(layout, input_topic=..., model=...): Node(...)
    loops = [n for n in ast.walk(launch_tree) if isinstance(n, ast.For)
             and isinstance(n.iter, ast.Call) and _is_name(n.iter.func, "pipeline_nodes")]
    assert len(loops) == 1, "exactly one loop over pipeline_nodes(...)"
    loop = loops[0]
    assert _is_name(loop.target, "spec")
    call = loop.iter
    assert len(call.args) == 1 and _is_name(call.args[0], "layout")
    keywords = {k.arg: k.value for k in call.keywords}
    assert set(keywords) == {"input_topic", "model", "view"}  # no video source under launch
    assert _is_launch_config(keywords["input_topic"], "input_topic")
    assert _is_launch_config(keywords["model"], "model")
    # view:=true adds the Foxglove view: _true(LaunchConfiguration("view").perform(context))
    assert (isinstance(keywords["view"], ast.Call) and _is_name(keywords["view"].func, "_true")
            and _is_launch_config(keywords["view"].args[0], "view"))

    nodes = _calls(loop, "Node")
    assert len(nodes) == 1
    assert _calls(launch_tree, "Node") == nodes  # no node is started outside the loop
    kw = {k.arg: k.value for k in nodes[0].keywords}
    assert isinstance(kw["package"], ast.Constant) and kw["package"].value == "sac_ros"
    assert _is_attr(kw["executable"], "spec", "executable")
    assert _is_attr(kw["name"], "spec", "name")
    assert _is_attr(kw["namespace"], "spec", "namespace")
    params = kw["parameters"]
    assert isinstance(params, ast.List) and len(params.elts) == 2
    assert _is_name(params.elts[0], "config")
    assert _is_attr(params.elts[1], "spec", "overrides")

    # The nodes get the config's Fast DDS transports, as the runner's children do.
    env_calls = _calls(launch_tree, "SetEnvironmentVariable")
    assert len(env_calls) == 1
    assert _is_name(env_calls[0].args[0], "TRANSPORTS_VAR")
    assert _is_attr(env_calls[0].args[1], "layout", "fastdds_transports")

    # Every LaunchConfiguration used is declared.
    declared = {c.args[0].value for c in _calls(launch_tree, "DeclareLaunchArgument")}
    used = {c.args[0].value for c in _calls(launch_tree, "LaunchConfiguration")}
    assert used <= declared == {"config", "input_topic", "model", "view"}


def test_launch_file_reclaims_dead_shared_memory_before_any_node(launch_tree):
    """Issue 14: as `sac pipeline` does on start (tested with real nodes in test_shm)."""
    imports = {(n.module, a.name) for n in ast.walk(launch_tree)
               if isinstance(n, ast.ImportFrom) for a in n.names}
    assert ("sac_ros.shm", "reclaim_dead_segments") in imports
    nodes = next(n for n in ast.walk(launch_tree)
                 if isinstance(n, ast.FunctionDef) and n.name == "_nodes")
    first = nodes.body[0]  # reclaimed = reclaim_dead_segments(), before the nodes are built
    assert isinstance(first, ast.Assign) and isinstance(first.value, ast.Call), ast.dump(first)
    assert _is_name(first.value.func, "reclaim_dead_segments") and not first.value.args


def _console_scripts() -> dict[str, str]:
    tree = ast.parse((REPO / "setup.py").read_text())
    setup = next(c for c in _calls(tree, "setup"))
    entry_points = ast.literal_eval(next(k.value for k in setup.keywords
                                         if k.arg == "entry_points"))
    return dict(re.fullmatch(r"\s*(\S+)\s*=\s*(\S+)\s*", line).groups()
                for line in entry_points["console_scripts"])


def _cmake_programs() -> tuple[list[str], str]:
    text = (REPO / "CMakeLists.txt").read_text()
    match = re.search(r"install\(\s*PROGRAMS\s+(.*?)\s+DESTINATION\s+(\S+?)\s*\)", text, re.S)
    assert match, "CMakeLists.txt installs no PROGRAMS"
    return match.group(1).split(), match.group(2)


@pytest.mark.parametrize("executable", sorted(EXECUTABLES))
def test_executable_is_installed_everywhere(executable):
    module = EXECUTABLES[executable]
    # The module has a top-level main() (read, not imported: no ROS needed).
    source = Path(importlib.util.find_spec(module).origin)
    functions = {n.name for n in ast.parse(source.read_text()).body
                 if isinstance(n, ast.FunctionDef)}
    assert "main" in functions, f"{module} has no main()"
    # pip / colcon entry point
    assert _console_scripts().get(executable) == f"{module}:main"
    # bin/<name>, the ros2 run wrapper installed by CMake
    wrapper = REPO / "bin" / executable
    assert wrapper.is_file() and os.access(wrapper, os.X_OK), wrapper
    text = wrapper.read_text()
    assert text.startswith("#!/usr/bin/env python3")
    tree = ast.parse(text)
    assert any(isinstance(n, ast.ImportFrom) and n.module == module
               and [a.name for a in n.names] == ["main"] for n in tree.body), text
    assert "sys.exit(main())" in text
    programs, destination = _cmake_programs()
    assert f"bin/{executable}" in programs
    assert destination == "lib/${PROJECT_NAME}"


def _layout_with(tmp_path, perception_params=None, sensor_params=None, **values):
    config = yaml.safe_load((REPO / "config" / "pipeline.yaml").read_text())
    config["sac_pipeline"]["ros__parameters"].update(values)
    config["/**/sac_perception"]["ros__parameters"].update(perception_params or {})
    config["/**/sac_sensor"]["ros__parameters"].update(sensor_params or {})
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    return load_layout(path)


def test_transports_reach_the_node_environment(tmp_path):
    layout = _layout_with(tmp_path, fastdds_builtin_transports="LARGE_DATA?max_msg_size=4MB")
    env = layout.environment({"PATH": "/bin"})
    assert env == {"PATH": "/bin", TRANSPORTS_VAR: "LARGE_DATA?max_msg_size=4MB"}
    # Empty: whatever the environment says (Fast DDS's default when unset).
    layout = _layout_with(tmp_path, fastdds_builtin_transports="")
    assert layout.environment({TRANSPORTS_VAR: "UDPv4"}) == {TRANSPORTS_VAR: "UDPv4"}
    assert _layout_with(tmp_path, fastdds_builtin_transports="SHM").fastdds_transports == "SHM"
    value = ("LARGE_DATA?max_msg_size=4MB&sockets_size=8MB&non_blocking=true"
             "&tcp_negotiation_timeout=50")
    assert _layout_with(tmp_path, fastdds_builtin_transports=value).fastdds_transports == value


@pytest.mark.parametrize("value", ["BIG_DATA", "large_data", 3, "DEFAULT?socket_size=16MB",
                                   "LARGE_DATA?max_msg_size=4MB&non_blocking=yes"])
def test_bad_transports_are_refused(tmp_path, value):
    with pytest.raises(SacError, match="fastdds_builtin_transports"):
        _layout_with(tmp_path, fastdds_builtin_transports=value)


def test_link_budget_from_the_config(tmp_path):
    """Issue 17 item 8: the cameras' shared link is a config key, in Mbit/s or by name."""
    assert load_layout().link_budget_mbps == 100.0
    assert _layout_with(tmp_path, link_budget_mbps="1000BASE-T1").link_budget_mbps == 1000.0
    assert _layout_with(tmp_path, link_budget_mbps=250).link_budget_mbps == 250.0
    for bad in (0, -5, "fast", True):
        with pytest.raises(SacError, match="link_budget_mbps"):
            _layout_with(tmp_path, link_budget_mbps=bad)


def test_readers_count_perception_on_the_input_only_when_it_compares(tmp_path):
    """A run waits for these many readers: perception reads the camera input only with a
    raw_topic that is that input (a config with raw_topic "" must not wait for it)."""
    shipped = load_layout()
    assert shipped.readers(pipeline_nodes(shipped)) == {"input": 3, "packets": 2, "image": 2}
    off = _layout_with(tmp_path, perception_params={"raw_topic": ""})
    assert off.readers(pipeline_nodes(off)) == {"input": 2, "packets": 2, "image": 2}
    # The runner's input topic goes to both the sensor and perception's comparison.
    assert off.readers(pipeline_nodes(off, input_topic="cam/image"))["input"] == 3
    specs = pipeline_nodes(shipped)
    apply_params(specs, ["sac_perception.raw_topic=other/image"])
    assert shipped.readers(specs)["input"] == 2
    apply_params(specs, ["sac_perception.raw_topic="])  # off: rcl needs it spelled ''
    assert shipped.readers(specs)["input"] == 2
    perception = next(s for s in specs if s.executable == "sac_perception")
    assert "raw_topic:=''" in node_command(perception, "x.yaml")
    # A config whose sensors read another topic: that is the input the run publishes on.
    moved = _layout_with(tmp_path, sensor_params={"input_topic": "cam/image"},
                         perception_params={"raw_topic": "cam/image"})
    assert input_topic(moved, pipeline_nodes(moved)) == "cam/image"
    assert moved.readers(pipeline_nodes(moved))["input"] == 3
    assert input_topic(moved, pipeline_nodes(moved, input_topic="x/y")) == "x/y"
    no_perception = _layout_with(tmp_path, perception=False)
    assert no_perception.readers(pipeline_nodes(no_perception)) == {
        "input": 2, "packets": 2, "image": 1}


def test_link_budget_line():
    six = link_budget([1.2, 1.2, 1.2, 1.2, 1.25, 1.25], 100.0)
    assert six["line"] == ("total 7.30 Mbit/s for 6 cameras: fits 100BASE-T1 (100 Mbit/s) "
                           "with 93% headroom")
    assert six["fits"] and six["total_mbps"] == pytest.approx(7.3)
    over = link_budget([60.0, 70.0], 100.0)
    assert over["line"] == ("total 130.0 Mbit/s for 2 cameras: does NOT fit 100BASE-T1 "
                            "(100 Mbit/s), 30% over") and over["fits"] is False
    assert link_budget([0.5, float("nan")], 1000.0)["line"] == (
        "total 0.500 Mbit/s for 2 cameras: fits 1000BASE-T1 (1000 Mbit/s) with 99.9% headroom "
        "(1 without a measured rate)")
    assert "a 42 Mbit/s link" in link_budget([1.0], 42.0)["line"]
    # The cameras' busiest seconds: their sum bounds the link's busiest second.
    peaks = link_budget([40.0, 50.0], 100.0, [48.0, 61.0])
    assert peaks["line"] == ("total 90.0 Mbit/s for 2 cameras: fits 100BASE-T1 (100 Mbit/s) "
                             "with 10% headroom; busiest seconds add up to 109.0 Mbit/s, which "
                             "does NOT fit")
    assert peaks["fits"] is True and peaks["peak_fits"] is False
    assert peaks["peak_total_mbps"] == pytest.approx(109.0)
    calm = link_budget([1.0, 1.0], 100.0, [1.5, 0.9])
    assert calm["line"].endswith("; busiest seconds add up to 2.40 Mbit/s")
    assert calm["peak_fits"] is True
    # A camera without a peak (a run under a second): no bound is claimed.
    partial = link_budget([1.0, 1.0], 100.0, [1.5, float("nan")])
    assert partial["peak_total_mbps"] is None and "busiest" not in partial["line"]


def test_delivery_headline():
    """Issue 17 item 2: delivered leads; counted drops are not delivered; a run that lost a
    frame never shows 100%."""
    assert delivery_headline(60, 60, {"superseded": 0}) == "frames delivered: 60 of 60 (100.0%)"
    assert delivery_headline(30, 60, {"superseded": 30}) == (
        "frames delivered: 30 of 60 (50.0%); dropped: superseded 30")
    assert delivery_headline(1999, 2000, {}, unaccounted=1) == (
        "frames delivered: 1999 of 2000 (99.9%); dropped: unaccounted for 1")
    assert delivery_headline(19999, 20000, {"ecu late": 1}) == (
        "frames delivered: 19999 of 20000 (99.9%); dropped: ecu late 1")


def test_runner_command_lines_match_the_launch_nodes(tmp_path):
    config = yaml.safe_load((REPO / "config" / "pipeline.yaml").read_text())
    config["sac_pipeline"]["ros__parameters"]["cameras"] = ["front", "rear/left"]
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(config))
    layout = load_layout(path)
    specs = pipeline_nodes(layout, input_topic="camera/image_rect", model="/models/m.onnx",
                           video_source=True, view=True)
    assert {(s.executable, s.namespace) for s in specs} == {
        (e, ns) for e in EXECUTABLES if e != "sac_view" for ns in ("/front", "/rear/left")} | {
        ("sac_view", "/")}  # one Foxglove view serves every camera
    view = next(s for s in specs if s.executable == "sac_view")
    assert view.overrides == {"cameras": ["front", "rear/left"]}
    for spec in specs:
        cmd = node_command(spec, str(layout.config))
        assert cmd[:3] == [sys.executable, "-m", EXECUTABLES[spec.executable]], cmd
        ros_args = cmd[cmd.index("--ros-args") + 1:]
        pairs = list(zip(ros_args[::2], ros_args[1::2], strict=True))
        remaps = dict(value.split(":=", 1) for flag, value in pairs if flag == "-r")
        assert remaps == {"__node": spec.name, "__ns": spec.namespace}
        # launch: parameters=[config, spec.overrides]; the runner: the same file, then -p.
        assert [value for flag, value in pairs if flag == "--params-file"] == [str(path)]
        overrides = [value for flag, value in pairs if flag == "-p"]
        assert dict(v.split(":=", 1) for v in overrides) == {
            k: str(v) for k, v in spec.overrides.items()}
        flags = [flag for flag, _ in pairs]
        assert all(flags.index("--params-file") < i for i, f in enumerate(flags) if f == "-p")
    sensor = next(s for s in specs if s.executable == "sac_sensor")
    assert sensor.overrides == {"input_topic": "camera/image_rect", "mask_source": "model",
                                "model": "/models/m.onnx"}


def test_summary_says_when_perception_compared_nothing(capsys):
    from sac_ros.cli.pipeline_cmd import _print_summary

    nan = float("nan")
    row = {"camera": "/front", "frames_out": 30, "frames_sent": 30, "drops": {},
           "unaccounted": 0, "frames_in": 30, "packets": 30, "kb_per_frame": 6.0,
           "mbit_per_s": 1.2, "input_fps": 25.0, "roi_psnr": 40.0, "non_roi_psnr": 36.0,
           "quality_frames": 30, "latency_p50_ms": 37.0, "latency_p99_ms": 75.0,
           "iiou": nan, "miou": nan, "perception_frames": 0}
    _print_summary([row], True, 100.0)
    out = capsys.readouterr().out
    assert "no frame compared" in out and "mIoU" not in out
    _print_summary([{**row, "iiou": 0.99, "miou": 0.97, "perception_frames": 8}], True, 100.0)
    assert "iIoU 0.9900, mIoU 0.9700 over 8 frames" in capsys.readouterr().out
