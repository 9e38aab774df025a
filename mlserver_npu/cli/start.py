"""`mlserver-npu start FOLDER`: `mlserver start FOLDER` (the same settings.json, MLSERVER_*
variables, model repository and single-model environment mode: MLServer's own
`load_settings`), with the start-up policy of startup.py: exit status 1 when a start-up model
fails to load (MLServer 1.7.1 exits 0), or, with --keep-going / MLSERVER_NPU_KEEP_GOING=1,
the other models served and the broken one loaded again when its files change. The container
image's command."""
import argparse
import asyncio
import sys
from pathlib import Path

from mlserver import MLServer
from mlserver.cli.serve import load_settings
from mlserver.logging import configure_logger
from mlserver.utils import install_uvloop_event_loop

from ..startup import start_models
from .serve import DEFAULT_POLL_SECONDS, add_keep_going_argument, keep_going

NAME = "start"
HELP = "mlserver start FOLDER, exiting 1 when a model fails to load (or --keep-going)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", metavar="FOLDER",
                        help="the model repository (with its settings.json), as for mlserver start")
    add_keep_going_argument(parser)
    parser.add_argument(
        "--poll-interval", type=float, default=DEFAULT_POLL_SECONDS, metavar="SECONDS",
        help="with --keep-going: seconds between two looks at a broken model's files "
             f"(default {DEFAULT_POLL_SECONDS})",
    )


async def start(folder: str, going: bool, poll_interval: float) -> int:
    configure_logger()  # as mlserver start: MLServer configures it again from the settings
    settings, models = await load_settings(folder)
    server = MLServer(settings)
    serving = asyncio.ensure_future(server.start())
    await asyncio.sleep(0)  # let the servers begin, so that stop() finds them
    failures, watcher = await start_models(server, models, going, [Path(folder)], poll_interval)
    if failures and not going:
        for name, reason in failures.items():
            print(f"mlserver-npu start: model '{name}' failed to load: {reason}",
                  file=sys.stderr)
        await server.stop()
        await serving
        return 1
    watching = asyncio.ensure_future(watcher.run()) if watcher else None
    await serving
    if watching:
        watching.cancel()
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        going = keep_going(args)
    except ValueError as error:  # an MLSERVER_NPU_* variable that is not valid
        print(f"mlserver-npu start: {error}", file=sys.stderr)
        return 2
    install_uvloop_event_loop()
    return asyncio.run(start(args.folder, going, args.poll_interval))
