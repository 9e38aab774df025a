"""`mlserver-npu compile MODEL_FOLDER... [--json]`: load every model once, exactly as
`mlserver start` would, so that the caches a load fills (downloads, compiled models) are full
before the server starts: a container image built this way starts without compiling.

A MODEL_FOLDER holds a model-settings.json; a folder without one is searched for them (a
whole repository). The cache is `MLSERVER_NPU_CACHE_DIR`, as for the server: set it to the
same path in both.
"""
import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from ..repository import units
from .inspect import failure_reported_here

NAME = "compile"
HELP = "fill the compiled-model caches of model folders ahead of time"

SETTINGS = "model-settings.json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "folders", nargs="+", type=Path, metavar="MODEL_FOLDER",
        help="a model folder (with model-settings.json) or a repository of them",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of lines")


def settings_files(folders: List[Path]) -> List[Path]:
    """The model-settings.json of each folder, or those found under it as `serve` finds them."""
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"'{folder}' is not a folder")
    return [unit.settings_file for unit in units(folders) if unit.settings_file]


async def compile_model(path: Path) -> Dict[str, Any]:
    """Load the model of one model-settings.json and unload it; what happened, as a dict."""
    from mlserver.repository.load import load_model_settings

    from ..pipeline import Pipeline

    report: Dict[str, Any] = {"settings": str(path)}
    try:
        settings = load_model_settings(str(path))
        report["model"] = settings.name
        implementation = settings.implementation
    except Exception as error:  # a broken model-settings.json, an implementation not importable
        return {**report, "ok": False, "error": f"{type(error).__name__}: {error}"}
    if not implementation.__module__.startswith("mlserver_npu"):
        return {**report, "ok": True, "skipped": f"{implementation.__module__} is not ours"}
    model = implementation(settings)
    start = time.perf_counter()
    try:
        with failure_reported_here():
            await model.load()
        parameters = (await model.metadata()).parameters
        # A pipeline loads (compiles) each model step as that step's own folder would.
        steps = model.describe_steps() if isinstance(model, Pipeline) else None
    except Exception as error:  # ModelLoadError says why
        return {**report, "ok": False, "error": str(error)}
    finally:
        await model.unload()
    report.update(ok=True, seconds=round(time.perf_counter() - start, 3))
    if steps is not None:
        return {**report, "steps": [_where(step) for step in steps if "model" in step]}
    return {**report, **_where(parameters.model_dump(exclude_none=True) if parameters else {})}


def _where(details: Dict[str, Any]) -> Dict[str, Any]:
    """Where a model (or a pipeline's model step) runs, and whether it came from the cache."""
    return {key: details[key] for key in ("name", "backend", "devices", "execution_devices",
                                          "loaded_from_cache") if key in details}


def _line(report: Dict[str, Any]) -> str:
    name = report.get("model", report["settings"])
    if not report["ok"]:
        return f"{name}: FAILED: {report['error']}"
    if "skipped" in report:
        return f"{name}: skipped ({report['skipped']})"
    if "steps" in report:
        steps = "; ".join(f"step {step['name']}: {_run(step)}" for step in report["steps"])
        return f"{name}: pipeline in {report['seconds']} s; {steps}"
    return f"{name}: {_run(report, report['seconds'])}"


def _run(where: Dict[str, Any], seconds: Optional[float] = None) -> str:
    cache = {True: "loaded from the cache", False: "compiled into the cache"}.get(
        where.get("loaded_from_cache"), "no compiled-model cache for this backend"
    )
    devices = where.get("execution_devices") or where.get("devices", "")
    took = "" if seconds is None else f" in {seconds} s"
    return f"{where.get('backend', '')} on {devices}{took}, {cache}"


async def _compile_all(paths: List[Path]) -> List[Dict[str, Any]]:
    # one at a time: compiles are CPU-bound and their logs stay readable
    return [await compile_model(path) for path in paths]


@contextlib.contextmanager
def _native_stdout_to_stderr() -> Iterator[None]:
    """Vendor libraries print to file descriptor 1 (QNN's LIBNATIVE notice): keep stdout for
    the report, so that `--json` stays parseable."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        paths = settings_files(args.folders)
    except FileNotFoundError as error:
        print(f"mlserver-npu compile: {error}")
        return 2
    if not paths:
        print(f"mlserver-npu compile: no {SETTINGS} under {', '.join(map(str, args.folders))}")
        return 2
    with _native_stdout_to_stderr():
        reports = asyncio.run(_compile_all(paths))
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        for report in reports:
            print(_line(report))
    return 0 if all(report["ok"] for report in reports) else 1
