"""`mlserver-npu serve PATH...`: model files, folders or repositories served by MLServer in
one command, with this project's recommended server settings; non-zero exit when a model
fails to load at start-up (MLServer 1.7.1's `mlserver start` exits 0 then)."""
import argparse
import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from mlserver import MLServer
from mlserver.logging import configure_logger
from mlserver.settings import ModelSettings, Settings
from mlserver.utils import install_uvloop_event_loop

from ..repository import PathsRepository, RepositoryError
from ..settings import NPUEnvironment
from ..startup import start_models

# As model-repository/settings.json: models run in this process's threads, and gRPC takes
# requests up to 64 MiB (224x224 float batches); and this machine only (MLServer has no
# authentication: anyone who reaches its ports can unload every model). MLSERVER_* variables
# still win.
RECOMMENDED: Dict[str, Any] = {
    "host": "127.0.0.1",
    "debug": False,
    "parallel_workers": 0,
    "grpc_max_message_length": 64 * 2**20,
}
DEFAULT_POLL_SECONDS = 2.0


def add_extra_arguments(parser: argparse.ArgumentParser) -> None:
    """--device and --sessions, as `init` takes them too."""
    parser.add_argument("--device", help="parameters.extra.device for every model (e.g. cpu)")
    parser.add_argument("--sessions", type=int, help="parameters.extra.sessions for every model")


def extra_of(args: argparse.Namespace) -> Dict[str, Any]:
    extra = {"device": args.device, "sessions": args.sessions}
    return {key: value for key, value in extra.items() if value is not None}


def add_keep_going_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--keep-going", action="store_true", default=None,
        help="when a model fails to load at start-up, serve the others and load it again "
             "when its files change (default: stop, exit status 1; MLSERVER_NPU_KEEP_GOING=1)",
    )


def keep_going(args: argparse.Namespace) -> bool:
    """--keep-going, else MLSERVER_NPU_KEEP_GOING."""
    return args.keep_going or NPUEnvironment.from_env().keep_going


def add_poll_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--poll-interval", type=float, default=DEFAULT_POLL_SECONDS, metavar="SECONDS",
        help=f"seconds between two looks at the files (default {DEFAULT_POLL_SECONDS})",
    )


def server_settings(args: argparse.Namespace) -> Settings:
    """Recommended settings < the settings.json of a repository PATH < the flags."""
    values = {k: v for k, v in RECOMMENDED.items() if f"MLSERVER_{k.upper()}" not in os.environ}
    folders = [Path(p) for p in args.paths if Path(p).is_dir()]
    for folder in folders:
        if (folder / "settings.json").is_file():
            values.update(json.loads((folder / "settings.json").read_text()))
            break
    flags = {"host": args.host, "http_port": args.http_port, "grpc_port": args.grpc_port,
             "metrics_port": args.metrics_port}
    values.update({key: value for key, value in flags.items() if value is not None})
    values.update(
        model_repository_root=str(folders[0] if folders else Path.cwd()),
        model_repository_implementation="mlserver_npu.repository.PathsRepository",
        model_repository_implementation_args={
            "paths": [str(Path(p).resolve()) for p in args.paths],
            "name": args.name,
            "extra": extra_of(args),
        },
        load_models_at_startup=True,
    )
    return Settings(**values)


def _same(a: ModelSettings, b: ModelSettings) -> bool:
    """Versions of one name are MLServer's; a name without a version is one model."""
    return a.name == b.name and (a.version == b.version or None in (a.version, b.version))


def _models(repository: PathsRepository) -> Tuple[List[ModelSettings], List[str]]:
    models: List[ModelSettings] = []
    problems: List[str] = []
    try:
        units = repository.units()
    except RepositoryError as error:
        return models, [str(error)]
    paths: List[Path] = []
    for unit in units:
        try:
            settings = repository.read(unit)
        except RepositoryError as error:
            problems.append(str(error))
            continue
        twin = next((path for path, model in zip(paths, models) if _same(model, settings)), None)
        if twin is not None:
            problems.append(f"'{twin}' and '{unit.path}' are both model '{settings.name}'")
            continue
        paths.append(unit.path)
        models.append(settings)
    return models, problems


def _where(settings: Settings, models: List[ModelSettings]) -> str:
    host = settings.host if settings.host not in ("0.0.0.0", "::", "") else "localhost"
    rest = f"http://{host}:{settings.http_port}"
    width = max(len(m.name) for m in models)
    lines = [f"  {m.name:<{width}}  {rest}/v2/models/{m.name}/infer" for m in models]
    return "\n".join([
        f"Serving {len(models)} model(s):", *lines,
        f"REST     {rest}  (API docs: {rest}/v2/docs)",
        f"gRPC     {host}:{settings.grpc_port}",
        f"metrics  http://{host}:{settings.metrics_port}{settings.metrics_endpoint or ''}",
    ])


async def serve(settings: Settings, poll_interval: Optional[float],
                keep_going: bool = False) -> int:
    repository = PathsRepository(**settings.model_repository_implementation_args)
    models, problems = _models(repository)
    if not models and not problems:
        problems.append(f"no model found in {', '.join(map(str, repository.paths))}")
    if problems:
        for problem in problems:
            print(f"mlserver-npu serve: {problem}", file=sys.stderr)
        return 2
    server = MLServer(settings)
    serving = asyncio.ensure_future(server.start())
    await asyncio.sleep(0)  # let the servers begin, so that stop() finds them
    failures, watcher = await start_models(
        server, models, keep_going, repository.paths,
        poll_interval or DEFAULT_POLL_SECONDS, watch_all=poll_interval is not None,
    )
    if failures and not keep_going:
        for name, reason in failures.items():
            print(f"mlserver-npu serve: model '{name}' failed to load: {reason}", file=sys.stderr)
        await server.stop()
        await serving
        return 1
    print(_where(settings, models), flush=True)
    watching = asyncio.ensure_future(watcher.run()) if watcher else None
    if poll_interval is not None:
        print(f"Watching {', '.join(map(str, repository.paths))} every {poll_interval:g} s",
              flush=True)
    await serving
    if watching:
        watching.cancel()
    return 0


NAME = "serve"
HELP = "serve model files, model folders or repositories (no JSON needed for a file)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="a model file (.onnx, .tflite), a model folder or a repository")
    parser.add_argument("--name", help="model name for a single model file (default: its stem; "
                                       "its folder's name for a model.* file)")
    add_extra_arguments(parser)
    parser.add_argument("--host", help="address to listen on (default 127.0.0.1, this machine "
                                       "only; 0.0.0.0 for every interface)")
    parser.add_argument("--http-port", type=int, help="REST port (default 8080)")
    parser.add_argument("--grpc-port", type=int, help="gRPC port (default 8081)")
    parser.add_argument("--metrics-port", type=int, help="Prometheus port (default 8082)")
    parser.add_argument("--watch", action="store_true",
                        help="load new, reload changed and unload removed models")
    add_keep_going_argument(parser)
    add_poll_argument(parser)


def run(args: argparse.Namespace) -> int:
    if args.name and (len(args.paths) != 1 or not Path(args.paths[0]).is_file()):
        print("mlserver-npu serve: --name needs exactly one model file", file=sys.stderr)
        return 2
    try:
        settings = server_settings(args)
        going = keep_going(args)
    except (ValueError, OSError) as error:  # a settings.json or a variable that is not valid
        print(f"mlserver-npu serve: {error}", file=sys.stderr)
        return 2
    configure_logger(settings)
    install_uvloop_event_loop()
    return asyncio.run(serve(settings, args.poll_interval if args.watch else None, going))
