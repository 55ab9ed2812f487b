"""The ECU's packet path, ROS-free: wire check, order, decode and account for every packet.

``PacketReceiver.push`` takes packet messages as they arrive (from DDS, or a bag) and
returns the frames that are ready, in sequence order. In between:

- the wire module checks bounds and the E2E CRC (drops: ``malformed``, ``corrupt``,
  ``unprotected``);
- ``seq`` orders the packets: a duplicate is dropped as ``duplicate`` (not a gap); a
  packet that arrives early waits in a small reorder window (``reorder_window`` packets,
  at most ``max_hold_ms``) for the ones before it; only a gap that outlives the window is
  ``lost``, and a packet that turns up after that is ``late``;
- the decoder decodes (drops: ``waiting_for_key_frame``, ``decode_error``, ...).

A sender whose numbering starts again (a restarted sensor: far behind, but with newer
stamps) or jumps further ahead than its stamps allow (more than ``MAX_RATE_HZ`` packets
a second) is followed (``resyncs``), not counted as billions of lost packets; a replay
(far behind and not newer) is ``stale``.

Nothing a message holds can raise out of ``push``. The books always balance::

    received == delivered + (drops other than lost) + pending

and, counted by sequence number, every packet the sensor sent between the first and the
last one seen is delivered, dropped with a reason, or ``lost``: a gap is first put down to
packets that arrived but were dropped before their sequence number could be trusted
(corrupt, malformed), and only the rest is ``lost``.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from sac_ros.core.errors import PacketError
from sac_ros.core.sac import DecodedFrame, SacDecoder
from sac_ros.core.wire import Received, packet_from_msg

LOST, DUPLICATE, LATE, STALE = "lost", "duplicate", "late", "stale"
INTERNAL = "internal_error"
HISTORY = 1024  # sequence numbers remembered for duplicate / late detection
# No camera sends faster than this (the sensor's fps tops out here): a forward jump in
# seq larger than the stamps allow at this rate is a sender that lost its count, not
# lost packets, and is followed like a restart.
MAX_RATE_HZ = 1000


@dataclass
class Delivered:
    frame: DecodedFrame
    received: Received
    header: object  # the message's header, to republish the frame under
    arrived_ns: int  # when push() took it (the caller's clock)


@dataclass
class _Held:
    received: Received
    header: object
    since_ns: int


class PacketReceiver:
    def __init__(self, reorder_window: int = 3, max_hold_ms: float = 100.0,
                 require_e2e: bool = True, decoder: SacDecoder | None = None,
                 on_drop: Callable[[str, str], None] | None = None):
        if not 0 <= reorder_window <= HISTORY // 2:
            raise ValueError(f"reorder_window {reorder_window} is outside 0-{HISTORY // 2}")
        self.reorder_window = int(reorder_window)
        self.max_hold_ns = int(max_hold_ms * 1e6)
        self.require_e2e = require_e2e
        self.decoder = decoder or SacDecoder()
        self.on_drop = on_drop
        self.received = 0
        self.delivered = 0
        self.drops: Counter[str] = Counter()
        self.e2e_absent = 0      # packets accepted without a checksum (require_e2e off)
        self.resyncs = 0         # sequence restarts (a restarted sensor)
        self._next: int | None = None           # the next sequence number to release
        self._held: dict[int, _Held] = {}
        self._seen: OrderedDict[int, str] = OrderedDict()  # seq -> "done" | "lost"
        self._last_stamp_ns: int | None = None
        # Packets dropped before their (untrusted) seq could be used: a later gap in the
        # sequence is theirs first, so one bad packet is not counted twice.
        self._unsequenced = 0
        self._uncounted_gap = False

    @property
    def pending(self) -> int:
        return len(self._held)

    def balanced(self) -> bool:
        """received == delivered + drops other than lost + pending."""
        dropped = sum(n for reason, n in self.drops.items() if reason != LOST)
        return self.received == self.delivered + dropped + self.pending

    def _drop(self, reason: str, detail: str = "", count: int = 1) -> None:
        self.drops[reason] += count
        if self.on_drop is not None:
            self.on_drop(reason, detail)

    def _remember(self, seq: int, state: str) -> None:
        self._seen[seq] = state
        self._seen.move_to_end(seq)
        while len(self._seen) > HISTORY:
            self._seen.popitem(last=False)

    def push(self, msg, now_ns: int | None = None) -> list[Delivered]:
        """Take one packet message; the frames now ready, oldest first."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        self.received += 1
        try:
            received = packet_from_msg(msg, self.require_e2e)
        except PacketError as exc:
            self._unsequenced += 1
            self._drop(exc.reason, str(exc))
            return []
        except Exception as exc:  # the receiver must survive any one message
            self._unsequenced += 1
            self._drop(INTERNAL, f"{type(exc).__name__}: {exc}")
            return []
        if received.e2e == "absent":
            self.e2e_absent += 1
        return self._order(received, msg.header, now_ns)

    def poll(self, now_ns: int | None = None) -> list[Delivered]:
        """Release packets held longer than ``max_hold_ms`` (call from a timer)."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        return self._release(now_ns)

    def flush(self) -> list[Delivered]:
        """Release everything held, counting the gaps as lost (end of a bag or a run)."""
        return self._release(None, force=True)

    def _order(self, received: Received, header, now_ns: int) -> list[Delivered]:
        seq = received.packet.seq
        if self._next is None:
            self._next = seq
        state = self._seen.get(seq)
        if seq in self._held or state == "done":
            self._drop(DUPLICATE, f"packet {seq} arrived twice")
            return []
        if state == "lost":
            # Given up on already: too late to show it in order. (Not below 0: its slot
            # may have been put down to a packet dropped unread.)
            self.drops[LOST] = max(0, self.drops[LOST] - 1)
            self._remember(seq, "done")
            self._drop(LATE, f"packet {seq} arrived after the reorder window")
            return []
        if seq < self._next:
            if self._next - seq <= HISTORY or (self._last_stamp_ns is not None
                                                and received.stamp_ns <= self._last_stamp_ns):
                # Older than anything we remember and not newer in time: a replay.
                self._drop(LATE if self._next - seq <= HISTORY else STALE,
                           f"packet {seq} is older than {self._next}")
                return []
            # Far behind but newer in time: the sensor restarted. Near 0, it counted from
            # 0 and what came before was sent; further up nobody knows what was.
            if seq <= HISTORY:
                return self._resync(received, header, now_ns, 0)
            return self._jump(received, header, now_ns)
        if self._last_stamp_ns is not None and seq - self._next > self._plausible_gap(
                received.stamp_ns):
            return self._jump(received, header, now_ns)
        return self._hold(received, header, now_ns)

    def _plausible_gap(self, stamp_ns: int) -> int:
        """The most packets a sender can have sent since the last frame delivered."""
        elapsed = max(0, stamp_ns - self._last_stamp_ns)
        return HISTORY + elapsed * MAX_RATE_HZ // 1_000_000_000

    def _jump(self, received: Received, header, now_ns: int) -> list[Delivered]:
        """A numbering that jumped: its predecessors may still be on the way, so wait for
        them in the window, but do not call the numbers before it lost."""
        first = max(0, received.packet.seq - self.reorder_window)
        return self._resync(received, header, now_ns, first, count_gap=False)

    def _resync(self, received: Received, header, now_ns: int, first: int,
                count_gap: bool = True) -> list[Delivered]:
        """Follow a sender whose numbering started again at ``first``, so that packets
        that overtook the first ones still come out in order. ``count_gap``: the
        numbers before the first packet seen were sent (a restart counts from 0);
        after a jump nobody knows, and they are not called lost."""
        out = self._release(None, force=True)
        self.resyncs += 1
        self._next = first
        self._uncounted_gap = not count_gap
        self._seen.clear()
        return out + self._hold(received, header, now_ns)

    def _hold(self, received: Received, header, now_ns: int) -> list[Delivered]:
        self._held[received.packet.seq] = _Held(received, header, now_ns)
        return self._release(now_ns)

    def _release(self, now_ns: int | None, force: bool = False) -> list[Delivered]:
        out: list[Delivered] = []
        while self._held:
            held = self._held.pop(self._next, None)
            if held is not None:
                self._uncounted_gap = False
                self._remember(self._next, "done")
                self._next += 1
                frame = self._decode(held)
                if frame is not None:
                    out.append(frame)
                continue
            oldest = min(self._held)
            expired = (now_ns is not None
                       and now_ns - self._held[oldest].since_ns >= self.max_hold_ns)
            if not (force or expired or len(self._held) > self.reorder_window):
                break
            # The gap outlived the window: those packets are lost, unless packets already
            # dropped unread (corrupt, malformed) account for them.
            if self._uncounted_gap:  # the unknown numbers before a jump: not lost
                self._uncounted_gap = False
            else:
                gap = oldest - self._next
                explained = min(gap, self._unsequenced)
                self._unsequenced -= explained
                if gap > explained:
                    self._drop(LOST, f"packets {self._next}-{oldest - 1} never arrived",
                               gap - explained)
                for seq in range(max(self._next, oldest - HISTORY), oldest):
                    self._remember(seq, "lost")
            self._next = oldest
        return out

    def _decode(self, held: _Held) -> Delivered | None:
        packet = held.received.packet
        try:
            frame = self.decoder.decode(packet)
        except PacketError as exc:
            self._drop(exc.reason, str(exc))
            return None
        except Exception as exc:  # the receiver must survive any one packet
            self._drop(INTERNAL, f"{type(exc).__name__}: {exc}")
            return None
        if frame is None:
            detail = self.decoder.last_drop_reason or "unknown"
            self._drop(detail.split(":")[0], detail)
            return None
        self.delivered += 1
        self._last_stamp_ns = held.received.stamp_ns
        return Delivered(frame, held.received, held.header, held.since_ns)

    def close(self) -> None:
        self.decoder.close()
