"""Writing and reading ROS 2 bags with ``rosbags`` (no rosbag2 needed), safely.

``BagWriter`` writes into a staging folder ``NAME.partial-PID/`` beside the output and
moves the finished bag to its final name only when it was closed without error: a
failed or interrupted write never leaves a half-written bag under the final name. An
existing output is refused unless ``overwrite`` is set. MCAP chunks carry a CRC and
``flush()`` pushes the open chunk to the file, so a killed writer leaves an MCAP whose
every flushed message is recoverable (``sac bag recover``).

``open_bag`` opens a bag (the folder with ``metadata.yaml``, or its ``.mcap`` /
``.db3`` file) with definitions read from the bag itself, falling back to the Kilted
store plus sac_ros's types for bags that carry none. Every MCAP is checked first
(``mcapscan``): an unfinished, truncated or damaged one is read as far as it can be
trusted, with a warning that says what was recovered and what was lost.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import struct
import sys
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from sac_ros.bags.types import typestore
from sac_ros.core.errors import SacError

STORAGES = ("mcap", "sqlite3")
PARTIAL = ".partial-"              # staging folders are NAME.partial-PID
CHUNK_BYTES = 1 << 20              # rosbags' own chunk size: it closes chunks past this
_MESSAGE_HEADER = struct.Struct("<BQHIQQ")   # MCAP message record: op, length, channel, ...


def storage_plugin(name: str):
    from rosbags.rosbag2 import StoragePlugin

    try:
        return {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[name]
    except KeyError:
        raise SacError(f"unknown storage '{name}'; choose {' or '.join(STORAGES)}") from None


def check_output(path: str | Path, overwrite: bool) -> Path:
    """The output path, refused when it exists (unless ``overwrite``) or cannot be made."""
    final = Path(path)
    if final.exists() and not overwrite:
        raise SacError(f"output bag {final} already exists (pass --overwrite to replace it)")
    if final.exists() and not final.is_dir():
        raise SacError(f"output {final} exists and is not a bag folder; not replacing it")
    if final.is_dir() and overwrite and any(final.iterdir()) and not (
            final / "metadata.yaml").is_file():
        raise SacError(f"{final} is a folder that is not a bag; not replacing it")
    parent = final.resolve().parent
    if not parent.is_dir():
        raise SacError(f"output folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise SacError(f"cannot write to {parent}")
    return final


class BagWriter:
    """A rosbags Writer that publishes its bag under the final name only on success."""

    def __init__(self, path: str | Path, storage: str = "mcap", overwrite: bool = False,
                 compress: bool = False):
        from rosbags.rosbag2 import CompressionFormat, CompressionMode, Writer

        self.final = check_output(path, overwrite)
        self.overwrite = overwrite
        self.store = typestore()
        # Visible, so that what a killed writer leaves is found and recovered.
        self._staging = self.final.parent / f"{self.final.name}{PARTIAL}{os.getpid()}"
        shutil.rmtree(self._staging, ignore_errors=True)
        self._staging.mkdir()
        # The bag folder inside the staging folder already has its final name, so the
        # storage file and metadata.yaml name each other correctly after the move.
        self.writer = Writer(self._staging / self.final.name, version=9,
                             storage_plugin=storage_plugin(storage))
        if compress:
            mode = (CompressionMode.STORAGE if storage == "mcap" else CompressionMode.MESSAGE)
            self.writer.set_compression(mode, CompressionFormat.ZSTD)
        self.storage = storage
        self.counts: dict[str, int] = {}
        self._connections: dict[tuple[str, str], object] = {}
        self._open = False

    def __enter__(self) -> BagWriter:
        try:
            self.writer.open()
        except Exception:
            shutil.rmtree(self._staging, ignore_errors=True)
            raise
        self._open = True
        return self

    def connection(self, topic: str, msgtype: str, msgdef: str | None = None,
                   digest: str | None = None):
        """The connection for (topic, type); definitions from the typestore unless given."""
        key = (topic, msgtype)
        if key not in self._connections:
            if msgdef is not None and digest is not None:
                conn = self.writer.add_connection(topic, msgtype, msgdef=msgdef, rihs01=digest)
            else:
                if msgtype not in self.store.fielddefs:
                    raise SacError(f"no message definition for {msgtype} (topic {topic})")
                conn = self.writer.add_connection(topic, msgtype, typestore=self.store)
            self._connections[key] = conn
            self.counts[topic] = 0
        return self._connections[key]

    def write(self, topic: str, msgtype: str, time_ns: int, data: bytes) -> None:
        conn = self.connection(topic, msgtype)
        storage = self._mcap()
        if storage is None:
            self.writer.write(conn, int(time_ns), data)
        else:
            self._write_mcap(storage, conn, int(time_ns), data)
        self.counts[topic] += 1

    def _mcap(self):
        """rosbags' MCAP storage writer, if this is one whose chunks we can CRC."""
        storage = getattr(self.writer, "storage", None)
        if self.storage != "mcap" or not self._open or storage is None:
            return None
        chunk = getattr(storage, "chunk", None)
        if (getattr(chunk, "bio", None) is None or not hasattr(chunk, "msgs")
                or not hasattr(storage, "close_chunk") or not hasattr(storage, "bio")):
            return None
        return storage

    def _write_mcap(self, storage, conn, time_ns: int, data: bytes) -> None:
        record = _MESSAGE_HEADER.size + len(data)
        if storage.chunk.msgs and storage.chunk.bio.tell() + record > CHUNK_BYTES:
            self._close_chunk(storage)
        if storage.chunk.bio.tell() + record <= CHUNK_BYTES:
            self.writer.write(conn, time_ns, data)
            return
        # A message this large makes rosbags close the chunk itself: its CRC is computed
        # here from the bytes rosbags will write (pending records + this message record).
        with storage.chunk.bio.getbuffer() as pending:
            crc = zlib.crc32(pending)
        crc = zlib.crc32(_MESSAGE_HEADER.pack(0x05, record - 9, conn.id, 0, time_ns, time_ns),
                         crc)
        crc = zlib.crc32(data, crc)
        start = storage.bio.tell()
        self.writer.write(conn, time_ns, data)
        if storage.chunk.bio.tell() == 0:
            _patch_crc(storage, start, crc)

    def _close_chunk(self, storage) -> None:
        with storage.chunk.bio.getbuffer() as pending:
            crc = zlib.crc32(pending)
        start = storage.bio.tell()
        storage.close_chunk()
        _patch_crc(storage, start, crc)

    def flush(self) -> None:
        """Write the open chunk (with its CRC) and hand the file to the OS: a SIGKILL after
        this loses nothing written before it."""
        storage = self._mcap()
        if storage is None:
            return
        if storage.chunk.msgs:
            self._close_chunk(storage)
        storage.bio.flush()

    def write_message(self, topic: str, msgtype: str, time_ns: int, message) -> None:
        self.write(topic, msgtype, time_ns, self.store.serialize_cdr(message, msgtype))

    def set_custom_data(self, key: str, value: str) -> None:
        self.writer.set_custom_data(key, value)

    def abort(self) -> None:
        """Close the partial bag cleanly and remove it; the final name is untouched."""
        if self._open:
            with contextlib.suppress(Exception):
                self.writer.abort()
            self._open = False
        shutil.rmtree(self._staging, ignore_errors=True)

    def commit(self) -> Path:
        """Finish the bag and move it to its final name."""
        self.flush()
        self.writer.close()
        self._open = False
        built = self._staging / self.final.name
        if self.final.exists():
            old = self._staging / "replaced"
            os.replace(self.final, old)
        os.replace(built, self.final)
        shutil.rmtree(self._staging, ignore_errors=True)
        return self.final

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            try:
                self.commit()
            except BaseException:
                self.abort()
                raise
        else:
            self.abort()
        return False


def _patch_crc(storage, start: int, crc: int) -> None:
    """Store a chunk's CRC in the chunk record rosbags wrote at ``start`` (it writes 0, "not
    computed"): op(1) length(8) start(8) end(8) uncompressed size(8), then the CRC."""
    end = storage.bio.tell()
    storage.bio.seek(start + 33)
    storage.bio.write(crc.to_bytes(4, "little"))
    storage.bio.seek(end)


def bag_size(path: Path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def resolve_bag(path: str | Path) -> Path:
    """A bag folder (with metadata.yaml) from the folder or one of its storage files."""
    bag = Path(path)
    if not bag.exists():
        raise SacError(f"bag {bag} does not exist")
    if bag.is_file():
        if (bag.parent / "metadata.yaml").is_file():
            return bag.parent
        raise SacError(f"{bag} is not part of a ROS 2 bag folder (no metadata.yaml beside it)")
    if not (bag / "metadata.yaml").is_file():
        raise SacError(f"{bag} is not a ROS 2 bag (no metadata.yaml)")
    return bag


@dataclass
class BagLocation:
    """What ``path`` names: the bag folder (None for a lone file), its metadata.yaml (None
    when the writer never finished) and its one MCAP file (None for sqlite3 or split bags)."""

    path: Path
    folder: Path | None
    metadata: Path | None
    mcap: Path | None


def locate_bag(path: str | Path) -> BagLocation:
    """Find the bag at ``path``: a bag folder, its storage file, a lone ``.mcap``, or a
    folder a killed writer left (``NAME.partial-PID/``, no metadata.yaml)."""
    bag = Path(path)
    if not bag.exists():
        raise SacError(f"bag {bag} does not exist")
    if bag.is_file():
        meta = bag.parent / "metadata.yaml"
        if bag.suffix == ".mcap":
            return BagLocation(bag, bag.parent if meta.is_file() else None,
                               meta if meta.is_file() else None, bag)
        folder = resolve_bag(bag)
        return BagLocation(folder, folder, folder / "metadata.yaml", None)
    meta = bag / "metadata.yaml"
    if meta.is_file():
        mcaps = sorted(bag.glob("*.mcap"))
        return BagLocation(bag, bag, meta, mcaps[0] if len(mcaps) == 1 else None)
    # A bag folder that lost its metadata.yaml, or a writer's staging folder, which holds
    # the bag folder one level down (a folder of finished bags is not one bag).
    mcaps = sorted(bag.glob("*.mcap"))
    if PARTIAL in bag.name:
        mcaps += sorted(bag.glob("*/*.mcap"))
    if len(mcaps) == 1:
        inner = mcaps[0].parent
        has_meta = (inner / "metadata.yaml").is_file()
        return BagLocation(inner if has_meta else bag, inner if has_meta else None,
                           inner / "metadata.yaml" if has_meta else None, mcaps[0])
    if len(mcaps) > 1:
        raise SacError(f"{bag} has no metadata.yaml and several MCAP files; name one of them")
    raise SacError(f"{bag} is not a ROS 2 bag (no metadata.yaml, no .mcap file)")


@dataclass
class Recovery:
    """What an unfinished, truncated or damaged MCAP gave up."""

    file: str
    finished: bool                   # the writer wrote its summary and footer
    recovered: int
    lost: int | None                 # exact when the file or metadata.yaml says how many
    lost_at_least: int               # what the message indexes prove was lost
    lost_by_topic: dict[str, int] = field(default_factory=dict)
    damage: list[str] = field(default_factory=list)

    def summary(self) -> str:
        state = ("damaged" if self.finished else
                 "unfinished (no summary: the writer was killed or the file is cut short)")
        if self.lost is not None:
            lost = f"lost {self.lost} message(s)"
        elif self.lost_at_least:
            lost = f"lost at least {self.lost_at_least} message(s); the total is unknown"
        elif self.damage:
            lost = "lost an unknown number of messages"
        else:
            lost = "nothing lost from what reached the file"
        if self.lost_by_topic:
            lost += " (" + ", ".join(f"{t}: {n}" for t, n in self.lost_by_topic.items()) + ")"
        return f"{self.file} is {state}; recovered {self.recovered} message(s), {lost}"

    def lines(self, limit: int = 5) -> list[str]:
        out = [self.summary()]
        out += [f"  damage at {d}" for d in self.damage[:limit]]
        if len(self.damage) > limit:
            out.append(f"  ... and {len(self.damage) - limit} more damaged region(s)")
        return out

    def record(self) -> dict:
        return {"file": self.file, "finished": self.finished, "recovered": self.recovered,
                "lost": self.lost, "lost_at_least": self.lost_at_least,
                "lost_by_topic": self.lost_by_topic, "damage": self.damage}


def _yaml_info(text: str | None) -> dict:
    import yaml

    try:
        data = yaml.safe_load(text) if text else None
        info = (data or {}).get("rosbag2_bagfile_information") or {}
        return info if isinstance(info, dict) else {}
    except (yaml.YAMLError, AttributeError):
        return {}


class RecoveredStorage:
    """rosbags-Reader-like access to the messages ``mcapscan`` found, in time order."""

    def __init__(self, scan, info: dict):
        from rosbags.interfaces import (
            Connection,
            ConnectionExtRosbag2,
            MessageDefinition,
            MessageDefinitionFormat,
        )

        from sac_ros.bags.mcapscan import ChunkCache

        self.scan = scan
        hashes = {}
        for item in info.get("topics_with_message_count") or []:
            meta = item.get("topic_metadata") or {}
            hashes[(meta.get("name"), meta.get("type"))] = meta.get("type_description_hash", "")
        counts = scan.counts()
        known = {cid for cid in counts if cid in scan.channels}
        self.entries = sorted(e for e in scan.entries if e[2] in known)
        self.connections = []
        self._by_id = {}
        for cid, (sid, topic, encoding, _meta) in sorted(scan.channels.items()):
            name, fmt, text = scan.schemas.get(sid, ("", "", b""))
            msgdef = MessageDefinition(MessageDefinitionFormat.IDL if fmt == "ros2idl"
                                       else MessageDefinitionFormat.MSG,
                                       text.decode("utf-8", "replace"))
            conn = Connection(cid, topic, name, msgdef, hashes.get((topic, name), "") or "",
                              counts.get(cid, 0), ConnectionExtRosbag2(encoding or "cdr", []),
                              self)
            self.connections.append(conn)
            self._by_id[cid] = conn
        self._cache = ChunkCache(scan)

    @property
    def message_count(self) -> int:
        return len(self.entries)

    @property
    def start_time(self) -> int:
        return self.entries[0][0] if self.entries else 2**63 - 1

    @property
    def end_time(self) -> int:
        return self.entries[-1][0] + 1 if self.entries else 0

    @property
    def duration(self) -> int:
        return self.end_time - self.start_time if self.entries else 0

    def messages(self, connections=(), start: int | None = None, stop: int | None = None):
        wanted = {c.id for c in connections} if connections else None
        for log_time, _, cid, chunk, offset, length in self.entries:
            if wanted is not None and cid not in wanted:
                continue
            if (start is not None and log_time < start) or (stop is not None and
                                                            log_time >= stop):
                continue
            yield self._by_id[cid], log_time, self._cache.payload(chunk, offset, length)

    def close(self) -> None:
        self._cache.close()


def _recovery(scan, storage: RecoveredStorage, info: dict) -> Recovery:
    topics = {cid: ch[1] for cid, ch in scan.channels.items()}
    got = {c.id: c.msgcount for c in storage.connections}
    lost, by_topic = None, {}
    if scan.statistics is not None:
        lost = max(0, scan.statistics["messages"] - storage.message_count)
        for cid, n in scan.statistics["channels"].items():
            if n > got.get(cid, 0):
                by_topic[topics.get(cid, f"channel {cid}")] = n - got.get(cid, 0)
    elif info.get("message_count") is not None:
        expected = {}
        for item in info.get("topics_with_message_count") or []:
            name = (item.get("topic_metadata") or {}).get("name")
            expected[name] = expected.get(name, 0) + int(item.get("message_count") or 0)
        have = {}
        for c in storage.connections:
            have[c.topic] = have.get(c.topic, 0) + c.msgcount
        lost = max(0, int(info["message_count"]) - storage.message_count)
        by_topic = {t: n - have.get(t, 0) for t, n in expected.items() if n > have.get(t, 0)}
    at_least = sum(d.lost or 0 for d in scan.damage) + scan.unknown_channel
    if lost is not None:
        lost = max(lost, at_least)
    return Recovery(str(scan.path), scan.footer, storage.message_count, lost, at_least,
                    by_topic, [d.describe() for d in scan.damage])


_SCANS: dict[tuple, object] = {}
_WARNED: set[tuple] = set()


def _scan(path: Path):
    from sac_ros.bags.mcapscan import McapError, scan

    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _SCANS:
        try:
            result = scan(path)
        except McapError as exc:
            raise SacError(str(exc)) from None
        except OSError as exc:
            raise SacError(f"cannot read {path}: {exc.strerror or exc}") from None
        _SCANS.clear()                   # one bag at a time: a scan holds its index
        _SCANS[key] = result
    return key, _SCANS[key]


def warn_stderr(line: str) -> None:
    print(f"warning: {line}", file=sys.stderr)


class BagReader:
    """A rosbag2 reader whose typestore comes from the bag's own message definitions.

    Types without a definition in the bag fall back to the Kilted store plus sac_ros's
    types; a definition in the bag wins over ours (an older SacPacket reads as recorded).
    Unlike rosbags' AnyReader it does not take a ``*.bag`` folder for a ROS 1 bag.
    ``recovery`` is None for an intact bag; else what could not be read.
    """

    def __init__(self, path: Path, storage=None, recovery: Recovery | None = None,
                 custom_data: dict | None = None):
        if storage is None:
            from rosbags.rosbag2 import Reader

            storage = Reader(path)
            storage.open()
        self.path = path
        self.recovery = recovery
        self._custom_data = custom_data
        self._reader = storage
        try:
            self.typestore = self._typestore()
        except BaseException:
            self._reader.close()
            raise

    def _typestore(self):
        from rosbags.interfaces import MessageDefinitionFormat
        from rosbags.typesys import Stores, get_types_from_idl, get_types_from_msg, get_typestore

        types = dict(typestore().fielddefs)
        for conn in self._reader.connections:
            fmt, text = conn.msgdef.format, conn.msgdef.data
            if fmt == MessageDefinitionFormat.MSG and text:
                types.update(get_types_from_msg(text, conn.msgtype))
            elif fmt == MessageDefinitionFormat.IDL and text:
                sep = "=" * 80 + "\n"
                parts = text.split(sep)[1:] if text.startswith(f"{sep}IDL: ") else [text]
                for part in parts:
                    types.update(get_types_from_idl(part.split("\n", 1)[1]
                                                    if part.startswith("IDL: ") else part))
        store = get_typestore(Stores.EMPTY)
        store.register(types)
        return store

    @property
    def connections(self):
        return self._reader.connections

    @property
    def start_time(self) -> int:
        return self._reader.start_time

    @property
    def end_time(self) -> int:
        return self._reader.end_time

    @property
    def duration(self) -> int:
        return self._reader.duration if self._reader.message_count else 0

    @property
    def message_count(self) -> int:
        return self._reader.message_count

    @property
    def custom_data(self) -> dict:
        """metadata.yaml's custom_data (string values), e.g. ``sac_ros.source``."""
        import yaml

        if self._custom_data is not None:
            return dict(self._custom_data)
        try:
            data = yaml.safe_load((self.path / "metadata.yaml").read_text(encoding="utf-8"))
            info = data.get("rosbag2_bagfile_information") or {}
            return dict(info.get("custom_data") or {})
        except (OSError, yaml.YAMLError, AttributeError):
            return {}

    def messages(self, connections=(), start: int | None = None, stop: int | None = None):
        """(connection, bag time ns, raw CDR) in time order."""
        return self._reader.messages(connections=list(connections), start=start, stop=stop)

    def deserialize(self, data: bytes, msgtype: str):
        return self.typestore.deserialize_cdr(data, msgtype)

    def close(self) -> None:
        self._reader.close()

    def __enter__(self) -> BagReader:
        return self

    def __exit__(self, *exc) -> bool:
        self.close()
        return False


def open_bag(path: str | Path, warn: Callable[[str], None] | None = warn_stderr
             ) -> BagReader:
    """An opened reader; close it (or use it as a context manager).

    An MCAP that is not intact is read as far as it can be trusted, and ``warn`` gets
    what was recovered and lost (once per file and process); ``reader.recovery`` too.
    """
    where = locate_bag(path)
    try:
        if where.mcap is None:
            return BagReader(resolve_bag(where.path))
        key, scan = _scan(where.mcap)
        if scan.clean and where.metadata is not None:
            return BagReader(where.folder)
        text = (where.metadata.read_text(encoding="utf-8", errors="replace")
                if where.metadata is not None else scan.rosbag2_metadata)
        info = _yaml_info(text)
        storage = RecoveredStorage(scan, info)
        recovery = None
        if not scan.clean:
            recovery = _recovery(scan, storage, info)
            if warn is not None and key not in _WARNED:
                _WARNED.add(key)
                for line in recovery.lines():
                    warn(line)
        return BagReader(where.folder or where.path, storage, recovery,
                         dict(info.get("custom_data") or {}))
    except SacError:
        raise
    except Exception as exc:  # rosbags raises several reader / typesys error types
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise SacError(f"cannot read bag {where.path}: {detail}") from None


def check_types(reader, connections) -> None:
    """Fail clearly if a message type has neither a definition in the bag nor in our store."""
    known = reader.typestore.fielddefs
    missing = sorted({(c.msgtype, c.topic) for c in connections if c.msgtype not in known})
    if missing:
        listing = ", ".join(f"{t} on {topic}" for t, topic in missing)
        raise SacError(f"the bag has no definition for {listing}, and it is not a ROS 2 Kilted "
                       "or sac_ros type")


def deserialize(reader, data: bytes, msgtype: str):
    try:
        return reader.deserialize(data, msgtype)
    except Exception as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise SacError(f"cannot deserialize a {msgtype} message: {detail}") from None
