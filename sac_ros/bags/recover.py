"""``sac bag recover``: a finished bag from an unfinished, truncated or damaged MCAP.

Reads what ``open_bag`` can trust (``mcapscan``) and writes it, in time order with the
recorded definitions, type hashes and custom data, to a new bag through ``BagWriter``
(metadata.yaml + an MCAP with summary and CRCs). The input is never changed or deleted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from sac_ros.bags.bagio import PARTIAL, BagWriter, locate_bag, open_bag
from sac_ros.core.errors import SacError


@dataclass
class RecoverResult:
    source: str
    output: str | None
    messages: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    recovery: dict | None = None
    note: str = ""

    def summary(self) -> str:
        if self.output is None:
            return self.note
        rec = self.recovery or {}
        if rec.get("lost") is not None:
            lost = f"{rec['lost']} lost"
        elif rec.get("lost_at_least"):
            lost = f"at least {rec['lost_at_least']} lost (total unknown)"
        else:
            lost = "none lost that reached the file" if not rec.get("damage") else \
                "an unknown number lost"
        lines = [f"recovered {self.messages} messages from {self.source} into {self.output} "
                 f"({lost})"]
        lines += [f"  {topic}: {n}" for topic, n in self.counts.items()]
        lines += [f"  damage at {d}" for d in rec.get("damage", [])[:5]]
        lines.append(f"  {self.source} was left as it was; delete it once the new bag is "
                     "checked")
        return "\n".join(lines)


def default_output(path: str | Path) -> Path:
    """NAME for a staging folder NAME.partial-PID (NAME-recovered if NAME exists), else
    NAME-recovered beside the input."""
    src = Path(path)
    name = src.stem if src.is_file() else src.name
    staged = re.fullmatch(rf"(.+){re.escape(PARTIAL)}\d+", name)
    if staged and not (src.parent / staged.group(1)).exists():
        return src.parent / staged.group(1)
    return src.parent / f"{staged.group(1) if staged else name}-recovered"


def recover(path: str | Path, output: str | Path | None = None,
            overwrite: bool = False) -> RecoverResult:
    where = locate_bag(path)
    out = Path(output) if output else default_output(path)
    if where.mcap is None:
        raise SacError(f"{path}: only MCAP bags can be recovered (sqlite3 bags are "
                       "transactional)")
    reader = open_bag(path, warn=None)       # the result reports it instead
    try:
        if reader.recovery is None and where.metadata is not None:
            return RecoverResult(str(path), None, reader.message_count, note=(
                f"{path} is intact ({reader.message_count} messages); nothing to recover"))
        result = RecoverResult(str(path), str(out),
                               recovery=reader.recovery.record() if reader.recovery else None)
        with BagWriter(out, "mcap", overwrite) as bag:
            for conn in reader.connections:
                digest = conn.digest or _digest(reader, conn.msgtype)
                if conn.msgdef.data and digest:
                    bag.connection(conn.topic, conn.msgtype, conn.msgdef.data, digest)
                else:
                    bag.connection(conn.topic, conn.msgtype)
            for key, value in reader.custom_data.items():
                bag.set_custom_data(str(key), str(value))
            bag.set_custom_data("sac_ros.recovered_from", str(path))
            for conn, stamp, data in reader.messages():
                bag.write(conn.topic, conn.msgtype, stamp, bytes(data))
            result.counts = {t: n for t, n in bag.counts.items()}
            result.messages = sum(bag.counts.values())
        return result
    finally:
        reader.close()


def _digest(reader, msgtype: str) -> str:
    try:
        return reader.typestore.hash_rihs01(msgtype)
    except Exception:  # rosbags raises typesys errors for incomplete definitions
        return ""
