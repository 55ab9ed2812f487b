"""Frames waiting for their partners, keyed by header stamp, in bounded memory (ROS-free).

The perception node pairs reconstructed frames with originals, the pipeline summary
pairs originals, packets and outputs, and the run-bag reader pairs originals, packets,
live reconstructions and labels: each by the camera stamp the pieces share. A piece
whose partner never comes must not be kept forever, so every map holds at most
``limit`` entries and gives up the oldest first (insertion order; storing again under
a stamp keeps its place).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from typing import Generic, TypeVar

V = TypeVar("V")


class BoundedStampMap(Generic[V]):
    """Values by stamp (ns), oldest insertion first, at most ``limit`` after ``bound``."""

    def __init__(self, limit: int):
        self.limit = limit
        self._items: OrderedDict[int, V] = OrderedDict()

    def set(self, stamp: int, value: V) -> None:
        """Store without bounding (call ``bound`` when a batch of updates is done)."""
        self._items[stamp] = value

    def bound(self) -> list[tuple[int, V]]:
        """Give up the oldest entries beyond ``limit``; returns them, oldest first."""
        evicted = []
        while len(self._items) > self.limit:
            evicted.append(self._items.popitem(last=False))
        return evicted

    def put(self, stamp: int, value: V) -> list[tuple[int, V]]:
        """``set`` then ``bound``: the entries given up to make room."""
        self.set(stamp, value)
        return self.bound()

    def get(self, stamp: int, default: V | None = None) -> V | None:
        return self._items.get(stamp, default)

    def pop(self, stamp: int, default: V | None = None) -> V | None:
        return self._items.pop(stamp, default)

    def prune_before(self, stamp: int) -> None:
        """Give up every entry stamped earlier than ``stamp``."""
        for old in [k for k in self._items if k < stamp]:
            del self._items[old]

    def clear(self) -> None:
        self._items.clear()

    def __contains__(self, stamp: object) -> bool:
        return stamp in self._items

    def __len__(self) -> int:
        return len(self._items)

    def __iter__(self) -> Iterator[int]:
        return iter(self._items)
