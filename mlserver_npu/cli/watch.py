"""`mlserver-npu watch REPOSITORY --url URL`: a sidecar that keeps any running MLServer in step
with a repository folder it shares, through MLServer's repository API (as Seldon Core 2's
agent does). See mlserver_npu/watch.py for what it loads, reloads and unloads, and when."""
import argparse
import asyncio
import logging
import sys
from pathlib import Path

from ..repository import PathsRepository
from ..watch import HTTPDriver, Unreachable, Watcher
from .serve import add_poll_argument

NAME = "watch"
HELP = "load, reload and unload the models of a running MLServer as a repository changes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("repository", type=Path, metavar="REPOSITORY")
    parser.add_argument("--url", required=True,
                        help="the server's REST address, e.g. http://localhost:8080")
    add_poll_argument(parser)


async def watch(repository: Path, url: str, interval: float) -> int:
    driver = HTTPDriver(url)
    watcher = Watcher(PathsRepository(paths=[str(repository)]), driver, interval)
    try:
        while True:  # the server may still be starting
            try:
                watcher.adopt(await driver.ready_models())
                break
            except Unreachable as error:
                logging.getLogger("mlserver.npu").warning("watch: waiting for %s", error)
                await asyncio.sleep(interval)
        await watcher.poll()
        await watcher.run()
    finally:
        await driver.close()
    return 0


def run(args: argparse.Namespace) -> int:
    if not args.repository.is_dir():
        print(f"mlserver-npu watch: '{args.repository}' is not a folder", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s [%(name)s] %(levelname)s - %(message)s"
    )
    print(f"Watching {args.repository} for {args.url} every {args.poll_interval:g} s", flush=True)
    try:
        return asyncio.run(watch(args.repository, args.url, args.poll_interval))
    except KeyboardInterrupt:
        return 0
