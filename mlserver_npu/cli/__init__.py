"""`mlserver-npu`: commands next to `mlserver start`, one module each in this package.

Each command module has `NAME`, `HELP`, `add_arguments(parser)` and `run(args) -> int`.
"""
import argparse
import sys
from typing import List, Optional

from . import compile, devices, init, inspect, serve, start, watch

COMMANDS = [serve, start, init, inspect, watch, compile, devices]


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(
        prog="mlserver-npu", description="Tools for serving models on NPUs with MLServer."
    )
    commands = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_arguments(commands.add_parser(command.NAME, help=command.HELP))
    args = parser.parse_args(argv)
    return next(c for c in COMMANDS if c.NAME == args.command).run(args)


if __name__ == "__main__":
    sys.exit(main())
