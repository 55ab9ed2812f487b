"""Reclaim Fast DDS shared memory left in /dev/shm by processes that no longer exist.

ROS-free. A SIGKILLed node leaves its shared-memory segment (32 MB with the pipeline's
transport setting) and its port files behind; nothing removes them later, because the
segment names are random. Both ``sac pipeline`` and the launch file call
``reclaim_dead_segments()`` before they start nodes.

Only files whose owner is provably dead are removed, by the test Fast DDS itself uses
(``fastdds shm clean`` does the same): a live owner holds an flock on the ``_el`` /
``_sl`` lock file beside each segment and port, and the kernel drops it when the owner
dies. Fast DDS takes a segment's lock before it creates the segment, so a segment whose
lock we can take has no owner and cannot get one (its name is a random 64-bit id). We
hold that lock while removing. A port is shared by number, so its files are also checked
and removed under the port's own named mutex, which every process opening it takes first.
Files with no lock file at all are left alone: nothing proves their owner is gone.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

SHM_DIR = Path("/dev/shm")
# Fast DDS's default domain name is "fastdds" (Fast DDS 3, Kilted) or "fastrtps" (2.x,
# Humble / Jazzy); segments are <domain>_<16 hex/alnum chars>, ports <domain>_port<N>.
_SEGMENT_LOCK = re.compile(r"(?:fastdds|fastrtps)_[0-9a-z]{16}_el")
_PORT_LOCK = re.compile(r"(fastdds|fastrtps)_port(\d{1,5})_(el|sl)")


@dataclass
class Reclaimed:
    """What one clean-up removed."""

    segments: int = 0
    ports: int = 0
    bytes: int = 0  # memory the removed files held (allocated tmpfs blocks)
    files: list[str] = field(default_factory=list)

    @property
    def mb(self) -> float:
        return self.bytes / 1e6

    def summary(self) -> str:
        return (f"reclaimed {self.segments} Fast DDS shared-memory segment(s) and "
                f"{self.ports} port(s) left by dead processes ({self.mb:.1f} MB)")


def _held_bytes(path: Path) -> int:
    try:
        return path.stat().st_blocks * 512
    except OSError:
        return 0


def _take_lock(path: Path) -> int | None:
    """An fd holding an exclusive flock on ``path``, or None when a live process holds
    the lock (or the file is gone). Opens read-only and never creates the file."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None
    return fd


def _remove(paths: list[Path], result: Reclaimed) -> None:
    for path in paths:
        size = _held_bytes(path)
        try:
            path.unlink()
        except FileNotFoundError:
            continue
        except OSError:  # another user's file: not ours to reclaim
            continue
        result.bytes += size
        result.files.append(path.name)


def _reclaim_segment(directory: Path, lock_name: str, result: Reclaimed) -> None:
    lock = directory / lock_name
    fd = _take_lock(lock)
    if fd is None:
        return  # owner alive
    try:
        segment = directory / lock_name[:-3]
        if segment.exists():
            result.segments += 1
        _remove([segment, lock], result)  # segment first: its lock still held by us
    finally:
        os.close(fd)


class _NamedMutex:
    """Fast DDS's port mutex: a boost named_mutex, i.e. a POSIX named semaphore
    (/dev/shm/sem.<name>). Only opened (never created), only tried (never waited on)."""

    _libc = None

    def __init__(self, name: str):
        if _NamedMutex._libc is None:
            libc = ctypes.CDLL(None, use_errno=True)
            libc.sem_open.restype = ctypes.c_void_p
            libc.sem_open.argtypes = [ctypes.c_char_p, ctypes.c_int]
            for fn in (libc.sem_trywait, libc.sem_post, libc.sem_close):
                fn.argtypes = [ctypes.c_void_p]
            _NamedMutex._libc = libc
        self.sem = self._libc.sem_open(f"/{name}".encode(), 0) or None  # SEM_FAILED is NULL

    def try_lock(self) -> bool:
        return self.sem is not None and self._libc.sem_trywait(self.sem) == 0

    def unlock(self) -> None:
        self._libc.sem_post(self.sem)

    def close(self) -> None:
        if self.sem is not None:
            self._libc.sem_close(self.sem)


def _reclaim_port(directory: Path, domain: str, port: str, result: Reclaimed) -> None:
    base = f"{domain}_port{port}"
    mutex = _NamedMutex(f"{base}_mutex")
    try:
        if not mutex.try_lock():
            return  # no mutex (cannot exclude an opener) or a process is opening the port
        try:
            locks = [directory / f"{base}_{kind}" for kind in ("el", "sl")]
            fds = []
            try:
                for lock in locks:
                    if lock.exists():
                        fd = _take_lock(lock)
                        if fd is None:
                            return  # a live listener
                        fds.append(fd)
                if not fds:
                    return
                port_file = directory / base
                if port_file.exists():
                    result.ports += 1
                # The semaphore stays: a process may already be waiting on it.
                _remove([port_file, *locks], result)
            finally:
                for fd in fds:
                    os.close(fd)
        finally:
            mutex.unlock()
    finally:
        mutex.close()


def reclaim_dead_segments(directory: Path | str = SHM_DIR) -> Reclaimed:
    """Remove the Fast DDS segments and ports in ``directory`` whose owners are dead."""
    result = Reclaimed()
    directory = Path(directory)
    if not sys.platform.startswith("linux"):
        return result  # the lock-file layout checked here is Linux's
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EACCES):
            return result
        raise
    ports = set()
    for name in names:
        if _SEGMENT_LOCK.fullmatch(name):
            _reclaim_segment(directory, name, result)
        elif match := _PORT_LOCK.fullmatch(name):
            ports.add(match.group(1, 2))
    if directory == SHM_DIR:  # the port mutexes are named semaphores, always in /dev/shm
        for domain, port in sorted(ports):
            _reclaim_port(directory, domain, port, result)
    return result


def reclaim_and_report(prefix: str, stream=None) -> Reclaimed:
    """``reclaim_dead_segments()`` with a one-line summary when anything was reclaimed."""
    result = reclaim_dead_segments()
    if result.files:
        print(f"{prefix}: {result.summary()}", file=stream or sys.stderr)
    return result
