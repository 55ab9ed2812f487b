"""Writing and reading ROS 2 bags with ``rosbags`` (no rosbag2 needed), safely.

``BagWriter`` writes into a hidden temporary folder beside the output and moves the
finished bag to its final name only when it was closed without error: a failed or
interrupted write never leaves a half-written bag under the final name. An existing
output is refused unless ``overwrite`` is set.

``open_bag`` opens a bag (the folder with ``metadata.yaml``, or its ``.mcap`` /
``.db3`` file) with definitions read from the bag itself, falling back to the Kilted
store plus sac_ros's types for bags that carry none.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

from sac_ros.bags.types import typestore
from sac_ros.core.errors import SacError

STORAGES = ("mcap", "sqlite3")


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
        self._staging = self.final.parent / f".{self.final.name}.partial-{os.getpid()}"
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
        self.writer.write(self.connection(topic, msgtype), int(time_ns), data)
        self.counts[topic] += 1

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


class BagReader:
    """A rosbag2 reader whose typestore comes from the bag's own message definitions.

    Types without a definition in the bag fall back to the Kilted store plus sac_ros's
    types; a definition in the bag wins over ours (an older SacPacket reads as recorded).
    Unlike rosbags' AnyReader it does not take a ``*.bag`` folder for a ROS 1 bag.
    """

    def __init__(self, path: Path):
        from rosbags.rosbag2 import Reader

        self.path = path
        self._reader = Reader(path)
        self._reader.open()
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


def open_bag(path: str | Path) -> BagReader:
    """An opened reader; close it (or use it as a context manager)."""
    bag = resolve_bag(path)
    try:
        return BagReader(bag)
    except SacError:
        raise
    except Exception as exc:  # rosbags raises several reader / typesys error types
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise SacError(f"cannot read bag {bag}: {detail}") from None


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
