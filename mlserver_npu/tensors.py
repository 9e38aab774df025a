"""V2 request tensors <-> numpy, checked against the model's signature.

Every client mistake becomes an `InferenceError` (HTTP 400, gRPC INVALID_ARGUMENT) whose
message names the tensor and says what was expected.
"""
import functools
import itertools
import math
import struct
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
from mlserver.codecs.numpy import to_datatype
from mlserver.errors import InferenceError
from mlserver.types import (
    Datatype,
    MetadataTensor,
    Parameters,
    RequestInput,
    RequestOutput,
    ResponseOutput,
    TensorData,
)

from .backends import TensorSpec
from .errors import shorten
from .wire import wire_array


@functools.lru_cache(maxsize=None)
def datatype_of(dtype: np.dtype) -> str:
    """numpy dtype -> V2 datatype name (FP32, INT64, BYTES, ...).

    Cached: MLServer's lookup formats the dtype's name, which cost more than the rest of a
    tiny model's request decoding and response encoding together."""
    return to_datatype(np.dtype(dtype)).value


def content_type_of(parameters: Optional[Parameters]) -> Optional[str]:
    return parameters.content_type if parameters else None


def metadata_of(spec: TensorSpec) -> MetadataTensor:
    values = dict(spec.quantization.parameters()) if spec.quantization else {}
    dynamic = spec.dynamic_dims()
    if dynamic and None in spec.shape[1:]:  # not for the batch axis alone: the pool's
        values["dynamic_dims"] = dynamic
    parameters = Parameters(**values) if values else None
    return MetadataTensor(
        name=spec.name, datatype=datatype_of(spec.dtype), shape=spec.v2_shape,
        parameters=parameters,
    )


# struct codes (standard sizes, native byte order, as numpy's) of the numeric dtypes; the
# standard sizes also make struct refuse out-of-range values (1e39 for "f", 256 for "B").
_STRUCT_CODES = {
    np.dtype(dtype): code
    for dtype, code in [
        (np.bool_, "?"), (np.float16, "e"), (np.float32, "f"), (np.float64, "d"),
        (np.int8, "b"), (np.int16, "h"), (np.int32, "i"), (np.int64, "q"),
        (np.uint8, "B"), (np.uint16, "H"), (np.uint32, "I"), (np.uint64, "Q"),
    ]
}

# The Python types (from JSON or gRPC contents) that each kind of numeric tensor takes: JSON
# numbers only, integers for integer tensors, true/false for BOOL (bool is an int subclass
# in Python, so it is named apart), and what each is called in a message.
_ACCEPTED = {
    "b": ({bool}, "true or false"),
    "i": ({int}, "an integer"),
    "u": ({int}, "an integer"),
    "f": ({float, int}, "a number"),
}


def flatten(data: Any, rank: int) -> list:
    """V2 tensor data, a flat list or lists nested in row-major order (at most `rank` levels
    of lists), as one flat list.

    Level by level, never recursing on the client's nesting: data nested a thousand deep is
    refused as quickly as any other mistake. Raises ValueError saying what is wrong."""
    if type(data) is not list:
        raise ValueError(f"data must be a list of values, got {type(data).__name__}")
    flat = data
    for depth in range(1, max(rank, 1)):
        if not flat or type(flat[0]) is not list:
            return flat
        if set(map(type, flat)) != {list} or len(set(map(len, flat))) != 1:
            raise ValueError(f"the lists nested at depth {depth + 1} are not all of one length")
        flat = list(itertools.chain.from_iterable(flat))
    if flat and type(flat[0]) is list:
        raise ValueError(f"data is nested deeper than the shape's {rank} dimension(s)")
    return flat


def _to_array(data: list, dtype: np.dtype) -> np.ndarray:
    """MLServer's tensor data (a flat list of Python values, from JSON or gRPC contents) as a
    flat array; a value of the wrong kind or out of the dtype's range is a ValueError naming
    its index.

    struct packs the list straight into the array's buffer in one C loop (about twice as fast
    as numpy's per-element conversion) and refuses strings, nulls, lists and out-of-range
    values by itself. It takes true and false as 1 and 0, though (and anything at all for
    BOOL), so the types of the values that came out 0 or 1 are checked: none for random or
    normalised floats, a few for pixels, all of them (one more C loop) when they are many.
    Only refused data is searched, in Python, for the first bad value."""
    dtype = np.dtype(dtype)
    if dtype == np.object_:  # string tensors: onnxruntime would turn bytes into "b'x'"
        return np.array([_text(value) for value in data], dtype)
    if dtype.kind not in _ACCEPTED:  # numpy decides
        return np.asarray(data, dtype=dtype)
    array = np.empty(len(data), dtype)
    try:
        struct.pack_into(f"={len(data)}{_STRUCT_CODES[dtype]}", array, 0, *data)
    except (struct.error, OverflowError, TypeError):
        raise ValueError(_first_bad(data, dtype)) from None
    suspects = data
    if dtype.kind != "b":
        maybe_bool = np.flatnonzero((array == 0) | (array == 1))
        if 3 * len(maybe_bool) < len(data):
            suspects = [data[index] for index in maybe_bool.tolist()]
    if not set(map(type, suspects)) <= _ACCEPTED[dtype.kind][0]:
        raise ValueError(_first_bad(data, dtype))
    return array


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        try:
            return value.decode()
        except UnicodeDecodeError as error:
            raise ValueError(f"a BYTES element is not UTF-8 text ({error})") from None
    return value


def _first_bad(data: list, dtype: np.dtype) -> str:
    """What is wrong with the first value that is of the wrong kind or out of range."""
    accepted, wanted = _ACCEPTED[dtype.kind]
    code = f"={_STRUCT_CODES[dtype]}"
    for index, value in enumerate(data):
        if type(value) not in accepted:
            return f"value at index {index} is {shorten(value)}, expected {wanted}"
        try:
            struct.pack(code, value)
        except (struct.error, OverflowError):
            info = np.finfo(dtype) if dtype.kind == "f" else np.iinfo(dtype)
            return (
                f"value at index {index} is {shorten(value)}, out of the range of "
                f"{datatype_of(dtype)} ({info.min!s} to {info.max!s})"
            )
    return "the values do not fit"  # not reached: struct refused one of them


def describe(tensor: Union[TensorSpec, MetadataTensor]) -> str:
    """A tensor as messages name its type: `FP32 [-1, 64]`, `BYTES [-1] (image)`."""
    if isinstance(tensor, TensorSpec):
        return f"{datatype_of(tensor.dtype)} {tensor.v2_shape}"
    content_type = content_type_of(tensor.parameters)
    return f"{tensor.datatype} {tensor.shape}" + (f" ({content_type})" if content_type else "")


def match_inputs(
    request_inputs: Sequence[RequestInput],
    specs: Sequence[Union[TensorSpec, MetadataTensor]],
    owner: str = "model",
) -> Dict[str, RequestInput]:
    """Pair request inputs with the inputs of a model (or of a pipeline: `owner`) by name.

    A model with a single input takes a single request input under any name, as MLServer's
    own runtimes and furiosa-server do.
    """
    if len(specs) == 1 and len(request_inputs) == 1:
        return {specs[0].name: request_inputs[0]}
    known = {spec.name for spec in specs}
    matched: Dict[str, RequestInput] = {}
    for request_input in request_inputs:
        if request_input.name not in known:
            raise InferenceError(
                f"unknown input {shorten(request_input.name)}; the {owner}'s inputs are: "
                + ", ".join(f"'{spec.name}' ({describe(spec)})" for spec in specs)
            )
        if request_input.name in matched:
            raise InferenceError(f"input {shorten(request_input.name)} is given more than once")
        matched[request_input.name] = request_input
    missing = [spec for spec in specs if spec.name not in matched]
    if missing:
        raise InferenceError(
            "missing input "
            + ", ".join(f"'{spec.name}' ({describe(spec)})" for spec in missing)
        )
    return matched


def check_shape(name: str, shape: Sequence[int], spec: TensorSpec) -> None:
    expected = spec.shape
    if len(shape) != len(expected) or any(
        want is not None and want != got for want, got in zip(expected, shape)
    ):
        raise InferenceError(
            f"input {shorten(name)}: expected shape {spec.v2_shape} (-1 = any size), "
            f"got {shorten(list(shape))}"
        )
    if any(dim < 0 for dim in shape):
        raise InferenceError(
            f"input {shorten(name)}: shape {shorten(list(shape))} has a negative dimension"
        )


def decode_input(request_input: RequestInput, spec: TensorSpec) -> np.ndarray:
    """One request tensor -> a numpy array of the model's dtype and the request's shape."""
    name = request_input.name  # shortened in messages only (reprlib is slow)
    expected = datatype_of(spec.dtype)
    got = Datatype(request_input.datatype).value
    if got != expected:
        raise InferenceError(f"input {shorten(name)}: expected datatype {expected}, got {got}")
    shape = request_input.shape
    check_shape(request_input.name, shape, spec)
    data = request_input.data.root
    if isinstance(data, np.ndarray):
        # A zero-copy view of gRPC raw contents (wire.py), already checked against the shape.
        return data.view(np.ndarray).astype(spec.dtype, copy=False).reshape(shape)
    try:
        data = flatten(data, len(shape))
    except ValueError as error:
        raise InferenceError(f"input {shorten(name)}: {error}") from None
    expected_size = math.prod(shape)
    if len(data) != expected_size:
        raise InferenceError(
            f"input {shorten(name)}: shape {shorten(shape)} needs {expected_size} values, "
            f"got {len(data)}"
        )
    try:
        array = _to_array(data, spec.dtype)
    except (ValueError, TypeError, OverflowError) as error:
        raise InferenceError(
            f"input {shorten(name)}: data is not a valid {expected} tensor: {error}"
        ) from None
    return array.reshape(shape)


def check_batch(feeds: Dict[str, np.ndarray], specs: Sequence[TensorSpec]) -> None:
    """Inputs that are all dynamic on axis 0 share it as the batch: their sizes must agree."""
    if len(specs) < 2 or any(not spec.shape or spec.shape[0] is not None for spec in specs):
        return
    sizes = {name: array.shape[0] for name, array in feeds.items()}
    if len(set(sizes.values())) > 1:
        raise InferenceError(
            "inputs disagree on the batch size (axis 0): "
            + ", ".join(f"'{name}' has {size}" for name, size in sizes.items())
        )


def decode_inputs(
    request_inputs: Sequence[RequestInput],
    specs: Sequence[TensorSpec],
    decode: Callable[[RequestInput, TensorSpec], np.ndarray] = decode_input,
) -> Dict[str, np.ndarray]:
    """Match, decode (`decode` may turn e.g. images into the tensor) and check the batch."""
    matched = match_inputs(request_inputs, specs)
    feeds = {spec.name: decode(matched[spec.name], spec) for spec in specs}
    check_batch(feeds, specs)
    return feeds


def requested_outputs(
    request_outputs: Optional[Sequence[RequestOutput]],
    specs: Sequence[TensorSpec],
    also: Sequence[str] = (),
) -> List[str]:
    """The output names to return: the requested ones in request order, or all of them.

    `also` names outputs that postprocessing adds to the model's own.
    """
    known = [spec.name for spec in specs] + list(also)
    if not request_outputs:
        return known
    for request_output in request_outputs:
        if request_output.name not in known:
            raise InferenceError(
                f"unknown output {shorten(request_output.name)}; the model's outputs are: "
                + ", ".join(f"'{name}'" for name in known)
            )
    return list(dict.fromkeys(output.name for output in request_outputs))


def encode_output(name: str, array: np.ndarray, as_array: bool = False) -> ResponseOutput:
    """`as_array`: numeric data stays an array (wire.py packs it for gRPC), not a list."""
    array = np.asarray(array)
    datatype = datatype_of(array.dtype)
    flat = array.ravel()
    if datatype == "BYTES":
        # gRPC clients read bytes_contents: str would break them.
        data = [v if isinstance(v, bytes) else str(v).encode() for v in flat]
    elif as_array:
        # Wrapped so that pydantic takes it as it is: validating a bare array walks it.
        data = TensorData.model_construct(root=wire_array(flat))
    else:
        data = flat.tolist()
    return ResponseOutput(name=name, shape=list(array.shape), datatype=datatype, data=data)
