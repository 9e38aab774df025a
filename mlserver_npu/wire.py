"""Zero-copy gRPC tensors for the plugin's models (NPURuntime, Pipeline): raw contents <->
numpy, no Python lists.

Why this module patches MLServer: MLServer 1.7 has no hook for how gRPC tensors are
converted. `ModelInferRequestConverter.to_types` unpacks every `raw_input_contents` entry
into a Python list (`mlserver.raw.inject_raw`), and `ModelInferResponseConverter.from_types`
packs outputs back from lists (`extract_raw`): for a 224x224 image tensor that is most of a
request's CPU (upstream issues SeldonIO/MLServer#913 and #253 ask for a hook). `install`
wraps those two entry points once per process:

- requests to a model that registered here (a plugin model, `register`) get their raw
  inputs validated and viewed as flat `WireArray`s over the received bytes (BYTES inputs as
  a list of bytes, as MLServer gives them); every other model gets MLServer's own result;
- responses whose outputs hold WireArrays (only the plugin's models make them) are packed
  from the arrays' buffers, the other outputs as MLServer packs them.

The patch is applied only to the MLServer versions whose functions it was checked against
(`SUPPORTED`, and the source fingerprints in `CHECKED`); anything else logs a
warning and keeps MLServer's path. `MLSERVER_NPU_ZERO_COPY=0` turns it off.
"""
import hashlib
import inspect
import logging
import math
from collections import Counter
from typing import Callable, Dict, List, Optional, Tuple

import mlserver
import mlserver.raw
import numpy as np
from mlserver.errors import InferenceError
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc.converters import (
    InferInputTensorConverter,
    InferRequestedOutputTensorConverter,
    InferTensorContentsConverter,
    ModelInferRequestConverter,
    ModelInferResponseConverter,
    ParametersConverter,
)
from mlserver.settings import ModelSettings
from mlserver.types import (
    InferenceRequest,
    InferenceResponse,
    RequestInput,
    RequestOutput,
    TensorData,
)
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from pydantic_core import SchemaSerializer, core_schema

from .errors import shorten

logger = logging.getLogger("mlserver.npu")

SUPPORTED = SpecifierSet(">=1.7.1,<1.8")

# What the wrappers replace (to_types), delegate to (from_types) or mirror (raw.*), with the
# sha256 of its source in the MLServer release it was checked against (1.7.1).
CHECKED: Dict[str, Tuple[Callable[[], Callable], str]] = {
    "ModelInferRequestConverter.to_types": (
        lambda: ModelInferRequestConverter.to_types,
        "d0789c3119988490c4cb4cb9990059e01d850660c7a3f27f1e530b1a8686fcf6",
    ),
    "ModelInferResponseConverter.from_types": (
        lambda: ModelInferResponseConverter.from_types,
        "9ddc1c7672dc95f3c126c4ec130774946481f7b6afe4ba2f4bec28da15303510",
    ),
    "InferInputTensorConverter.to_types": (
        lambda: InferInputTensorConverter.to_types,
        "32abace70f3679f9999aa567497a82318bd3b9e6e6917e0d3e3e17bbbf084b2e",
    ),
    "InferRequestedOutputTensorConverter.to_types": (
        lambda: InferRequestedOutputTensorConverter.to_types,
        "b1fc44baca5bfe8049facafcb5dfdfb5729ca6f36a130ed98c606b1e5bb474e1",
    ),
    "mlserver.raw.inject_raw": (
        lambda: mlserver.raw.inject_raw,
        "9715c9035736830169b1310bf08094e786234541ad09de1a2f1cc668ba3dd008",
    ),
    "mlserver.raw.extract_raw": (
        lambda: mlserver.raw.extract_raw,
        "e22e2b23378148e41d9b5d42621875e1488f94b94f1aa2a0752237cb1aabec5f",
    ),
}

LITTLE_ENDIAN = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}


class WireArray(np.ndarray):
    """A flat tensor as it came off, or goes onto, the wire.

    pydantic serializes it as a list, so MLServer code that dumps requests and responses to
    JSON (the response cache's key and value, REST replies) keeps working on it."""

    __pydantic_serializer__ = SchemaSerializer(
        core_schema.any_schema(
            serialization=core_schema.plain_serializer_function_ser_schema(np.ndarray.tolist)
        )
    )


def wire_array(array: np.ndarray) -> WireArray:
    """`array` flattened (a view when it is contiguous) as a WireArray."""
    return np.ascontiguousarray(array).reshape(-1).view(WireArray)


def carries_arrays(request: InferenceRequest) -> bool:
    """Whether the request came through the zero-copy path (so arrays may go back)."""
    return any(isinstance(_data(item), WireArray) for item in request.inputs)


# Models that take the zero-copy path: name -> {version: number of loaded instances}. A
# reload loads the new instance before it unloads the old one, hence the counts.
_models: Dict[str, Counter] = {}
_installed: Optional[bool] = None


def register(settings: ModelSettings, enabled: bool) -> bool:
    """Route gRPC requests for this model through the zero-copy path, if it can take it.

    Returns whether it does; `unregister` undoes it."""
    if not enabled:
        return False
    if (settings.max_batch_size or 0) > 1:
        logger.info(
            "Model '%s': MLServer's adaptive batching (max_batch_size %s) merges request data "
            "as Python lists, so its gRPC tensors take MLServer's list path, not zero-copy",
            settings.name, settings.max_batch_size,
        )
        return False
    if not install():
        return False
    _models.setdefault(settings.name, Counter())[_version(settings)] += 1
    return True


def unregister(settings: ModelSettings) -> None:
    versions = _models.get(settings.name)
    if versions is None:
        return
    versions[_version(settings)] -= 1
    if versions[_version(settings)] <= 0:
        del versions[_version(settings)]
    if not versions:
        del _models[settings.name]


def _version(settings: ModelSettings) -> str:
    return (settings.parameters.version if settings.parameters else None) or ""


def _serves(name: str, version: str) -> bool:
    versions = _models.get(name)
    if not versions:
        return False
    # No version in the request means the model's default version: taken as ours, which
    # holds unless one name has versions of different runtimes (a limit the README states).
    return version in versions if version else True


def install() -> bool:
    """Wrap MLServer's two gRPC converter entry points, once per process."""
    global _installed
    if _installed is None:
        problem = incompatibility(CHECKED)
        if problem:
            logger.warning("Zero-copy gRPC tensors are off: %s", problem)
            _installed = False
        else:
            _wrap()
            _installed = True
            logger.info("Zero-copy gRPC tensors on (MLSERVER_NPU_ZERO_COPY=0 turns them off)")
    return _installed


def incompatibility(checked: Dict[str, Tuple[Callable[[], Callable], str]]) -> Optional[str]:
    """Why a guarded patch (this module's, rest.py's, grpc_errors.py's) must not be applied:
    an MLServer outside SUPPORTED, or a function of `checked` whose source is not the one
    it was checked against; None when it may."""
    version = Version(mlserver.__version__)
    if version not in SUPPORTED:
        return f"MLServer {version} is outside the versions it was checked against ({SUPPORTED})"
    for name, (function, expected) in checked.items():
        if fingerprint(function()) != expected:
            return f"MLServer's {name} is not the function it was checked against"
    return None


def fingerprint(function: Callable) -> str:
    """sha256 of a function's source (of the function it wraps, if it is a wrapper)."""
    try:
        source = inspect.getsource(function)
    except (OSError, TypeError):
        return ""
    return hashlib.sha256(source.encode()).hexdigest()


def _wrap() -> None:
    original_to_types = ModelInferRequestConverter.to_types.__func__
    original_from_types = ModelInferResponseConverter.from_types.__func__

    def to_types(cls, pb_object: pb.ModelInferRequest) -> InferenceRequest:
        if pb_object.raw_input_contents and _serves(pb_object.model_name, pb_object.model_version):
            return request_to_types(pb_object)
        return original_to_types(cls, pb_object)

    def from_types(
        cls, type_object: InferenceResponse, use_raw: bool = False
    ) -> pb.ModelInferResponse:
        if not any(isinstance(_data(output), WireArray) for output in type_object.outputs):
            return original_from_types(cls, type_object, use_raw)
        return response_from_types(type_object, use_raw, lambda r: original_from_types(cls, r))

    to_types.__wrapped__ = original_to_types  # type: ignore[attr-defined]
    from_types.__wrapped__ = original_from_types  # type: ignore[attr-defined]
    ModelInferRequestConverter.to_types = classmethod(to_types)  # type: ignore[method-assign]
    ModelInferResponseConverter.from_types = classmethod(from_types)  # type: ignore


def request_to_types(pb_object: pb.ModelInferRequest) -> InferenceRequest:
    """MLServer's `ModelInferRequestConverter.to_types` (and `InferInputTensorConverter`'s),
    with raw contents as arrays."""
    raw = pb_object.raw_input_contents
    # As `mlserver.raw.inject_raw`: the inputs without typed contents take the raw entries in
    # order.
    pending = [tensor for tensor in pb_object.inputs if not tensor.contents.ListFields()]
    if len(pending) != len(raw):
        raise InferenceError(
            f"the request has {len(raw)} raw_input_contents entries for "
            f"{len(pending)} input(s) without contents"
            + (f" ({', '.join(shorten(tensor.name) for tensor in pending)})" if pending else "")
        )
    views = {id(tensor): view(tensor, entry) for tensor, entry in zip(pending, raw)}
    request = InferenceRequest.model_construct(
        id=pb_object.id,
        parameters=ParametersConverter.to_types(pb_object.parameters),
        inputs=[
            RequestInput.model_construct(
                name=tensor.name,
                shape=list(tensor.shape),
                datatype=tensor.datatype,
                parameters=ParametersConverter.to_types(tensor.parameters),
                data=(
                    TensorData.model_construct(root=views[id(tensor)])
                    if id(tensor) in views
                    else InferTensorContentsConverter.to_types(tensor.contents)
                ),
            )
            for tensor in pb_object.inputs
        ],
    )
    if pb_object.outputs:
        request.outputs = [
            RequestOutput.model_construct(
                name=output.name, parameters=ParametersConverter.to_types(output.parameters)
            )
            for output in pb_object.outputs
        ]
    return request


def view(item: pb.ModelInferRequest.InferInputTensor, raw: bytes) -> object:
    """One raw entry as a flat WireArray over `raw` (BYTES: a list of bytes), once it is
    checked against the input's datatype and shape."""
    return raw_view(item.name, item.datatype, list(item.shape), raw)


def raw_view(name: str, datatype: str, shape: List[int], raw: bytes) -> object:
    """Raw little-endian tensor bytes (gRPC raw contents, a REST binary section) as a flat
    WireArray over them (BYTES: a list of bytes), once checked against datatype and shape.
    Names are shortened for messages only: reprlib costs more than the checks."""
    if any(dim < 0 for dim in shape):
        raise InferenceError(
            f"input {shorten(name)}: shape {shorten(shape)} has a negative dimension"
        )
    if datatype == "BYTES":
        return _unpack_bytes(name, bytes(raw), math.prod(shape))
    dtype = LITTLE_ENDIAN.get(datatype)
    if dtype is None:
        name = shorten(name)
        raise InferenceError(
            f"input {name}: unknown datatype {shorten(str(datatype))}; one of "
            + ", ".join(list(LITTLE_ENDIAN) + ["BYTES"])
        )
    expected = math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise InferenceError(
            f"input {shorten(name)}: {datatype} {shape} needs {expected} bytes of raw contents, "
            f"got {len(raw)}"
        )
    if dtype == np.bool_ and len(raw) and np.frombuffer(raw, np.uint8).max() > 1:
        raise InferenceError(f"input {shorten(name)}: BOOL raw contents must be bytes 0 or 1")
    return np.frombuffer(raw, dtype).view(WireArray)


def _unpack_bytes(name: str, raw: bytes, count: int) -> List[bytes]:
    """Triton's BYTES serialization: each element a 4-byte little-endian length, then data."""
    name = shorten(name)
    elements = []
    offset, end = 0, len(raw)
    while offset < end:
        if offset + 4 > end:
            raise InferenceError(
                f"input {name}: BYTES raw contents end inside the length of element "
                f"{len(elements)} (byte {offset} of {end})"
            )
        size = int.from_bytes(raw[offset : offset + 4], "little")
        offset += 4
        if offset + size > end:
            raise InferenceError(
                f"input {name}: BYTES element {len(elements)} claims {size} bytes, "
                f"{end - offset} remain"
            )
        elements.append(raw[offset : offset + size])
        offset += size
    if len(elements) != count:
        raise InferenceError(
            f"input {name}: the shape needs {count} BYTES element(s), the raw contents "
            f"hold {len(elements)}"
        )
    return elements


def response_from_types(
    response: InferenceResponse,
    use_raw: bool,
    convert: Callable[[InferenceResponse], pb.ModelInferResponse],
) -> pb.ModelInferResponse:
    """MLServer's `ModelInferResponseConverter.from_types` (`convert`, without raw), with the
    array outputs packed from their buffers when the client sent raw inputs, typed otherwise."""
    raw = []
    for output in response.outputs:
        data = _data(output)
        if isinstance(data, WireArray):
            if use_raw:
                dtype = LITTLE_ENDIAN[getattr(output.datatype, "value", output.datatype)]
                raw.append(data.astype(dtype, copy=False).tobytes())
                output.data = []  # as extract_raw does
            else:
                output.data = data.tolist()
        elif use_raw:
            raw.append(mlserver.raw.pack(output))
            output.data = []
    message = convert(response)
    if use_raw:
        message.raw_output_contents.extend(raw)
    return message


def _data(item) -> object:
    return getattr(item.data, "root", item.data)
