"""``sac bag run``: replay a bag through the live pipeline and record the run.

It starts the pipeline's nodes (each in its own process, as ``sac pipeline`` does),
records every camera's topics in this process (raw subscriptions), plays the source
bag in another process (``python -m sac_ros.bags.play``) once every consumer is discovered, waits
until the pipeline has drained and every node has published fresh statistics, and then
checks the frame accounting from the recorded bag:

    source frames = reconstructed frames + drops counted by the nodes (+ unaccounted)

and the replay rate (originals per second as received, against the source's camera
time x rate). The summary leads with the frames delivered (reconstructed) of the
source's; the accounting follows it.

As in ``sac pipeline --source``, each sensor is told its camera's frame size
(``frame_size``, from the bag's first image) so that it warms its segmenter up before
it reports ready, and the first frames are not late.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from sac_ros.bags.bagio import BagWriter, deserialize, open_bag
from sac_ros.bags.play import PlayOptions
from sac_ros.bags.record import Recorder, camera_topics
from sac_ros.bags.runbag import read_run
from sac_ros.core.errors import SacError
from sac_ros.core.wire import IMAGE_TOPIC, topic_in
from sac_ros.pipeline import (
    Children,
    PipelineLayout,
    apply_params,
    delivery_headline,
    input_topic,
    load_layout,
    packet_topic,
    pipeline_nodes,
)

DRAIN_IDLE_S = 2.0
SETTLE_S = 0.5           # after discovery, before the first frame (reliable handshakes)
FINAL_STATS_S = 1.5


@dataclass
class RunOptions:
    rate: float = 1.0
    config: str | None = None
    input_topic: str = ""
    model: str = ""
    params: list[str] = field(default_factory=list)
    perception: bool = True
    storage: str = "mcap"
    overwrite: bool = False
    startup_timeout: float = 60.0
    progress: bool = True


def _source_facts(bag: str, topics: list[str]) -> dict[str, dict]:
    reader = open_bag(bag)
    try:
        present = {c.topic: c for c in reader.connections}
        missing = [t for t in topics if t not in present]
        if missing:
            raise SacError(f"the bag has no {', '.join(missing)} (it has "
                           f"{', '.join(sorted(present))}); convert with --topic or play it "
                           "with sac bag play --remap")
        facts = {}
        for topic in topics:
            conn = present[topic]
            if conn.msgtype != "sensor_msgs/msg/Image":
                raise SacError(f"{topic} is {conn.msgtype}, not sensor_msgs/msg/Image")
            stamps, size = [], None
            for _, t, data in reader.messages(connections=[conn]):
                if size is None:
                    first = deserialize(reader, data, conn.msgtype)
                    size = [int(first.width), int(first.height)]
                stamps.append(t)
            facts[topic] = {"frames": len(stamps), "first_ns": stamps[0], "last_ns": stamps[-1],
                            "size": size}
        return {"topics": facts, "all": sorted(present)}
    finally:
        reader.close()


@dataclass
class _Plan:
    """What one run starts, records and checks, per camera namespace."""

    layout: PipelineLayout
    specs: list
    namespaces: list[str]      # "/front", or "" for the root namespace
    input_name: str
    packet_topic: str

    def topics(self, name: str) -> list[str]:
        return [topic_in(ns, name) for ns in self.namespaces]

    def record_topics(self) -> list[str]:
        return [t for ns in self.namespaces
                for t in camera_topics(ns or "/", self.input_name, self.packet_topic)]


def _plan(options: RunOptions) -> _Plan:
    layout = load_layout(options.config)
    layout.perception = layout.perception and options.perception
    specs = pipeline_nodes(layout, options.input_topic, options.model)
    apply_params(specs, options.params)
    return _Plan(layout, specs, ["/" + c if c else "" for c in layout.cameras],
                 input_topic(layout, specs), packet_topic(layout, specs))


def _prepare_sensors(plan: _Plan, source: dict) -> None:
    """Each sensor gets its camera's frame size (unless a -p sets one), so that it warms
    up its segmenter and encoders before it reports ready, as under ``sac pipeline``."""
    for spec in plan.specs:
        if spec.executable != "sac_sensor" or "frame_size" in spec.overrides:
            continue
        ns = spec.namespace.rstrip("/")
        width, height = source["topics"][topic_in(ns, plan.input_name)]["size"]
        spec.overrides["frame_size"] = f"[{width},{height}]"


def run_pipeline(source_bag: str, output: str, options: RunOptions,
                 log=lambda s: print(s, file=sys.stderr)) -> dict:
    if not 0.01 <= options.rate <= 100:
        raise SacError(f"--rate {options.rate:g} is outside 0.01-100")
    plan = _plan(options)
    source = _source_facts(source_bag, plan.topics(plan.input_name))
    _prepare_sensors(plan, source)
    env = plan.layout.environment()
    os.environ.update(env)  # the player and recorder use the same transports
    started = time.monotonic()
    children = Children(env)
    try:
        play_summary, play_record = _record_run(
            source_bag, output, options, plan, children,
            [t for t in plan.record_topics() if t in source["all"]], log)
    finally:
        children.stop()
    summary = _summary(output, source, plan, options, play_summary,
                       time.monotonic() - started)
    summary["player_rate"] = play_record["publish_rate"]
    summary["player_rate_error_pct"] = 100.0 * (play_record["publish_rate"] / options.rate - 1)
    return summary


def _record_run(source_bag: str, output: str, options: RunOptions, plan: _Plan,
                children: Children, wanted: list[str], log) -> tuple[str, dict]:
    """Record while the nodes run and the player plays; (player summary, player record)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    readers = plan.layout.readers(plan.specs)  # the recorder is this run's listener
    rclpy.init(args=None)
    node = None
    executor = None
    try:
        with BagWriter(output, options.storage, options.overwrite) as bag:
            node = rclpy.create_node("sac_bag_run_recorder")
            recorder = Recorder(node, bag, plan.record_topics(), log=log)
            executor = SingleThreadedExecutor()
            executor.add_node(node)
            spin = threading.Thread(target=executor.spin, daemon=True)
            spin.start()
            children.start_nodes(plan.specs, str(plan.layout.config))
            _wait_ready(node, recorder, plan, children, options, readers)
            played = _play(source_bag, options, plan.topics(plan.input_name),
                           readers["input"], wanted, children.env, log)
            _drain(recorder, plan, children)
            recorder.close()
            if recorder.failure is not None:
                raise SacError(f"writing the run bag failed: {recorder.failure}")
            executor.shutdown()
            executor = None
            return played
    finally:
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def _play(source_bag: str, options: RunOptions, inputs: list[str], input_readers: int,
          topics: list[str], env: dict, log) -> tuple[str, dict]:
    """Play the source bag in its own process (``python -m sac_ros.bags.play``) once every
    input has its readers; (its summary, its record)."""
    play = PlayOptions(rate=options.rate, topics=topics,
                       wait_for={topic: input_readers for topic in inputs},
                       wait_timeout=options.startup_timeout, delay=SETTLE_S)
    folder = Path(tempfile.mkdtemp(prefix="sac_bag_run_"))
    try:
        play_json = folder / "play.json"
        cmd = [sys.executable, "-m", "sac_ros.bags.play", source_bag, json.dumps(asdict(play)),
               str(play_json)] + ([] if options.progress else ["--no-progress"])
        log(f"sac bag run: playing {source_bag} at {options.rate:g}x into "
            f"{', '.join(inputs)}")
        player = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True)
        if player.returncode != 0:
            raise SacError(f"sac bag play failed (exit {player.returncode})")
        return player.stdout.strip(), json.loads(play_json.read_text())
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _wait_ready(node, recorder: Recorder, plan: _Plan, children: Children,
                options: RunOptions, readers: dict[str, int]) -> None:
    """Every camera: the recorder has subscribed to its input and hears packets and images."""
    from sac_ros.nodes.readiness import ReadinessProbe

    deadline = time.monotonic() + options.startup_timeout
    probe = ReadinessProbe(node, plan.namespaces, readers)
    try:
        children.wait_until(
            lambda: all(topic_in(ns, plan.input_name) in recorder.subscriptions
                        and recorder.matched(topic_in(ns, plan.packet_topic)) >= 1
                        and recorder.matched(topic_in(ns, IMAGE_TOPIC)) >= 1
                        for ns in plan.namespaces) and probe.ready(),
            deadline, lambda: f"pipeline nodes not discovered after "
                              f"{options.startup_timeout:g} s (output readers: "
                              f"{probe.missing() or 'all'})")
    finally:
        probe.destroy()


def _drain(recorder: Recorder, plan: _Plan, children: Children) -> None:
    """Wait until no packet or image has arrived for a while, then for fresh statistics."""
    watched = [topic_in(ns, t) for ns in plan.namespaces
               for t in (plan.packet_topic, IMAGE_TOPIC)]
    last, changed = None, time.monotonic()
    while True:
        state = tuple(recorder.stats.counts.get(t, 0) for t in watched)
        if state != last:
            last, changed = state, time.monotonic()
        if time.monotonic() - changed >= DRAIN_IDLE_S:
            break
        if children.failed():
            raise SacError(f"node(s) stopped: {', '.join(children.failed())}")
        time.sleep(0.1)
    time.sleep(FINAL_STATS_S)  # every node publishes its statistics once a second


def _summary(output: str, source: dict, plan: _Plan, options: RunOptions, play_summary: str,
             seconds: float) -> dict:
    _, accounting, _ = read_run(output, lambda cam, frame: None, plan.input_name,
                                packet_topic=plan.packet_topic)
    cameras = []
    for ns in plan.namespaces:
        key = ns or "/"
        facts = source["topics"][topic_in(ns, plan.input_name)]
        acc = accounting.get(key)
        if acc is None:
            raise SacError(f"the recorded run has no packets for camera {key}")
        record = acc.record(facts["frames"])
        span = (facts["last_ns"] - facts["first_ns"]) / 1e9
        nominal = ((facts["frames"] - 1) / span * options.rate) if span > 0 else float("nan")
        record.update(camera=key, nominal_replay_hz=nominal,
                      rate_error_pct=100.0 * (record["replay_speed"] / options.rate - 1.0))
        cameras.append(record)
    return {"source": source, "output": output, "rate": options.rate,
            "player": play_summary, "seconds": seconds, "cameras": cameras}


def format_run(summary: dict) -> str:
    lines = [summary["player"], f"recorded the run to {summary['output']} "
             f"({summary['seconds']:.1f} s); player rate {summary['player_rate']:.4f}x "
             f"({summary['player_rate_error_pct']:+.2f}% of the requested {summary['rate']:g}x)"]
    for cam in summary["cameras"]:
        drops = {**cam["sensor_drops"], **{f"ecu {k}": v for k, v in cam["ecu_drops"].items()}}
        verdict = ("every frame delivered or counted as a drop" if cam["unaccounted"] == 0
                   else f"{cam['unaccounted']} FRAME(S) UNACCOUNTED FOR")
        lines += [
            f"camera {cam['camera']}: " + delivery_headline(
                cam["reconstructed"], cam["source_frames"], drops, cam["unaccounted"]),
            f"  accounting: {cam['source_frames']} frames in the bag, "
            f"{cam['originals_recorded']} seen on the input topic, sensor received "
            f"{cam['sensor_received']}, {cam['packets']} packets, {cam['reconstructed']} "
            f"reconstructed, counted drops {cam['counted_drops']}: {verdict}",
            f"  replay speed {cam['replay_speed']:.4f}x as received (requested "
            f"{summary['rate']:g}x: {cam['rate_error_pct']:+.2f}%), "
            f"{cam['input_rate_hz']:.3f} Hz vs {cam['nominal_replay_hz']:.3f} Hz nominal",
        ]
    return "\n".join(lines)
