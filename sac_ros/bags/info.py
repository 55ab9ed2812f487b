"""``sac bag info``: what a bag holds (read with rosbags, definitions from the bag)."""

from __future__ import annotations

from pathlib import Path

from sac_ros.bags.bagio import bag_size, open_bag, resolve_bag


def bag_info(path: str) -> dict:
    bag = resolve_bag(path)
    reader = open_bag(bag)
    try:
        topics = []
        for conn in sorted(reader.connections, key=lambda c: c.topic):
            topics.append({"topic": conn.topic, "type": conn.msgtype,
                           "messages": conn.msgcount,
                           "definition": "bag" if conn.msgdef.data else "store"})
        return {
            "path": str(bag), "storage": _storage(bag), "bytes": bag_size(bag),
            "messages": reader.message_count,
            "start_ns": reader.start_time if reader.message_count else None,
            "end_ns": reader.end_time if reader.message_count else None,
            "duration_s": reader.duration / 1e9 if reader.message_count else 0.0,
            "topics": topics,
        }
    finally:
        reader.close()


def _storage(bag: Path) -> str:
    if any(bag.glob("*.mcap")):
        return "mcap"
    if any(bag.glob("*.db3")):
        return "sqlite3"
    return "unknown"


def format_info(info: dict) -> str:
    lines = [f"bag       {info['path']} ({info['storage']}, {info['bytes'] / 1e6:.1f} MB)",
             f"messages  {info['messages']} over {info['duration_s']:.3f} s"]
    if info["start_ns"] is not None:
        lines.append(f"time      {info['start_ns'] / 1e9:.6f} .. {info['end_ns'] / 1e9:.6f} s")
    width = max([len(t["topic"]) for t in info["topics"]] + [5])
    for t in info["topics"]:
        lines.append(f"  {t['topic']:<{width}}  {t['messages']:>7}  {t['type']}")
    return "\n".join(lines)
