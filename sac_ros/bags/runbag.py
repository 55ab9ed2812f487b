"""Reading a recorded pipeline run from a bag, frame by frame (ROS-free, rosbags).

Per camera namespace ``NS`` a recorded run has ``NS/image_raw`` (the originals, as the
camera or ``sac bag play`` published them), ``NS/sac/packets`` (or the configured packet
topic), ``NS/sac/image`` (the ECU's reconstruction, same header), and optionally
``NS/labels`` and the stats topics (names: ``sac_ros.core.wire``). Bag
times are receive times on the recorder's clock, so the latency between an original and
its reconstruction is the difference of their bag times.

The bag is streamed once in time order: originals, labels and live reconstructions wait
in small dictionaries keyed by header stamp until the frame is complete. Every packet is
also decoded offline with the core ``SacDecoder`` (keeping the two stream frames for the
papers' "stream" SA reading); when the live reconstruction is there it must equal the
offline decode, and the report says whether it did.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from sac_ros.bags.bagio import check_types, deserialize, open_bag
from sac_ros.bags.timing import theil_sen
from sac_ros.bags.types import IMAGE, PACKET, PERCEPTION_STATS, SAC_STATS
from sac_ros.core.errors import SacError
from sac_ros.core.imageconv import buffer_to_rgb
from sac_ros.core.receiver import PacketReceiver
from sac_ros.core.sac import SacDecoder, SacPacket
from sac_ros.core.stamps import BoundedStampMap
from sac_ros.core.wire import (
    ECU_STATS_TOPIC,
    IMAGE_TOPIC,
    INPUT_TOPIC,
    LABELS_TOPIC,
    PACKET_TOPIC,
    PERCEPTION_STATS_TOPIC,
    SENSOR_STATS_TOPIC,
    stamp_ns,
    topic_in,
)

MAX_PENDING = 120        # frames waiting for their partners before they are given up
PRUNE_NS = 5_000_000_000  # camera time after which an incomplete frame is given up
LABEL_WAIT_NS = 1_000_000_000  # bag time a complete frame waits for a late label


def image_rgb(msg) -> np.ndarray:
    """H x W x 3 uint8 RGB of a (rosbags) sensor_msgs/Image, via the core's conversion."""
    return buffer_to_rgb(bytes(msg.data), int(msg.width), int(msg.height), int(msg.step),
                         msg.encoding, bool(msg.is_bigendian))


@dataclass
class CameraTopics:
    namespace: str
    packets: str
    original: str
    reconstructed: str
    labels: str
    sensor_stats: str
    ecu_stats: str
    perception_stats: str

    @classmethod
    def for_packets(cls, packets: str, input_topic: str = INPUT_TOPIC,
                    packet_topic: str = PACKET_TOPIC) -> CameraTopics:
        """The camera whose packets are on ``packets`` (``NS/packet_topic``)."""
        suffix = packet_topic.strip("/")
        ns = (packets[:-len(suffix)] if packets.endswith(suffix)
              else packets.rsplit("/", 1)[0] + "/").rstrip("/")
        return cls(ns or "/", packets, *(topic_in(ns, name) for name in (
            input_topic, IMAGE_TOPIC, LABELS_TOPIC, SENSOR_STATS_TOPIC, ECU_STATS_TOPIC,
            PERCEPTION_STATS_TOPIC)))


@dataclass
class Frame:
    """One complete frame handed to the evaluator."""

    stamp_ns: int
    original: np.ndarray
    decoded: object                       # core DecodedFrame (offline), with stream frames
    packet: SacPacket
    reconstructed: np.ndarray | None      # the live ECU output (None: not in the bag)
    label: np.ndarray | None              # class ids (H x W) or None
    label_map: str | None                 # core class map of ``label``
    original_recv_ns: int
    packet_recv_ns: int
    reconstructed_recv_ns: int | None


@dataclass
class Accounting:
    """Where every source frame went, from the bag's counts and the nodes' last stats."""

    originals: int = 0
    packets: int = 0
    reconstructed: int = 0
    labels: int = 0
    sensor_received: int | None = None
    sensor_drops: dict[str, int] = field(default_factory=dict)
    ecu_received: int | None = None
    ecu_drops: dict[str, int] = field(default_factory=dict)
    offline_drops: dict[str, int] = field(default_factory=dict)
    e2e_absent: int = 0          # packets recorded without an E2E checksum (older sensors)
    live_vs_offline_max_diff: int | None = None
    perception: dict | None = None
    first_recv_ns: int | None = None
    last_recv_ns: int | None = None
    first_stamp_ns: int | None = None
    last_stamp_ns: int | None = None
    arrivals: list[tuple[int, int]] = field(default_factory=list)   # (stamp, receive) ns

    def record(self, source_frames: int | None = None) -> dict:
        frames = self.originals if source_frames is None else source_frames
        drops = sum(self.sensor_drops.values()) + sum(self.ecu_drops.values())
        return {
            "source_frames": frames, "originals_recorded": self.originals,
            "sensor_received": self.sensor_received, "packets": self.packets,
            "ecu_received": self.ecu_received, "reconstructed": self.reconstructed,
            "labels": self.labels, "sensor_drops": dict(self.sensor_drops),
            "ecu_drops": dict(self.ecu_drops), "counted_drops": drops,
            "unaccounted": frames - self.reconstructed - drops,
            "offline_decode_drops": dict(self.offline_drops),
            "e2e_check": ("absent" if self.e2e_absent == self.packets and self.packets
                          else f"absent on {self.e2e_absent} packets" if self.e2e_absent
                          else "checked"),
            "live_equals_offline_decode": (None if self.live_vs_offline_max_diff is None
                                           else self.live_vs_offline_max_diff == 0),
            "live_vs_offline_max_diff": self.live_vs_offline_max_diff,
            "input_rate_hz": self.input_rate_hz, "nominal_rate_hz": self.nominal_rate_hz,
            "replay_speed": self.replay_speed,
            "perception_node": self.perception,
        }

    @property
    def replay_speed(self) -> float:
        """Camera seconds per received second: the Theil-Sen slope of stamps against
        receive times, so a few late deliveries (a busy recorder) do not skew it."""
        return theil_sen([r for _, r in self.arrivals], [s for s, _ in self.arrivals])

    @property
    def input_rate_hz(self) -> float:
        """Originals per second as received (recorder clock)."""
        return self.nominal_rate_hz * self.replay_speed

    @property
    def nominal_rate_hz(self) -> float:
        """Originals per second of camera time (header stamps)."""
        if self.originals < 2 or self.last_stamp_ns == self.first_stamp_ns:
            return float("nan")
        return (self.originals - 1) / ((self.last_stamp_ns - self.first_stamp_ns) / 1e9)


def _drops(stats) -> dict[str, int]:
    return {str(r): int(c) for r, c in zip(stats.drop_reasons, stats.drop_counts, strict=False)}


def find_cameras(reader, input_topic: str = INPUT_TOPIC, namespaces: list[str] | None = None,
                 packet_topic: str = PACKET_TOPIC) -> list[CameraTopics]:
    packets = sorted(c.topic for c in reader.connections if c.msgtype == PACKET)
    cameras = [CameraTopics.for_packets(t, input_topic, packet_topic)
               for t in dict.fromkeys(packets)]
    if namespaces:
        wanted = {"/" + n.strip("/") if n.strip("/") else "/" for n in namespaces}
        cameras = [c for c in cameras if c.namespace in wanted]
        if not cameras:
            raise SacError(f"no camera {', '.join(sorted(wanted))} in the bag")
    if not cameras:
        topics = ", ".join(sorted({c.topic for c in reader.connections})) or "none"
        raise SacError("the bag has no sac_ros/msg/SacPacket topic, so it is not a recorded "
                       f"pipeline run (topics: {topics}); record one with `sac bag run` or "
                       "`sac bag record --camera NS`")
    return cameras


def read_run(bag: str, on_frame: Callable[[CameraTopics, Frame], None],
             input_topic: str = INPUT_TOPIC, namespaces: list[str] | None = None,
             max_frames: int | None = None, progress: Callable[[int], None] | None = None,
             packet_topic: str = PACKET_TOPIC
             ) -> tuple[list[CameraTopics], dict[str, Accounting], dict]:
    """Stream the run; ``on_frame`` gets every frame that has an original and a packet.

    Returns the cameras, their accounting, and bag facts (path, duration, topics).
    """
    reader = open_bag(bag)
    try:
        cameras = find_cameras(reader, input_topic, namespaces, packet_topic)
        by_topic: dict[str, tuple[CameraTopics, str]] = {}
        for cam in cameras:
            for role in ("packets", "original", "reconstructed", "labels", "sensor_stats",
                         "ecu_stats", "perception_stats"):
                by_topic[getattr(cam, role)] = (cam, role)
        connections = [c for c in reader.connections if c.topic in by_topic]
        wrong = [(c.topic, c.msgtype) for c in connections
                 if c.msgtype != _expected_type(by_topic[c.topic][1])]
        if wrong:
            raise SacError("unexpected message type(s): " + ", ".join(
                f"{t} is {m}" for t, m in wrong))
        check_types(reader, connections)
        has_live = {cam.namespace: any(c.topic == cam.reconstructed for c in connections)
                    for cam in cameras}
        state = {cam.namespace: _CameraState(cam, has_live[cam.namespace])
                 for cam in cameras}
        try:
            for conn, recv_ns, data in reader.messages(connections=connections):
                cam, role = by_topic[conn.topic]
                st = state[cam.namespace]
                if max_frames is not None and st.emitted >= max_frames and role in (
                        "original", "packets", "reconstructed", "labels"):
                    continue
                msg = deserialize(reader, data, conn.msgtype)
                st.take(role, msg, recv_ns, on_frame)
                if progress is not None:
                    progress(1)
            for st in state.values():
                st.flush(on_frame)
        finally:
            for st in state.values():
                st.receiver.close()
        facts = {"path": str(bag), "duration_s": reader.duration / 1e9,
                 "topics": {c.topic: c.msgcount for c in reader.connections},
                 "messages": sum(c.msgcount for c in connections)}
        return cameras, {ns: st.accounting for ns, st in state.items()}, facts
    finally:
        reader.close()


def _expected_type(role: str) -> str:
    return {"packets": PACKET, "original": IMAGE, "reconstructed": IMAGE, "labels": IMAGE,
            "sensor_stats": SAC_STATS, "ecu_stats": SAC_STATS,
            "perception_stats": PERCEPTION_STATS}[role]


class _CameraState:
    """Pending pieces of one camera's frames, keyed by header stamp.

    A frame is complete with its original, its (offline decoded) packet and, in live runs,
    the ECU's output. Complete frames wait ``LABEL_WAIT_NS`` of bag time more for a label
    (the recorder may get topics a little late and out of order) before they are handed on.
    """

    def __init__(self, cam: CameraTopics, has_live: bool):
        self.cam = cam
        self.has_live = has_live
        self.accounting = Accounting()
        # The ECU's own packet path (wire check, order, decode); older bags have no CRC.
        self.receiver = PacketReceiver(require_e2e=False,
                                       decoder=SacDecoder(keep_streams=True))
        self.accounting.offline_drops = self.receiver.drops
        self.originals: BoundedStampMap[tuple[np.ndarray, int]] = BoundedStampMap(MAX_PENDING)
        self.labels: BoundedStampMap[tuple[np.ndarray, str]] = BoundedStampMap(MAX_PENDING)
        self.decoded: BoundedStampMap[tuple] = BoundedStampMap(MAX_PENDING)
        self.live: BoundedStampMap[tuple[np.ndarray, int]] = BoundedStampMap(MAX_PENDING)
        self.ready: list[tuple[int, int, tuple]] = []   # (ready at ns, stamp, pieces)
        self.emitted = 0

    def take(self, role: str, msg, recv_ns: int, on_frame) -> None:
        self._release(recv_ns - LABEL_WAIT_NS, on_frame)
        acc = self.accounting
        if role == "original":
            stamp = stamp_ns(msg.header)
            acc.originals += 1
            acc.first_recv_ns = recv_ns if acc.first_recv_ns is None else acc.first_recv_ns
            acc.last_recv_ns = recv_ns
            acc.first_stamp_ns = stamp if acc.first_stamp_ns is None else acc.first_stamp_ns
            acc.last_stamp_ns = stamp
            acc.arrivals.append((stamp, recv_ns))
            self.originals.set(stamp, (image_rgb(msg).copy(), recv_ns))
            self._complete(stamp, recv_ns)
        elif role == "labels":
            acc.labels += 1
            ids = image_rgb(msg)[:, :, 0].copy()  # mono8 labelIds, or R of a panoptic rgb8
            class_map = "kitti_step" if msg.encoding.lower() == "rgb8" else "cityscapes_label_ids"
            self.labels.set(stamp_ns(msg.header), (ids, class_map))
        elif role == "packets":
            acc.packets += 1
            for item in self.receiver.push(msg, recv_ns):
                self._take_decoded(item)
            acc.e2e_absent = self.receiver.e2e_absent
        elif role == "reconstructed":
            acc.reconstructed += 1
            stamp = stamp_ns(msg.header)
            self.live.set(stamp, (image_rgb(msg).copy(), recv_ns))
            self._complete(stamp, recv_ns)
        elif role == "sensor_stats":
            acc.sensor_received, acc.sensor_drops = int(msg.received), _drops(msg)
        elif role == "ecu_stats":
            acc.ecu_received, acc.ecu_drops = int(msg.received), _drops(msg)
        elif role == "perception_stats":
            acc.perception = {"frames_compared": int(msg.frames_compared),
                              "miou": float(msg.miou), "iiou": float(msg.iiou)}
        for pending in (self.originals, self.decoded, self.live, self.labels):
            pending.bound()

    def _take_decoded(self, item) -> None:
        stamp = item.received.stamp_ns
        self.decoded.set(stamp, (item.received.packet, item.frame, item.arrived_ns))
        self._complete(stamp, item.arrived_ns)

    def _complete(self, stamp: int, recv_ns: int) -> None:
        """Move the frame to the ready queue once it has all its pieces."""
        if stamp not in self.originals or stamp not in self.decoded or (
                self.has_live and stamp not in self.live):
            return
        pieces = (self.originals.pop(stamp), self.decoded.pop(stamp), self.live.pop(stamp, None))
        self.ready.append((recv_ns, stamp, pieces))
        # Much older incomplete pieces were dropped on the way: give them up.
        for pending in (self.originals, self.decoded, self.live, self.labels):
            pending.prune_before(stamp - PRUNE_NS)

    def _release(self, before_ns: int | None, on_frame) -> None:
        while self.ready and (before_ns is None or self.ready[0][0] <= before_ns):
            _, stamp, (original, decoded, live) = self.ready.pop(0)
            packet, frame, packet_recv = decoded
            if live is not None:
                diff = int(np.abs(live[0].astype(np.int16) - frame.rgb.astype(np.int16)).max())
                acc = self.accounting
                acc.live_vs_offline_max_diff = max(acc.live_vs_offline_max_diff or 0, diff)
            label = self.labels.pop(stamp, None)
            self.emitted += 1
            on_frame(self.cam, Frame(
                stamp, original[0], frame, packet, live[0] if live is not None else None,
                label[0] if label else None, label[1] if label else None, original[1],
                packet_recv, live[1] if live is not None else None))

    def flush(self, on_frame) -> None:
        """End of the bag: hand on the ready frames; incomplete ones are not evaluated."""
        for item in self.receiver.flush():
            self._take_decoded(item)
        self._release(None, on_frame)
        for pending in (self.originals, self.decoded, self.live, self.labels):
            pending.clear()

