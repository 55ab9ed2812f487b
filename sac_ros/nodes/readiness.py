"""Start-up readiness of a running pipeline: every hop's writers matched to their readers."""

from __future__ import annotations

from rclpy.node import Node

from sac_ros.core.wire import ECU_STATS_TOPIC, SENSOR_STATS_TOPIC, topic_in
from sac_ros.msg import SacStats
from sac_ros.nodes.common import matched_writers

STATS_TOPICS = {"sensor_stats": SENSOR_STATS_TOPIC, "ecu_stats": ECU_STATS_TOPIC}


class ReadinessProbe:
    """Watches each camera's sensor and ECU statistics until their outputs are matched.

    The ROS graph lists endpoints before every writer has matched every reader, and
    frames sent before that are lost to the late reader (volatile durability). The
    nodes report how many readers their output writer has matched, and the ECU how
    many writers its packet reader has; a run starts its frames once both sides of
    every hop have matched (``extra`` adds the caller's own subscriptions).
    """

    def __init__(self, node: Node, namespaces: list[str], readers: dict[str, int],
                 extra: list | None = None):
        """``readers``: ``PipelineLayout.readers()``, the readers each output must have."""
        self.wanted = {"sensor_stats": readers["packets"], "ecu_stats": readers["image"]}
        self.latest: dict[tuple[str, str], SacStats] = {}
        self.extra = list(extra or [])
        self._subs = [
            node.create_subscription(
                SacStats, topic_in(ns, STATS_TOPICS[kind]),
                lambda m, key=(ns, kind): self.latest.__setitem__(key, m), 10)
            for ns in namespaces for kind in self.wanted]
        self._namespaces, self._node = namespaces, node

    def _short(self) -> list[str]:
        short = []
        for ns in self._namespaces:
            for kind, wanted in self.wanted.items():
                stats = self.latest.get((ns, kind))
                if stats is None:
                    short.append(f"{ns} {kind}: none yet")
                elif stats.output_readers < wanted:
                    short.append(f"{ns} {kind}: {stats.output_readers}/{wanted} readers")
                elif kind == "ecu_stats" and stats.input_writers == 0:
                    short.append(f"{ns} ECU: no packet writer")
        short += [f"{sub.topic_name}: no writer" for sub in self.extra
                  if matched_writers(sub) == 0]
        return short

    def ready(self) -> bool:
        return not self._short()

    def missing(self) -> str:
        return "; ".join(self._short())

    def destroy(self) -> None:
        for sub in self._subs:
            self._node.destroy_subscription(sub)
