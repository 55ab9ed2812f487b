#!/usr/bin/env python3
"""The long fuzz of the ECU's packet path (issue 14): the suite's test/test_fuzz.py engine,
run for 100k+ packets, with the figures docs/reliability.md records.

Hostile packets (bit/byte flips, cuts, garbage, field values, huge and zero sizes,
swapped streams, inverted masks, CDR flips; re-signed or not) made from real packets of
the sample clip go through the wire module and a long-lived PacketReceiver, between clean
GOPs (some reordered or duplicated) whose frames must come out bit-exact; a share of the
packets also goes to SacDecoder on its own. Exits 1 if any check failed.

    .venv/bin/python benchmarks/fuzz_ecu.py [--packets 100000] [--seed 0] [--size 240x136]
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "test"))


def size_arg(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size '{text}' is not WIDTHxHEIGHT") from None
    if not (16 <= width <= 960 and 16 <= height <= 540):
        raise argparse.ArgumentTypeError("size must be within 16x16 and the clip's 960x540")
    return width, height


def vm_kib(key: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


class Progress:
    """A line every ~5%: rewritten in place on a terminal, plain lines in a log."""

    def __init__(self, total: int):
        self.total, self.tty = total, sys.stdout.isatty()
        self.start = time.monotonic()
        self.next_pct = 5

    def update(self, done: int, fig) -> None:
        pct = 100 * done // self.total
        if pct < self.next_pct and done < self.total:
            return
        self.next_pct = pct + 5
        elapsed = time.monotonic() - self.start
        line = (f"[{min(pct, 100):3d}%] {done}/{self.total} packets  {elapsed:6.0f} s  "
                f"{done / max(elapsed, 1e-9):5.0f} pkt/s  rss {vm_kib('VmRSS') / 1024:5.0f} MiB  "
                f"uncaught {sum(fig.uncaught.values())}  corrupt out {fig.corrupted_delivered}")
        print(("\r" + line) if self.tty else line, end="" if self.tty else "\n", flush=True)

    def end(self) -> None:
        if self.tty:
            print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--packets", type=int, default=100_000,
                        help="hostile and clean packets pushed into the receiver")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=size_arg, default=(240, 136),
                        help="frame size the sample clip is scaled to (WIDTHxHEIGHT)")
    parser.add_argument("--decoder-packets", type=int, default=None,
                        help="core packets for SacDecoder on its own (default: a tenth)")
    args = parser.parse_args()
    if args.packets < 1:
        parser.error("--packets must be at least 1")
    decoder_packets = args.packets // 10 if args.decoder_packets is None else args.decoder_packets

    try:
        import test_fuzz as fz
    except BaseException as exc:  # pytest.skip raises a BaseException when ROS is missing
        print(f"fuzz_ecu: error: cannot load the fuzz engine: {exc}", file=sys.stderr)
        return 2

    width, height = args.size
    print(f"fuzz_ecu: seed {args.seed}, {width}x{height} frames of the sample clip, "
          f"{args.packets} packets through wire + PacketReceiver, {decoder_packets} through "
          f"SacDecoder alone (Python {platform.python_version()}, {platform.machine()})")
    started = time.monotonic()
    pool = fz.make_pool(width, height)
    print(f"pool: {', '.join(f'{s.name} ({len(s.packets)})' for s in pool)}, "
          f"{time.monotonic() - started:.1f} s")

    fuzz = fz.EcuFuzz(pool, args.seed)
    fig = fuzz.fig
    progress = Progress(args.packets)
    rss = {"start": vm_kib("VmRSS")}
    started = time.monotonic()
    try:
        while fig.packets < args.packets:
            fuzz.episode()
            if "middle" not in rss and fig.packets >= args.packets // 2:
                rss["middle"] = vm_kib("VmRSS")
            progress.update(fig.packets, fig)
        fuzz.finish()
    finally:
        fuzz.close()
    progress.end()
    ecu_s = time.monotonic() - started
    rss["end"] = vm_kib("VmRSS")

    started = time.monotonic()
    fz.decoder_fuzz(pool, args.seed + 1, decoder_packets, fig)
    decoder_s = time.monotonic() - started
    rss["after decoder"] = vm_kib("VmRSS")
    receiver = fuzz.receiver

    mib = {k: v / 1024 for k, v in rss.items()}
    growth = mib["end"] - mib["middle"]
    print()
    print(f"packets pushed:              {fig.packets} in {ecu_s:.0f} s "
          f"({fig.packets / ecu_s:.0f} packets/s), seed {args.seed}")
    print(f"  hostile / clean:           {fig.packets - fig.clean_sent} / {fig.clean_sent} "
          f"(+{fig.middleware_refused} CDR flips the middleware refused, not pushed)")
    print(f"  re-signed (valid CRC):     {fig.resigned}")
    print(f"  corrupted (not re-signed): {fig.corrupted_sent}")
    print("mutations by kind:")
    for kind, n in sorted(fig.mutations.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<26} {n}")
    print(f"uncaught exceptions:         {sum(fig.uncaught.values())} {dict(fig.uncaught)}")
    print(f"wire module violations:      {len(fig.wire_bugs)}")
    for kinds, what in fig.wire_bugs[:10]:
        print(f"  {'+'.join(kinds)}: {what}")
    print("drops by reason:")
    for reason, n in sorted(receiver.drops.items(), key=lambda kv: -kv[1]):
        print(f"  {reason:<26} {n}")
    print(f"delivered:                   {receiver.delivered} (of them hostile but re-signed: "
          f"{fig.hostile_delivered})")
    print(f"books balanced:              {'always' if not fig.unbalanced else 'NO'} "
          f"(received {receiver.received} = delivered + drops, pending {receiver.pending})")
    print(f"corrupted delivered:         {fig.corrupted_delivered}")
    print(f"wrong-size frames delivered: {fig.wrong_size_delivered}")
    print(f"clean frames bit-exact:      {fig.clean_exact} / {fig.clean_sent}")
    print(f"key frames after garbage:    {fig.keys_exact} / {fig.keys_after_garbage} bit-exact")
    print(f"max time per packet:         {fig.max_push_s * 1e3:.1f} ms "
          f"(hangs over {fz.HANG_S:.0f} s: {fig.hangs})")
    print("memory (VmRSS):              " + ", ".join(f"{k} {v:.0f} MiB" for k, v in mib.items())
          + f"; peak (VmHWM) {vm_kib('VmHWM') / 1024:.0f} MiB; middle -> end {growth:+.1f} MiB")
    print(f"SacDecoder alone:            {fig.decoder_packets} core packets in {decoder_s:.0f} s; "
          f"bugs {sum(fig.decoder_bugs.values())} {dict(fig.decoder_bugs)}")
    for outcome, n in sorted(fig.decoder_outcomes.items(), key=lambda kv: -kv[1]):
        print(f"  {outcome:<26} {n}")
    for problem in fig.problems:
        print(f"problem: {problem}")

    failed = (sum(fig.uncaught.values()) or fig.wire_bugs or fig.corrupted_delivered
              or fig.wrong_size_delivered or fig.clean_wrong or fig.unbalanced or fig.hangs
              or fig.decoder_bugs or fig.clean_exact != fig.clean_sent or growth > 64)
    print("verdict:                     " + ("FAILED" if failed else "ok"))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
