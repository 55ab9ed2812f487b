"""``sac bag info``: what a bag holds (read with rosbags, definitions from the bag)."""

from __future__ import annotations

from pathlib import Path

from sac_ros.bags.bagio import bag_size, open_bag, warn_stderr


def bag_info(path: str, warn=warn_stderr) -> dict:
    reader = open_bag(path, warn)
    try:
        bag = reader.path
        topics = []
        for conn in sorted(reader.connections, key=lambda c: c.topic):
            topics.append({"topic": conn.topic, "type": conn.msgtype,
                           "messages": conn.msgcount,
                           "definition": "bag" if conn.msgdef.data else "store"})
        return {
            "path": str(bag), "storage": _storage(bag),
            "bytes": bag.stat().st_size if bag.is_file() else bag_size(bag),
            "messages": reader.message_count,
            "start_ns": reader.start_time if reader.message_count else None,
            "end_ns": reader.end_time if reader.message_count else None,
            "duration_s": reader.duration / 1e9 if reader.message_count else 0.0,
            "topics": topics,
            "recovery": reader.recovery.record() if reader.recovery else None,
        }
    finally:
        reader.close()


def _storage(bag: Path) -> str:
    if bag.is_file():
        return {".mcap": "mcap", ".db3": "sqlite3"}.get(bag.suffix, "unknown")
    if any(bag.rglob("*.mcap")):
        return "mcap"
    if any(bag.glob("*.db3")):
        return "sqlite3"
    return "unknown"


def format_info(info: dict) -> str:
    lines = [f"bag       {info['path']} ({info['storage']}, {info['bytes'] / 1e6:.1f} MB)",
             f"messages  {info['messages']} over {info['duration_s']:.3f} s"]
    recovery = info.get("recovery")
    if recovery:
        if recovery["lost"] is not None:
            lost = str(recovery["lost"])
        elif recovery["lost_at_least"]:
            lost = f"at least {recovery['lost_at_least']} (total unknown)"
        else:
            lost = "an unknown number" if recovery["damage"] else "none that reached the file"
        lines.append(f"state     {'damaged' if recovery['finished'] else 'unfinished'}: "
                     f"recovered {recovery['recovered']} messages, lost {lost}; "
                     "sac bag recover writes a finished bag")
    if info["start_ns"] is not None:
        lines.append(f"time      {info['start_ns'] / 1e9:.6f} .. {info['end_ns'] / 1e9:.6f} s")
    width = max([len(t["topic"]) for t in info["topics"]] + [5])
    for t in info["topics"]:
        lines.append(f"  {t['topic']:<{width}}  {t['messages']:>7}  {t['type']}")
    return "\n".join(lines)
