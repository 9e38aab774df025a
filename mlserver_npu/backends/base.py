"""The small interface every backend implements: tensor specs in, a session out.

A backend turns (model file, device, options) into one `Session`; the pool holds many of them
and the runtime never sees which backend it is talking to.
"""
import json
import zipfile
from xml.etree import ElementTree
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Protocol, Sequence

import numpy as np


@dataclass(frozen=True)
class Quantization:
    """How a quantized tensor maps to real values: real = scale * (q - zero_point), one pair
    per tensor, or one per index of axis `axis` (per-channel)."""

    scale: Sequence[float]
    zero_point: Sequence[int]
    axis: int = 0

    def parameters(self) -> Dict[str, Any]:
        """The tensor parameters the model metadata shows."""
        if len(self.scale) == 1:
            return {"scale": self.scale[0], "zero_point": self.zero_point[0]}
        return {"scale": list(self.scale), "zero_point": list(self.zero_point),
                "quantized_dimension": self.axis}

    def dequantize(self, array: np.ndarray) -> np.ndarray:
        shape = [1] * array.ndim
        if len(self.scale) > 1:
            shape[self.axis] = len(self.scale)
        scale = np.asarray(self.scale, np.float32).reshape(shape)
        zero_point = np.asarray(self.zero_point, np.float32).reshape(shape)
        return (array.astype(np.float32) - zero_point) * scale


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output: name, numpy dtype, shape with None for dynamic dims, and the
    quantization parameters of a quantized tensor."""

    name: str
    dtype: np.dtype
    shape: Sequence[Optional[int]]
    quantization: Optional[Quantization] = None

    @property
    def v2_shape(self) -> List[int]:
        return [-1 if dim is None else dim for dim in self.shape]


def context_batch(context: Optional[Mapping[str, Any]]) -> int:
    """The static batch for devices that need static shapes (NPUs), from the validation
    context the runtime gives backend options: the most rows a run gets (the batcher's or
    MLServer's `max_batch_size`), else 1."""
    return max((context or {}).get("max_batch_size") or 1, 1)


class BackendError(Exception):
    """A backend could not open a session; the message says why, for the load error."""


class InvalidInput(BackendError):
    """The device refused a request's tensors (e.g. inconsistent batch sizes): a client error."""


class Session(Protocol):
    """One loaded copy of the model on one device.

    `inputs`/`outputs` are the model's own shapes: a fixed axis 0 is a static batch that the
    pool fills and splits. `warnings` says what the user should know about how the session was
    opened (e.g. a fallback to CPU); the runtime shows them in the model's metadata, and so
    the optional `details` (e.g. {"execution_devices": "CPU", "loaded_from_cache": True}).
    The optional `metadata` is the model file's own key -> value map (ONNX custom metadata).
    """

    device: str
    inputs: List[TensorSpec]
    outputs: List[TensorSpec]
    warnings: List[str]

    async def run(self, feeds: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Run one batch without blocking the event loop; return every output by name."""
        ...

    async def close(self) -> None:
        ...


class Backend(Protocol):
    """A device family. `Options` validates `parameters.extra.options` (extra keys refused)."""

    Options: type

    def available_devices(self) -> List[str]:
        ...

    async def open(self, model_path: Path, device: Optional[str], options: Any) -> Session:
        ...


def session_details(sessions: Sequence[Session]) -> Dict[str, Any]:
    """The sessions' `details` for the metadata: one value per key, or the distinct values
    joined by commas where the sessions differ."""
    values: Dict[str, List[Any]] = {}
    for session in sessions:
        for key, value in getattr(session, "details", {}).items():
            if value not in values.setdefault(key, []):
                values[key].append(value)
    return {
        key: found[0] if len(found) == 1 else ",".join(map(str, found))
        for key, found in values.items()
    }


def model_metadata(sessions: Sequence[Session], model_path: Path) -> Dict[str, str]:
    """The model file's own metadata: what its sessions read (onnxruntime's custom metadata
    map), else the `metadata.json` that Ultralytics appends to a .tflite file as a zip, or
    the model-level `rt_info` of an OpenVINO IR (.xml: `framework`, the ONNX metadata of a
    converted model; `model_info`, what Ultralytics' OpenVINO export writes)."""
    found = getattr(sessions[0], "metadata", None) if sessions else None
    if found:
        return {str(key): str(value) for key, value in found.items()}
    suffix = model_path.suffix.lower()
    if suffix == ".tflite" and zipfile.is_zipfile(model_path):
        try:
            with zipfile.ZipFile(model_path) as archive:
                data = json.loads(archive.read("metadata.json"))
        except (KeyError, OSError, ValueError, zipfile.BadZipFile):
            return {}
        if isinstance(data, dict):
            return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items()}
    if suffix == ".xml":
        try:
            return _rt_info(model_path)
        except (OSError, ElementTree.ParseError):
            return {}
    return {}


def _rt_info(model_path: Path) -> Dict[str, str]:
    """`<net><rt_info><SECTION><KEY value="..."/>` of an OpenVINO IR, streamed (the layers
    before it are dropped as they are read)."""
    found: Dict[str, str] = {}
    path: List[str] = []
    for event, element in ElementTree.iterparse(model_path, events=("start", "end")):
        if event == "start":
            path.append(element.tag)
            continue
        if len(path) == 4 and path[1] == "rt_info" and path[2] in ("framework", "model_info"):
            found.setdefault(element.tag, element.attrib.get("value", ""))
        path.pop()
        element.clear()
    return found
