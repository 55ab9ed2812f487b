"""A tolerant MCAP scanner: what survives of an unfinished, truncated or damaged file.

rosbags' reader needs the footer, and inside a chunk it steps over bytes it cannot
parse (a zeroed region reads as empty records), so damage there is silent. This walks
the file from the start instead, checks every record (and a chunk's CRC when the writer
stored one), keeps every message it can trust, steps over damage by resynchronising on
the next plausible chunk or message index, and counts what was lost: from the summary's
statistics when they survived, else from the message indexes written after each chunk.
ROS-free; nothing here imports rclpy.
"""

from __future__ import annotations

import mmap
import re
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

MAGIC = b"\x89MCAP0\r\n"
_U16, _U32, _U64 = struct.Struct("<H"), struct.Struct("<I"), struct.Struct("<Q")
_MSG = struct.Struct("<HIQQ")          # channel, sequence, log time, publish time
_CHUNK = struct.Struct("<QQQI")        # start, end, uncompressed size, uncompressed CRC
_RESYNC = re.compile(rb"[\x02\x06\x07\x0f]")
_COMPRESSIONS = ("", "zstd", "lz4")


class McapError(Exception):
    """The file is not an MCAP at all (wrong magic, empty)."""


def _decompress(data, compression: str, size: int) -> bytes:
    if compression == "":
        return bytes(data)
    from rosbags.rosbag2.storage_mcap import DECOMPRESSORS  # rosbags' own zstd / lz4

    return DECOMPRESSORS[compression](bytes(data), size)


@dataclass
class Damage:
    start: int                 # byte range in the file
    end: int
    reason: str
    lost: int | None = None    # messages known to be lost here (from message indexes)
    indexed: int = 0           # messages the indexes after it list
    kept: int = 0              # messages of this chunk that were kept anyway

    def describe(self) -> str:
        what = (f"{self.lost} message(s) lost" if self.lost is not None
                else "lost messages not countable here")
        return f"bytes {self.start}-{self.end}: {self.reason} ({what})"


@dataclass
class Scan:
    """Everything a reader needs, with ``entries`` = (log time, order, channel, chunk, offset,
    length); chunk -1 means offset is a file offset (uncompressed data)."""

    path: Path
    size: int
    schemas: dict[int, tuple[str, str, bytes]] = field(default_factory=dict)
    channels: dict[int, tuple[int, str, str, bytes]] = field(default_factory=dict)
    chunks: list[tuple[int, int, str, int]] = field(default_factory=list)
    entries: list[tuple[int, int, int, int, int, int]] = field(default_factory=list)
    damage: list[Damage] = field(default_factory=list)
    footer: bool = False
    statistics: dict | None = None     # {"messages": n, "channels": {id: n}}
    rosbag2_metadata: str | None = None
    unknown_channel: int = 0           # messages whose channel record was lost

    @property
    def clean(self) -> bool:
        """A finished file with nothing lost: safe for rosbags' own reader."""
        return (self.footer and not self.damage and self.statistics is not None
                and self.statistics["messages"] == len(self.entries)
                and not self.unknown_channel)

    def counts(self) -> dict[int, int]:
        counts: dict[int, int] = {}
        for entry in self.entries:
            counts[entry[2]] = counts.get(entry[2], 0) + 1
        return counts


class _Owner:
    """Where the message indexes that follow a chunk (or a damaged region) are counted."""

    def __init__(self, damage: Damage | None, kept: int):
        self.damage, self.kept, self.indexed = damage, kept, 0

    def close(self) -> None:
        if self.damage is not None:
            self.damage.indexed += self.indexed
            self.damage.kept = self.kept
            if self.damage.indexed:
                self.damage.lost = max(0, self.damage.indexed - self.kept)


def scan(path: str | Path) -> Scan:
    path = Path(path)
    with path.open("rb") as handle:
        size = handle.seek(0, 2)
        if size < len(MAGIC):
            raise McapError(f"{path} is empty or not an MCAP file")
        with mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            if data[:len(MAGIC)] != MAGIC:
                raise McapError(f"{path} is not an MCAP file (wrong magic)")
            result = Scan(path, size)
            _Walker(data, result).run()
    # Messages whose channel record was in a lost chunk cannot be interpreted.
    result.unknown_channel = sum(1 for e in result.entries if e[2] not in result.channels)
    return result


class _Walker:
    def __init__(self, data, result: Scan):
        self.m, self.r, self.size = data, result, result.size
        self.owner: _Owner | None = None
        self.order = 0

    # ---------------------------------------------------------------- top level
    def run(self) -> None:
        pos = len(MAGIC)
        while pos < self.size:
            if self.size - pos < 9:
                pos = self._damaged(pos, self.size, "the file ends inside a record")
                continue
            op = self.m[pos]
            length = _U64.unpack_from(self.m, pos + 1)[0]
            end = pos + 9 + length
            if op == 0x06:
                info = self._chunk_header(pos, allow_cut=True)
                if info is None:
                    pos = self._resync(pos, "unreadable chunk header")
                    continue
                self._chunk(pos, end, *info)
                pos = min(end, self.size)
                continue
            if op == 0x07 and end <= self.size and self._index_ok(pos, length):
                records = _U32.unpack_from(self.m, pos + 11)[0]
                if self.owner is None:
                    self.owner = _Owner(None, 0)
                self.owner.indexed += records // 16
                pos = end
                continue
            if not (0x01 <= op <= 0x0F or op >= 0x80) or end > self.size or op == 0x07:
                reason = ("the file is cut short inside a record" if end > self.size
                          and (0x01 <= op <= 0x0F) else f"invalid record (opcode 0x{op:02x})")
                pos = self._resync(pos, reason)
                continue
            self._close_owner()
            try:
                self._record(op, pos + 9, end)
            except (struct.error, ValueError, UnicodeDecodeError, IndexError):
                pos = self._resync(pos, f"unreadable record (opcode 0x{op:02x})")
                continue
            if op == 0x02:
                self.r.footer = end + len(MAGIC) == self.size and \
                    self.m[end:self.size] == MAGIC
                if self.r.footer:
                    break
            pos = end
        self._close_owner()

    def _close_owner(self) -> None:
        if self.owner is not None:
            self.owner.close()
            self.owner = None

    def _damaged(self, start: int, end: int, reason: str) -> int:
        self._close_owner()
        damage = Damage(start, end, reason)
        self.r.damage.append(damage)
        self.owner = _Owner(damage, 0)   # indexes right after the damage are its messages
        return end

    def _resync(self, pos: int, reason: str) -> int:
        """The next offset after ``pos`` where a plausible record starts."""
        probe = pos + 1
        while True:
            hit = _RESYNC.search(self.m, probe)
            if hit is None:
                return self._damaged(pos, self.size, reason)
            p = hit.start()
            if self._plausible(p):
                return self._damaged(pos, p, reason)
            probe = p + 1

    def _plausible(self, p: int) -> bool:
        if self.size - p < 9:
            return False
        op, length = self.m[p], _U64.unpack_from(self.m, p + 1)[0]
        if op == 0x06:
            return self._chunk_header(p, allow_cut=False) is not None
        if op == 0x07:
            return p + 9 + length <= self.size and self._index_ok(p, length)
        if op == 0x0F:
            return length == 4
        if op == 0x02:
            return length == 20 and p + 9 + 20 + len(MAGIC) == self.size
        return False

    def _index_ok(self, pos: int, length: int) -> bool:
        if length < 6 or pos + 15 > self.size:
            return False
        records = _U32.unpack_from(self.m, pos + 11)[0]
        return length == 6 + records and records % 16 == 0

    def _record(self, op: int, start: int, end: int) -> None:
        m, r = self.m, self.r
        if op == 0x03:
            self._schema(start, end)
        elif op == 0x04:
            self._channel(start, end)
        elif op == 0x05:
            self._message(start, end, -1, 0)
        elif op == 0x0B:
            count, = _U64.unpack_from(m, start)
            at = start + 8 + 2 + 4 * 4 + 16
            nbytes, = _U32.unpack_from(m, at)
            channels = {}
            for off in range(at + 4, at + 4 + nbytes, 10):
                cid, = _U16.unpack_from(m, off)
                channels[cid] = _U64.unpack_from(m, off + 2)[0]
            if at + 4 + nbytes > end:
                raise ValueError("statistics overrun")
            r.statistics = {"messages": count, "channels": channels}
        elif op == 0x0C:
            name, at = _string(m, start, end)
            if name == "rosbag2":
                _, at = _U32.unpack_from(m, at)[0], at + 4
                while at < end:
                    key, at = _string(m, at, end)
                    value, at = _string(m, at, end)
                    if key == "serialized_metadata":
                        r.rosbag2_metadata = value

    def _schema(self, start: int, end: int, data=None) -> None:
        m = self.m if data is None else data
        sid, = _U16.unpack_from(m, start)
        name, at = _string(m, start + 2, end)
        encoding, at = _string(m, at, end)
        size, = _U32.unpack_from(m, at)
        if at + 4 + size > end:
            raise ValueError("schema overrun")
        self.r.schemas.setdefault(sid, (name, encoding, bytes(m[at + 4:at + 4 + size])))

    def _channel(self, start: int, end: int, data=None) -> None:
        m = self.m if data is None else data
        cid, sid = struct.unpack_from("<HH", m, start)
        topic, at = _string(m, start + 4, end)
        encoding, at = _string(m, at, end)
        size, = _U32.unpack_from(m, at)
        if at + 4 + size > end:
            raise ValueError("channel overrun")
        self.r.channels.setdefault(cid, (sid, topic, encoding, bytes(m[at + 4:at + 4 + size])))

    def _message(self, start: int, end: int, chunk: int, base: int, data=None) -> None:
        m = self.m if data is None else data
        if end - start < _MSG.size:
            raise ValueError("message record too short")
        cid, _, log_time, _ = _MSG.unpack_from(m, start)
        body = start + _MSG.size
        # base: where ``data`` starts in the file (0 inside a decompressed chunk).
        self.r.entries.append((log_time, self.order, cid, chunk, base + body, end - body))
        self.order += 1

    # ---------------------------------------------------------------- chunks
    def _chunk_header(self, pos: int, allow_cut: bool):
        """(compression, data offset, stored size, uncompressed size, crc) or None."""
        m, size = self.m, self.size
        if size - pos < 9 + _CHUNK.size + 4:
            return None
        length, = _U64.unpack_from(m, pos + 1)
        t0, t1, raw_size, crc = _CHUNK.unpack_from(m, pos + 9)
        at = pos + 9 + _CHUNK.size
        clen, = _U32.unpack_from(m, at)
        if clen > 8 or at + 4 + clen + 8 > size:
            return None
        try:
            compression = bytes(m[at + 4:at + 4 + clen]).decode("ascii")
        except UnicodeDecodeError:
            return None
        stored, = _U64.unpack_from(m, at + 4 + clen)
        data_at = at + 4 + clen + 8
        empty = (t0, t1) == (2**63 - 1, 0)          # rosbags' chunk without messages
        if (compression not in _COMPRESSIONS or (t0 > t1 and not empty) or raw_size > 1 << 40
                or length != data_at - pos - 9 + stored
                or (compression == "" and stored != raw_size)):
            return None
        if not allow_cut and pos + 9 + length > size:
            return None
        return compression, data_at, stored, raw_size, crc

    def _chunk(self, pos: int, end: int, compression: str, data_at: int, stored: int,
               raw_size: int, crc: int) -> None:
        self._close_owner()
        before = len(self.r.entries)
        cut = end > self.size
        damage: Damage | None = None
        if cut and compression != "":
            damage = Damage(pos, self.size, "the file ends inside a compressed chunk")
        elif cut:
            damage = Damage(pos, self.size, "the file ends inside a chunk")
            self._inner(memoryview(self.m)[data_at:self.size], -1, data_at, partial=True)
        else:
            view = memoryview(self.m)[data_at:data_at + stored]
            try:
                # An uncompressed chunk is parsed in place (no copy of a 1 MB frame).
                raw = view if compression == "" else _decompress(view, compression, raw_size)
            except Exception as exc:  # zstd / lz4 raise their own error types
                raw, damage = None, Damage(pos, end, f"chunk does not decompress ({exc})")
            if raw is not None and len(raw) != raw_size:
                raw, damage = None, Damage(pos, end, "chunk has the wrong size")
            if raw is not None and crc and zlib.crc32(raw) != crc:
                raw, damage = None, Damage(pos, end, "chunk CRC mismatch")
            if raw is not None:
                index, base = -1, data_at     # messages are read from the file later
                if compression:
                    index, base = len(self.r.chunks), 0
                    self.r.chunks.append((data_at, stored, compression, raw_size))
                problem = self._inner(raw, index, base, partial=False)
                if problem is not None:
                    # No CRC to ask: the records before the damage are kept, except the
                    # last one, which the damage may have begun inside.
                    if len(self.r.entries) > before:
                        self.r.entries.pop()
                    damage = Damage(pos, end, problem)
        if damage is not None:
            self.r.damage.append(damage)
        self.owner = _Owner(damage, len(self.r.entries) - before)

    def _inner(self, data, chunk: int, base: int, partial: bool) -> str | None:
        """Parse a chunk's records; the reason it stopped early, or None."""
        at, end = 0, len(data)
        while at < end:
            if end - at < 9:
                return None if partial else "a record is cut inside the chunk"
            op = data[at]
            length, = _U64.unpack_from(data, at + 1)
            stop = at + 9 + length
            if op not in (0x03, 0x04, 0x05):
                return f"invalid record in the chunk (opcode 0x{op:02x})"
            if stop > end:
                return None if partial else "a record overruns the chunk"
            try:
                if op == 0x05:
                    self._message(at + 9, stop, chunk, base, data)
                elif op == 0x03:
                    self._schema(at + 9, stop, data)
                else:
                    self._channel(at + 9, stop, data)
            except (struct.error, ValueError, UnicodeDecodeError, IndexError):
                return f"unreadable record in the chunk (opcode 0x{op:02x})"
            at = stop
        return None


def _string(m, at: int, end: int) -> tuple[str, int]:
    size, = _U32.unpack_from(m, at)
    if at + 4 + size > end:
        raise ValueError("string overrun")
    return bytes(m[at + 4:at + 4 + size]).decode("utf-8"), at + 4 + size


class ChunkCache:
    """Reads message payloads from the file, decompressing one chunk at a time."""

    def __init__(self, result: Scan):
        self.result = result
        self._handle = result.path.open("rb")
        self._map = mmap.mmap(self._handle.fileno(), 0, access=mmap.ACCESS_READ)
        self._chunk, self._raw = -1, b""

    def payload(self, chunk: int, offset: int, length: int) -> bytes:
        if chunk < 0:
            return self._map[offset:offset + length]
        if chunk != self._chunk:
            data_at, stored, compression, raw_size = self.result.chunks[chunk]
            self._raw = _decompress(self._map[data_at:data_at + stored], compression, raw_size)
            self._chunk = chunk
        return self._raw[offset:offset + length]

    def close(self) -> None:
        self._map.close()
        self._handle.close()
