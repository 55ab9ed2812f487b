"""``sac bag play``: publish a bag's messages at their recorded timing x rate.

The serialized CDR from the bag is published untouched (rclpy raw publishing), so
headers, stamps and payloads are exactly what was recorded. The schedule is absolute
(message i goes out at ``start + (t_i - t_0) / rate`` on the monotonic clock), so
sleep jitter never accumulates into a rate error. Optional: loop, a start offset into
the bag, ``/clock`` at a fixed rate (bag time), and waiting for subscribers. SIGINT and
SIGTERM end the playback cleanly (``--loop`` without a count runs until then): the
result says how far it got.

``python -m sac_ros.bags.play`` (``main``) is the player process `sac bag run` starts.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sac_ros.bags.bagio import open_bag
from sac_ros.bags.timing import theil_sen
from sac_ros.bags.types import message_class
from sac_ros.core.errors import SacError


@dataclass
class PlayOptions:
    rate: float = 1.0
    loop: int = 1                      # passes over the bag; 0 = until interrupted
    start_offset: float = 0.0          # seconds into the bag
    clock_hz: float = 0.0              # 0: no /clock
    topics: list[str] | None = None
    remap: dict[str, str] = field(default_factory=dict)
    wait_for: dict[str, int] = field(default_factory=dict)   # topic -> subscribers
    wait_timeout: float = 60.0
    delay: float = 0.0
    qos_depth: int = 100
    reliability: str = "reliable"
    skip_unknown: bool = False
    linger: float = 0.5                # keep publishers alive this long after the last message


@dataclass
class PlayResult:
    published: dict[str, int] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    clock_messages: int = 0
    bag_span_s: float = 0.0            # bag time between the first and last message played
    wall_span_s: float = 0.0           # wall time between them
    loops: int = 0
    max_late_ms: float = 0.0           # worst lateness of a publish against its schedule
    interrupted: bool = False          # stopped by SIGINT / SIGTERM
    publishes: list[tuple[float, float]] = field(default_factory=list, repr=False)

    @property
    def achieved_rate(self) -> float:
        """Bag seconds played per wall second, first to last publish (1.0 = real time)."""
        return self.bag_span_s / self.wall_span_s if self.wall_span_s > 0 else float("nan")

    @property
    def publish_rate(self) -> float:
        """Bag seconds per wall second as the Theil-Sen slope over every publish."""
        return theil_sen([w for w, _ in self.publishes], [b for _, b in self.publishes])

    def record(self, requested: float) -> dict:
        return {"published": self.published, "skipped": self.skipped,
                "interrupted": self.interrupted,
                "clock_messages": self.clock_messages, "loops": self.loops,
                "bag_span_s": self.bag_span_s, "wall_span_s": self.wall_span_s,
                "max_late_ms": self.max_late_ms, "achieved_rate": self.achieved_rate,
                "publish_rate": self.publish_rate, "requested_rate": requested}

    def summary(self, requested: float) -> str:
        lines = [f"played {sum(self.published.values())} messages in {self.wall_span_s:.3f} s "
                 f"({self.loops} pass(es)); rate {self.publish_rate:.4f}x over all publishes, "
                 f"{self.achieved_rate:.4f}x first to last (requested {requested:g}x), "
                 f"worst lateness {self.max_late_ms:.1f} ms"
                 + ("; stopped by a signal" if self.interrupted else "")]
        lines += [f"  {topic}: {count}" for topic, count in self.published.items()]
        lines += [f"  skipped {topic}: {why}" for topic, why in self.skipped.items()]
        if self.clock_messages:
            lines.append(f"  /clock: {self.clock_messages}")
        return "\n".join(lines)


class StopFlag:
    """Set from a signal handler. A plain flag: an Event's lock could deadlock there, and
    ``wait`` sleeps in short slices because time.sleep resumes after a handler."""

    def __init__(self):
        self.flag = False

    def set(self) -> None:
        self.flag = True

    def is_set(self) -> bool:
        return self.flag

    def wait(self, seconds: float) -> bool:
        end = time.monotonic() + seconds
        while not self.flag:
            left = end - time.monotonic()
            if left <= 0:
                break
            time.sleep(min(left, 0.05))
        return self.flag


def parse_remap(items: list[str]) -> dict[str, str]:
    remap = {}
    for item in items:
        old, sep, new = item.partition(":=")
        if not sep or not old.startswith("/") or not new.startswith("/"):
            raise SacError(f"--remap '{item}' must look like /old/topic:=/new/topic")
        remap[old] = new
    return remap


def parse_wait(items: list[str]) -> dict[str, int]:
    wait = {}
    for item in items:
        topic, _, count = item.partition("=")
        try:
            wait[topic] = int(count or 1)
        except ValueError:
            raise SacError(f"--wait-for '{item}' must look like /topic or /topic=N") from None
        if not topic.startswith("/") or wait[topic] < 1:
            raise SacError(f"--wait-for '{item}' must look like /topic or /topic=N (N >= 1)")
    return wait


def play(bag: str, options: PlayOptions, progress: Callable[[int], None] | None = None,
         log: Callable[[str], None] = lambda s: print(s, file=sys.stderr)) -> PlayResult:
    if not 0.01 <= options.rate <= 100:
        raise SacError(f"--rate {options.rate:g} is outside 0.01-100")
    if options.start_offset < 0 or options.clock_hz < 0 or options.loop < 0:
        raise SacError("--start-offset, --clock and --loop must not be negative")
    reader = open_bag(bag)
    stop = StopFlag()
    # Our handler, not rclpy's: rclpy's shuts the context down under a publish (an
    # RCLError traceback); this one lets the loop finish the message and report.
    previous = {}
    if threading.current_thread() is threading.main_thread():
        previous = {sig: signal.signal(sig, lambda *_: stop.set())
                    for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _play(reader, options, progress, log, stop)
    finally:
        reader.close()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def play_with_bar(bag: str, options: PlayOptions, show_progress: bool = True) -> PlayResult:
    """``play`` with a progress bar on stderr (out of the message count, when it is known)."""
    from tqdm import tqdm

    reader = open_bag(bag)
    total = sum(c.msgcount for c in reader.connections
                if not options.topics or c.topic in options.topics) if options.loop else None
    reader.close()
    if total is not None:
        total *= options.loop
    bar = tqdm(total=total, unit="msg", desc="sac bag play", file=sys.stderr,
               disable=not show_progress or None)
    try:
        return play(bag, options, bar.update)
    finally:
        bar.close()


def exit_code(result: PlayResult, options: PlayOptions) -> int:
    """Ctrl-C is how ``loop=0`` ends; it cuts any other playback short (130)."""
    return 130 if result.interrupted and options.loop != 0 else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m sac_ros.bags.play BAG OPTIONS RESULT [--no-progress]``.

    OPTIONS: ``PlayOptions`` fields as a JSON object. Prints the summary on stdout and
    writes ``PlayResult.record`` to the file RESULT as JSON.
    """
    import argparse

    parser = argparse.ArgumentParser(prog="python -m sac_ros.bags.play",
                                     description="Play a bag (the player of `sac bag run`).")
    parser.add_argument("bag")
    parser.add_argument("options", help="PlayOptions fields as a JSON object")
    parser.add_argument("result", help="write the playback record here (JSON)")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        options = PlayOptions(**json.loads(args.options))
        result = play_with_bar(args.bag, options, not args.no_progress)
    except SacError as exc:
        print(f"sac bag play: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    print(result.summary(options.rate))
    Path(args.result).write_text(json.dumps(result.record(options.rate), indent=2))
    return exit_code(result, options)


def _select(reader, options: PlayOptions, result: PlayResult):
    available = {c.topic for c in reader.connections}
    if options.topics:
        unknown = [t for t in options.topics if t not in available]
        if unknown:
            raise SacError(f"the bag has no topic {', '.join(unknown)}; it has "
                           f"{', '.join(sorted(available))}")
    chosen = [c for c in reader.connections if not options.topics or c.topic in options.topics]
    classes, usable = {}, []
    for conn in chosen:
        cls = message_class(conn.msgtype)
        if cls is None:
            why = (f"{conn.msgtype} is not installed for rclpy (its definition is in the bag, "
                   "but publishing needs the generated Python package)")
            if not options.skip_unknown:
                raise SacError(f"cannot publish {conn.topic}: {why}; leave it out with --topics "
                               "or pass --skip-unknown")
            result.skipped[conn.topic] = why
            continue
        classes[conn.topic] = (cls, conn.msgtype)
        usable.append(conn)
    if not usable:
        raise SacError("no topic left to play")
    return usable, classes


def _play(reader, options: PlayOptions, progress, log, stop: StopFlag) -> PlayResult:
    import rclpy

    result = PlayResult()
    connections, classes = _select(reader, options, result)
    rclpy.init(args=None, signal_handler_options=rclpy.SignalHandlerOptions.NO)
    node = None
    try:
        node = rclpy.create_node("sac_bag_player")
        publishers, clock_pub = _publishers(node, classes, options, result)
        _wait_for_subscribers(node, publishers, options, log, stop)
        if options.delay:
            stop.wait(options.delay)
        start_ns = reader.start_time + round(options.start_offset * 1e9)
        if start_ns >= reader.end_time:
            raise SacError(f"--start-offset {options.start_offset:g} s is past the end of the "
                           f"bag ({(reader.end_time - reader.start_time) / 1e9:.3f} s)")
        schedule = _Schedule(options, clock_pub, result, stop)
        passes = 0
        while (options.loop == 0 or passes < options.loop) and not stop.is_set():
            played = _play_pass(reader.messages(connections=connections, start=start_ns),
                                publishers, schedule, passes == 0, progress)
            passes += 1
            if played == 0:
                break
            schedule.end_pass(passes)
        schedule.finish(passes)
        stop.wait(options.linger)
        return result
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def _publishers(node, classes: dict, options: PlayOptions, result: PlayResult):
    """A publisher per played topic (under its remapped name), and /clock's when asked."""
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy

    reliability = {"reliable": ReliabilityPolicy.RELIABLE,
                   "best_effort": ReliabilityPolicy.BEST_EFFORT}[options.reliability]
    qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=options.qos_depth,
                     reliability=reliability)
    publishers = {}
    for topic, (cls, _msgtype) in classes.items():
        out = options.remap.get(topic, topic)
        publishers[topic] = node.create_publisher(cls, out, qos)
        result.published[out] = 0
    clock_pub = None
    if options.clock_hz:
        from rosgraph_msgs.msg import Clock

        clock_pub = node.create_publisher(Clock, "/clock", 10)
    return publishers, clock_pub


def _play_pass(messages, publishers: dict, schedule: _Schedule, first_pass: bool,
               progress) -> int:
    """Publish one pass over the bag on schedule; the number of messages published."""
    played = 0
    for conn, stamp, data in messages:
        if schedule.stop.is_set():
            break
        timing = schedule.wait_for(stamp, first_pass)
        if timing is None:
            break
        publishers[conn.topic].publish(bytes(data))
        schedule.published(schedule.options.remap.get(conn.topic, conn.topic), *timing)
        played += 1
        if progress is not None:
            progress(1)
    return played


class _Schedule:
    """Message i goes out at ``wall0 + bag_s_i / rate``; bag time runs on across passes
    (one median frame step between them), and /clock is published in between."""

    def __init__(self, options: PlayOptions, clock_pub, result: PlayResult, stop: StopFlag):
        self.options, self.clock_pub, self.result, self.stop = options, clock_pub, result, stop
        self.clock_period = 1.0 / options.clock_hz if options.clock_hz else 0.0
        self.wall0 = time.monotonic()
        self.next_clock = self.wall0
        self.first_ns: int | None = None
        self.last_bag_s = 0.0
        self.last_wall = self.wall0
        self.pass_offset = 0.0       # bag seconds before this pass's first message
        self.pass_span = 0.0         # bag seconds of one pass
        self.step = 0.1              # bag seconds between passes (set after the first)
        self.stamps: list[int] = []  # first pass only: for the gap between passes

    def wait_for(self, stamp: int, first_pass: bool) -> tuple[float, float] | None:
        """Sleep until the message is due, publishing /clock meanwhile; (its bag second,
        its due time), or None when stopped."""
        if self.first_ns is None:
            self.first_ns = stamp
        if first_pass:
            self.stamps.append(stamp)
        bag_s = self.pass_offset + (stamp - self.first_ns) / 1e9
        target = self.wall0 + bag_s / self.options.rate
        while True:
            now = time.monotonic()
            if self.clock_pub is not None and self.next_clock <= min(now, target):
                # Bag time of this pass (it jumps back when a loop restarts, as rosbag2's does).
                elapsed = (self.next_clock - self.wall0) * self.options.rate - self.pass_offset
                _publish_clock(self.clock_pub, self.first_ns + round(max(0.0, elapsed) * 1e9))
                self.result.clock_messages += 1
                self.next_clock += self.clock_period
                continue
            if now >= target:
                break
            wake = target if self.clock_pub is None else min(target, self.next_clock)
            if self.stop.wait(max(0.0, wake - now)):
                break
        return None if self.stop.is_set() else (bag_s, target)

    def published(self, topic: str, bag_s: float, target: float) -> None:
        done = time.monotonic()
        result = self.result
        result.max_late_ms = max(result.max_late_ms, (done - target) * 1e3)
        result.published[topic] += 1
        self.last_bag_s, self.last_wall = bag_s, done
        result.publishes.append((done - self.wall0, bag_s))

    def end_pass(self, passes: int) -> None:
        if passes == 1:
            self.pass_span = (self.stamps[-1] - self.stamps[0]) / 1e9
            unique = sorted(set(self.stamps))
            gaps = sorted(b - a for a, b in zip(unique, unique[1:], strict=False))
            self.step = gaps[len(gaps) // 2] / 1e9 if gaps else 0.1
        self.pass_offset += self.pass_span + self.step

    def finish(self, passes: int) -> None:
        self.result.loops = passes
        self.result.interrupted = self.stop.is_set()
        if self.first_ns is not None:
            self.result.bag_span_s = self.last_bag_s
            self.result.wall_span_s = self.last_wall - self.wall0


def _publish_clock(publisher, bag_ns: int) -> None:
    from builtin_interfaces.msg import Time
    from rosgraph_msgs.msg import Clock

    publisher.publish(Clock(clock=Time(sec=bag_ns // 1_000_000_000,
                                       nanosec=bag_ns % 1_000_000_000)))


def _wait_for_subscribers(node, publishers, options: PlayOptions, log,
                          stop: StopFlag) -> None:
    if not options.wait_for:
        return
    by_name = {options.remap.get(t, t): p for t, p in publishers.items()}
    missing = [t for t in options.wait_for if t not in by_name]
    if missing:
        raise SacError(f"--wait-for {', '.join(missing)}: not a topic this playback publishes")
    deadline = time.monotonic() + options.wait_timeout
    while True:
        short = {t: n for t, n in options.wait_for.items()
                 if by_name[t].get_subscription_count() < n}
        if not short:
            return
        if time.monotonic() > deadline:
            raise SacError("subscribers not there after "
                           f"{options.wait_timeout:g} s: " + ", ".join(
                               f"{t} has {by_name[t].get_subscription_count()} of {n}"
                               for t, n in short.items()))
        if stop.wait(0.05):
            raise KeyboardInterrupt


if __name__ == "__main__":
    raise SystemExit(main())
