"""ONNX external data (weights in files beside the .onnx) checked by the plugin itself: every
location must lie in the folder of the model's real file. onnxruntime and OpenVINO refuse
other locations only in recent releases; with this check a model file cannot make any
runtime version read `/etc/shadow` or a file a symlink points out to."""
import mmap
from pathlib import Path
from typing import Any, Iterable, Iterator

import onnx

from ..errors import shorten
from .base import BackendError


def _tensors(initializers: Iterable[Any], nodes: Iterable[Any]) -> Iterator[onnx.TensorProto]:
    """The initializers and the nodes' tensor attributes, subgraphs (If, Loop, Scan) included."""
    yield from initializers
    for node in nodes:
        for attribute in node.attribute:
            if attribute.HasField("t"):
                yield attribute.t
            yield from attribute.tensors
            for graph in [attribute.g] if attribute.HasField("g") else []:
                yield from _tensors(graph.initializer, graph.node)
            for graph in attribute.graphs:
                yield from _tensors(graph.initializer, graph.node)


def _locations(model: onnx.ModelProto) -> Iterator[str]:
    tensors = _tensors(model.graph.initializer, model.graph.node)
    functions = (t for f in model.functions for t in _tensors((), f.node))
    for tensor in (*tensors, *functions):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            entries = {entry.key: entry.value for entry in tensor.external_data}
            yield entries.get("location", "")


def _mentions_location(path: Path) -> bool:
    """Whether the file holds the key every external-data entry has (a fast byte search)."""
    try:
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return data.find(b"location") >= 0
    except (OSError, ValueError):  # unreadable or empty: the runtime says what is wrong
        return False


def check_external_data(model_path: Path) -> Path:
    """The model's real file (symlinks resolved), whose folder every external-data location
    of the model lies in; else a BackendError naming the location. Blocking."""
    real = model_path.resolve()
    folder = real.parent
    if not _mentions_location(real):  # most models: no need to parse the file twice
        return real
    try:
        model = onnx.load(str(real), load_external_data=False)
    except Exception:  # not parseable here: the runtime reports what is wrong with it
        return real
    for location in _locations(model):
        target = (folder / location).resolve()
        if not location or Path(location).is_absolute() or not target.is_relative_to(folder):
            raise BackendError(
                f"'{model_path.name}' keeps tensor data in {shorten(location)}, outside the "
                f"folder of the model file ('{folder}'): refused"
            )
    return real
