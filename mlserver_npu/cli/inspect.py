"""`mlserver-npu inspect MODEL_FILE|FOLDER [--json]`: what a model is and whether it loads.

The model is loaded exactly as the server would load it (with the implementation its settings
name, NPURuntime or Pipeline: the same settings validation, source, backend, processing and
warm-up), described from its metadata, and unloaded; nothing is served.
"""
import argparse
import asyncio
import contextlib
import json
import logging
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

from mlserver.settings import ModelSettings

from ..backends import BackendError, get_backend
from ..repository import RepositoryError, units
from ..pipeline import Pipeline
from ..runtime import NPURuntime


def _tensors(tensors: Optional[List[Any]]) -> List[Dict[str, Any]]:
    described = []
    for tensor in tensors or []:
        item = {"name": tensor.name, "datatype": tensor.datatype, "shape": tensor.shape}
        content_type = tensor.parameters.content_type if tensor.parameters else None
        if content_type:
            item["content_type"] = content_type
        described.append(item)
    return described


@contextlib.contextmanager
def failure_reported_here() -> Iterator[None]:
    """Around a load whose failure the command prints itself: without the runtime's log of
    that failure (its ERROR records), so that it is printed once."""
    npu = logging.getLogger("mlserver.npu")

    def below_error(record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR

    npu.addFilter(below_error)
    try:
        yield
    finally:
        npu.removeFilter(below_error)


async def describe(settings: ModelSettings) -> Dict[str, Any]:
    """{"name", "valid", ...}: the signature, file and devices of a model that loads (of a
    pipeline: its signature and steps), or {"valid": False, "error": reason} for one that
    does not."""
    report: Dict[str, Any] = {"name": settings.name}
    try:
        implementation = settings.implementation
        if not issubclass(implementation, (NPURuntime, Pipeline)):
            raise TypeError(
                f"implementation '{settings.implementation_}' is not an mlserver-npu model "
                "(mlserver_npu.NPURuntime or mlserver_npu.Pipeline)"
            )
        model = implementation(settings)
        with failure_reported_here():
            await model.load()
    except Exception as error:
        reason = getattr(error, "reason", None) or f"{type(error).__name__}: {error}"
        return {**report, "valid": False, "error": reason}
    try:
        metadata = await model.metadata()
        if isinstance(model, Pipeline):
            steps = model.describe_steps()
            postprocess = model.describe_postprocess()
        else:
            model_file = model.stages.model_path
            model_metadata = model.stages.model_metadata
            postprocess = [p.describe() for p in model.stages.outputs.postprocesses]
    finally:
        await model.unload()
    if isinstance(model, Pipeline):
        return {
            **report, "valid": True, "pipeline": True, "steps": steps,
            "inputs": _tensors(metadata.inputs), "outputs": _tensors(metadata.outputs),
            "postprocess": postprocess,
        }
    parameters = metadata.parameters.model_dump() if metadata.parameters else {}
    backend = parameters.get("backend")
    try:
        available = get_backend(backend).available_devices()
    except BackendError:
        available = []
    return {
        **report,
        "valid": True,
        "model_file": str(model_file),
        "size": model_file.stat().st_size,
        "sha256": parameters.get("sha256"),
        "backend": backend,
        "devices": parameters.get("devices", "").split(","),
        "available_devices": available,
        "static_batch": parameters.get("static_batch"),
        "inputs": _tensors(metadata.inputs),
        "outputs": _tensors(metadata.outputs),
        "postprocess": postprocess,
        "model_metadata": model_metadata,
        "warnings": parameters.get("warnings"),
    }


def _print(report: Dict[str, Any]) -> None:
    print(f"model    {report['name']}  ({report['path']})")
    if not report["valid"]:
        print(f"INVALID  {report['error']}")
        return
    if report.get("pipeline"):
        _print_steps(report["steps"])
    else:
        _print_file(report)
    for kind in ["inputs", "outputs"]:
        for tensor in report[kind]:
            shape = "[" + ", ".join(map(str, tensor["shape"])) + "]"
            image = "  image" if tensor.get("content_type") == "image" else ""
            print(f"{kind[:-1]:<8} {tensor['name']}  {tensor['datatype']} {shape}{image}")
    for post in report.get("postprocess") or []:
        extra = "".join(
            f", {key} {post[key]}" for key in ("decoder", "labels") if post.get(key) is not None
        )
        print(f"postproc {post['type']}{extra}: {', '.join(post['reads'])} -> "
              f"{', '.join(post['outputs'])}")
    if report.get("model_metadata"):
        shown = {
            k: v if len(v) <= 60 else v[:57] + "..." for k, v in report["model_metadata"].items()
        }
        print("metadata " + "  ".join(f"{k}={v}" for k, v in shown.items()))
    if report.get("warnings"):
        print(f"warning  {report['warnings']}")


def _print_steps(steps: List[Dict[str, Any]]) -> None:
    print(f"pipeline {len(steps)} steps: {', '.join(step['name'] for step in steps)}")
    for step in steps:
        if "combine" in step:
            print(f"step     {step['name']}  {step['combine']} of {', '.join(step['inputs'])}")
        else:
            print(f"step     {step['name']}  {step['model']}: {step['backend']} on "
                  f"{step['devices'].replace(',', ', ')}")


def _print_file(report: Dict[str, Any]) -> None:
    print(f"file     {report['model_file']}  {report['size']} bytes  sha256 {report['sha256']}")
    print(f"backend  {report['backend']} on {', '.join(report['devices'])} "
          f"(available here: {', '.join(report['available_devices']) or 'none'})")
    if report["static_batch"]:
        print(f"batch    static {report['static_batch']} "
              "(requests of any size are split and padded)")


NAME = "inspect"
HELP = "describe a model file or folder and check that it loads, without serving it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", metavar="MODEL_FILE|FOLDER")
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def run(args: argparse.Namespace) -> int:
    path = Path(args.path)
    try:
        found = units([path])
        if len(found) != 1:
            raise RepositoryError(
                f"'{path}' holds {len(found)} models: inspect one model file or folder"
            )
        settings = found[0].read(None, {})
    except RepositoryError as error:
        report = {"name": None, "valid": False, "error": str(error)}
    else:
        report = asyncio.run(describe(settings))
    report = {"path": str(path), "kind": "file" if path.is_file() else "folder", **report}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print(report)
    if not report["valid"]:
        print(f"mlserver-npu inspect: {report['error']}", file=sys.stderr)
    return 0 if report["valid"] else 1
