"""``sac``: one console script with subcommands."""

from __future__ import annotations

import argparse
import sys

from sac_ros import __version__
from sac_ros.core.errors import SacError


def build_parser() -> argparse.ArgumentParser:
    from sac_ros.cli import bag_cmds, eval_cmd, pipeline_cmd, report_cmd, seg_cmds, view_cmd

    parser = argparse.ArgumentParser(
        prog="sac", description="Semantic-aware compression of automotive camera video.")
    parser.add_argument("--version", action="version", version=f"sac_ros {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    eval_cmd.add_parser(sub)
    seg_cmds.add_parsers(sub)
    pipeline_cmd.add_parser(sub)
    bag_cmds.add_parsers(sub)
    report_cmd.add_parsers(sub)
    view_cmd.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SacError as exc:
        print(f"sac {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"sac {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
