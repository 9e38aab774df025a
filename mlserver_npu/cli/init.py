"""`mlserver-npu init MODEL_FILE`: a model folder for it, ready for `mlserver start`.

The model is loaded as the server would (`inspect`'s describe) before anything is written, so
the folder holds a model that loads, with its introspected inputs and outputs.
"""
import argparse
import asyncio
import json
import shutil
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

from mlserver.settings import ModelParameters, ModelSettings

from ..batcher import BatchingSettings
from ..processing.preprocess import PRESETS
from ..repository import IMPLEMENTATION, RepositoryError, file_model_name, file_model_settings
from .inspect import describe
from .serve import add_extra_arguments, extra_of


def suggest_preprocess(inputs: List[Dict[str, Any]]) -> Optional[str]:
    """A preset for a single float image-shaped input: `imagenet` for 3 channels (its size is
    the model's), `mnist` for 1 channel of 28x28."""
    if len(inputs) != 1 or inputs[0]["datatype"] not in ("FP32", "FP16"):
        return None
    shape = inputs[0]["shape"]
    if len(shape) != 4:
        return None
    channels_first = shape[1] in (1, 3)
    channels = shape[1] if channels_first else shape[3]
    size = shape[2:] if channels_first else shape[1:3]
    if channels == 3 and min(size) >= 32:
        return "imagenet"
    if channels == 1 and size == [28, 28]:
        return "mnist"
    return None


def _settings(name: str, uri: str, extra: Dict[str, Any], report: Dict[str, Any]) -> dict:
    if report["static_batch"]:
        batching = BatchingSettings(max_batch_size=report["static_batch"])
        extra = {**extra, "batching": batching.model_dump(exclude_none=True)}
    settings: Dict[str, Any] = {"name": name, "implementation": IMPLEMENTATION}
    settings["parameters"] = {"uri": uri, "extra": extra}
    settings["inputs"] = _metadata_tensors(report["inputs"])
    settings["outputs"] = _metadata_tensors(report["outputs"])
    return settings


def _metadata_tensors(tensors: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """inspect's tensors as model-settings.json `inputs` / `outputs` entries."""
    return [
        {key: value for key, value in tensor.items() if key != "content_type"}
        | ({"parameters": {"content_type": tensor["content_type"]}} if "content_type" in tensor
           else {})
        for tensor in tensors
    ]


# --postprocess KIND -> parameters.extra.postprocess (and the default preprocessing preset)
POSTPROCESS = {"detection": ({"type": "detection", "decoder": "yolov8"}, "ultralytics")}


def suggest_postprocess(metadata: Dict[str, str]) -> Optional[str]:
    """`detection` for a model whose own metadata says `task: detect` (Ultralytics)."""
    return "detection" if metadata.get("task") == "detect" else None


NAME = "init"
HELP = "write a model folder (model-settings.json and the file) for a model file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", metavar="MODEL_FILE",
                        help="a local file, or an http(s):// or s3:// URI")
    parser.add_argument("--into", type=Path, help="the folder to write (default: ./NAME)")
    parser.add_argument("--name", help="model name (default: the --into folder's name, else "
                                       "the file's name as serve gives it)")
    add_extra_arguments(parser)
    parser.add_argument("--preprocess", choices=sorted(PRESETS), metavar="PRESET",
                        help=f"image preprocessing preset ({', '.join(sorted(PRESETS))})")
    parser.add_argument("--postprocess", choices=sorted(POSTPROCESS),
                        help="detection: boxes from an Ultralytics YOLO (v8 and later) export "
                             "(the ultralytics preprocessing preset, unless --preprocess)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing folder")


def _fail(message: str) -> int:
    print(f"mlserver-npu init: {message}", file=sys.stderr)
    return 1


def run(args: argparse.Namespace) -> int:
    remote = "://" in args.model and not args.model.startswith("file://")
    source = Path(args.model.removeprefix("file://"))
    # As MLServer names a folder's model: after the folder (a file is often just model.onnx).
    name = args.name or (args.into.resolve().name if args.into else file_model_name(source))
    folder: Path = args.into or Path(name)
    settings_file = folder / "model-settings.json"
    if settings_file.exists() and not args.force:
        return _fail(f"'{settings_file}' exists; --force overwrites it")
    extra = extra_of(args)
    if args.postprocess:
        postprocess, preset = POSTPROCESS[args.postprocess]
        extra["preprocess"] = args.preprocess or preset
        extra["postprocess"] = postprocess
    elif args.preprocess:
        extra["preprocess"] = args.preprocess
    try:
        if remote:
            settings = ModelSettings(name=name, implementation=IMPLEMENTATION,
                                     parameters=ModelParameters(uri=args.model, extra=extra))
        else:
            settings = file_model_settings(source, name, extra)
    except RepositoryError as error:
        return _fail(str(error))
    report = asyncio.run(describe(settings))
    if not report["valid"]:
        return _fail(f"'{args.model}' does not load, nothing written: {report['error']}")

    folder.mkdir(parents=True, exist_ok=True)
    uri = args.model
    if not remote:
        target = folder / source.name
        if source.resolve() != target.resolve():
            shutil.copy2(source, target)
        uri = f"./{source.name}"
    written = _settings(name, uri, extra, report)
    settings_file.write_text(json.dumps(written, indent=2) + "\n")

    print(f"Wrote {settings_file} for model '{name}' ({report['backend']}, "
          f"{report['size']} bytes)")
    if report["static_batch"]:
        batching = json.dumps(written["parameters"]["extra"]["batching"])
        print(f"Static batch {report['static_batch']}: the plugin's batcher fills it with "
              f"concurrent requests (parameters.extra.batching {batching})")
    postprocess = None if args.postprocess else suggest_postprocess(
        report.get("model_metadata") or {}
    )
    suggestion = None if args.preprocess or postprocess else suggest_preprocess(report["inputs"])
    if postprocess:
        print(f"Its metadata says task: detect: to send images and get boxes, confirm the "
              f"suggested configuration with `mlserver-npu init {args.model} --into {folder} "
              f"--postprocess {postprocess} --force`")
    if suggestion:
        print(f"Its input looks like an image: to send encoded images, confirm the suggested "
              f"preprocessing with `mlserver-npu init {args.model} --into {folder} "
              f"--preprocess {suggestion} --force`")
    print(f"Serve it: mlserver-npu serve {folder}   (or: mlserver start {folder.parent})")
    return 0
