"""REST tensors as numpy for the plugin's models: Triton's binary tensor data extension and
JSON `data` parsed straight into arrays, on `/v2/models/{model}[/versions/{v}]/infer`; and
bounded request decompression for every request. Two layers of the REST boundary (rest.py):

- `Decompress` (outermost, every request): a `Content-Encoding: gzip` or `deflate` body is
  inflated as it arrives, refused with a 413 past `MLSERVER_NPU_MAX_REQUEST_BYTES`, and passed
  on uncompressed. MLServer's own `Request.body` inflates gzip whole, unbounded (a 1 GB bomb
  grew the server by 2 GB), and ignores deflate, which tritonclient.http sends.
- `InferEndpoint` (in front of the router): an infer request to a plugin model (NPURuntime,
  Pipeline) is parsed here and given to MLServer's DataPlane as `Endpoints.infer` does, its
  reply rendered here; every other request, and every model of other runtimes, takes MLServer's
  route untouched. Why: MLServer parses JSON into Python lists of floats, validates them with
  pydantic and renders replies through FastAPI's encoder (for 1.2 M floats, seconds of
  CPU), and has no binary extension (SeldonIO/MLServer#324), so tritonclient.http's default
  (`binary_data=True`) got a 500. Here, binary inputs are numpy views over the body (checked as
  the zero-copy gRPC path checks raw contents), JSON numbers go from pysimdjson's `as_buffer`
  into numpy without Python floats, and outputs go out as binary when the request asks
  (`binary_data` on an output, `binary_data_output` on the request) or as JSON by orjson from
  the arrays. A JSON body that does not parse, or whose header fields do not validate, goes to
  MLServer's route as it came, so its errors stay MLServer's (422) word for word.
"""
import math
import re
import struct
import sys
import threading
import zlib
from typing import Any, Awaitable, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import orjson
import simdjson
from mlserver.codecs.json import _encode_object_to_bytes
from mlserver.errors import InferenceError, MLServerError, ModelNotFound
from mlserver.handlers import DataPlane
from mlserver.parallel.model import ParallelModel
from mlserver.rest.endpoints import Endpoints
from mlserver.rest.requests import Request
from mlserver.types import InferenceRequest, InferenceResponse, TensorData
from mlserver.utils import extract_headers, insert_headers
from pydantic import ValidationError

from .errors import shorten
from .settings import NPUEnvironment
from .wire import LITTLE_ENDIAN, WireArray, raw_view

ASGIApp = Callable[..., Awaitable[None]]

# The MLServer code this module mirrors (Endpoints.infer, Request.body) or relies on
# (DataPlane's model registry, ParallelModel's model), with the sha256 of its source in
# MLServer 1.7.1; rest.py checks them with its own.
CHECKED: Dict[str, Tuple[Callable[[], Callable], str]] = {
    "Endpoints.infer": (
        lambda: Endpoints.infer,
        "58bcc2ee184a4b0a28fc624ae011b7cc77485de69933547bd3db8ac21a4e6f95",
    ),
    "Request.body": (
        lambda: Request.body,
        "301ae7f79bd9debaadc0ad659af5f2d92c65bd2a6e2818992231fc9dca7aaae2",
    ),
    "DataPlane.__init__": (
        lambda: DataPlane.__init__,
        "cb48f5e2370bfdaf8236c103b6f60c60d299a465c7f57e401e3dae408ed2c96d",
    ),
    "ParallelModel.__init__": (
        lambda: ParallelModel.__init__,
        "7fc35b07d66f69fb66cdd5b979922644c938548f64fb38eaa2adea8bcb210aa2",
    ),
}

HEADER_LENGTH = "inference-header-content-length"
INFER_PATH = re.compile(r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?/infer")
# simdjson's `as_buffer` element types: the widest of each kind, narrowed after a range check.
_BUFFER_TYPES = {"f": ("d", np.dtype("<f8")), "i": ("i", np.dtype("<i8")),
                 "u": ("u", np.dtype("<u8"))}


class ClientError(Exception):
    """A request refused at the boundary, before MLServer sees it."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


async def reply(send: Callable, status: int, body: bytes, headers: List[Tuple[bytes, bytes]],
                content_type: bytes = b"application/json", parts: Sequence[Any] = ()) -> None:
    """A whole response: `body`, then `parts` (buffers sent as they are, not joined)."""
    size = len(body) + sum(memoryview(part).nbytes for part in parts)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", content_type), (b"content-length", str(size).encode()), *headers]})
    await send({"type": "http.response.body", "body": body, "more_body": bool(parts)})
    for index, part in enumerate(parts, 1):
        await send({"type": "http.response.body", "body": part,
                    "more_body": index < len(parts)})


async def refuse(send: Callable, error: ClientError) -> None:
    await reply(send, error.status, orjson.dumps({"error": str(error)}), [])


def replay(body: bytes, receive: Callable) -> Callable:
    """An ASGI `receive` that gives `body` once, then what `receive` gives (a disconnect)."""
    pending = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive_again() -> Dict[str, Any]:
        return pending.pop() if pending else await receive()

    return receive_again


def _header(scope: Dict[str, Any], name: bytes) -> Optional[str]:
    for key, value in scope["headers"]:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


_limit: Optional[int] = None


def max_request_bytes() -> int:
    global _limit
    if _limit is None:
        _limit = int(NPUEnvironment.from_env().max_request_bytes)
    return _limit


class Decompress:
    """Inflate gzip/deflate request bodies as they arrive, up to `max_request_bytes`."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
        encoding = _header(scope, b"content-encoding") if scope["type"] == "http" else None
        if encoding is None or encoding.strip().lower() not in ("gzip", "x-gzip", "deflate"):
            return await self.app(scope, receive, send)
        try:
            body = await inflate(receive, max_request_bytes())
        except ClientError as error:
            return await refuse(send, error)
        if body is None:  # the client went away
            return
        headers = [(key, value) for key, value in scope["headers"]
                   if key.lower() not in (b"content-encoding", b"content-length")]
        headers.append((b"content-length", str(len(body)).encode()))
        await self.app(dict(scope, headers=headers), replay(body, receive), send)


async def inflate(receive: Callable, limit: int) -> Optional[bytes]:
    """The body from `receive`, gzip or zlib (detected from its header), inflated; a
    ClientError past `limit` bytes (compressed or not) or when it is not a whole stream."""
    inflater = zlib.decompressobj(wbits=47)
    chunks: List[bytes] = []
    size = received = 0
    more = True
    while more:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        data = message.get("body", b"")
        more = message.get("more_body", False)
        received += len(data)
        if received > limit:
            raise ClientError(413, f"the request body is over {limit} bytes "
                                   "(MLSERVER_NPU_MAX_REQUEST_BYTES)")
        while data:
            try:
                out = inflater.decompress(data, limit + 1 - size)
            except zlib.error as error:
                raise ClientError(400, f"the request body is not valid gzip or deflate data "
                                       f"(Content-Encoding): {error}") from None
            size += len(out)
            if size > limit:
                raise ClientError(413, f"the request body inflates to over {limit} bytes "
                                       "(MLSERVER_NPU_MAX_REQUEST_BYTES)")
            chunks.append(out)
            data = inflater.unconsumed_tail
            if inflater.eof and inflater.unused_data:  # a next gzip member
                data = inflater.unused_data
                inflater = zlib.decompressobj(wbits=47)
    if not inflater.eof:
        raise ClientError(400, "the request body ends inside its gzip or deflate stream "
                               "(Content-Encoding)")
    return b"".join(chunks)


async def read_body(receive: Callable) -> Optional[bytes]:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


class Fallback(Exception):
    """The request goes to MLServer's route as it came."""


class InferEndpoint:
    """Infer requests to the plugin's models, parsed and rendered with numpy arrays."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Dict[str, Any], receive: Callable, send: Callable) -> None:
        match = (
            INFER_PATH.fullmatch(route_path(scope))
            if scope["type"] == "http" and scope["method"] == "POST" else None
        )
        model = await served_model(match["name"], match["version"]) if match else None
        if not getattr(model, "rest_tensors", False):
            if match and _header(scope, HEADER_LENGTH.encode()) is not None:
                # MLServer's route answers a binary body with a 500 (its 422 handler decodes
                # the raw bytes as UTF-8), whatever the model.
                if model is None:
                    raise ModelNotFound(match["name"], match["version"])
                raise InferenceError(
                    f"model {shorten(match['name'])} ({type(model).__name__}) does not take "
                    "Triton's binary tensor extension (Inference-Header-Content-Length): send "
                    "the tensors as JSON")
            return await self.app(scope, receive, send)
        body = await read_body(receive)
        if body is None:
            return
        batching = (model.settings.max_batch_size or 0) > 1
        payload: Optional[InferenceRequest] = None
        refused: Optional[str] = None
        try:
            length = _header(scope, HEADER_LENGTH.encode())
            if length is None:
                payload = parse_json(body, batching)
            else:
                payload = parse_binary(body, length, batching)
        except Fallback:
            pass
        except ClientError as error:
            refused = str(error)
        # Answered outside the except blocks: the exception being handled holds the parser's
        # frames, and with them proxies of the document, which would keep the thread's parser
        # (parse_document) from being reused while MLServer's route or error handler runs.
        if refused is not None:
            raise InferenceError(refused)
        if payload is None:
            return await self.app(scope, replay(body, receive), send)
        data_plane = sys.modules["mlserver_npu.rest"].data_plane
        # As MLServer's Endpoints.infer, with the arrays kept.
        insert_headers(payload, {key.decode("latin-1").lower(): value.decode("latin-1")
                                 for key, value in scope["headers"]})
        response = await data_plane.infer(payload, match["name"], match["version"])
        headers = extract_headers(response) or {}
        head, binary = render(response, payload)
        extra = [(key.lower().encode("latin-1"), str(value).encode("latin-1"))
                 for key, value in headers.items()]
        if not binary:
            return await reply(send, 200, head, extra)
        extra.append((HEADER_LENGTH.encode(), str(len(head)).encode()))
        await reply(send, 200, head, extra, b"application/octet-stream", binary)


def route_path(scope: Dict[str, Any]) -> str:
    """The path the router matches: without MLServer's `root_path`, which uvicorn includes."""
    path, root = scope["path"], scope.get("root_path", "")
    return path[len(root):] if root and path.startswith(root) else path


async def served_model(name: str, version: Optional[str]) -> Any:
    """The model `name` serves (unwrapped from parallel workers), or None. The plugin's
    (NPURuntime, Pipeline) have `rest_tensors` set."""
    data_plane = sys.modules["mlserver_npu.rest"].data_plane  # rest.py imports this module
    if data_plane is None:
        return None
    try:
        model = await data_plane._model_registry.get_model(name, version)
    except MLServerError:
        return None
    return model._model if isinstance(model, ParallelModel) else model


# --- requests ---

def parse_json(body: bytes, batching: bool) -> InferenceRequest:
    """A JSON infer request; Fallback when it does not parse or validate (MLServer says why),
    or when adaptive batching will merge it as lists anyway."""
    if batching:
        raise Fallback()
    try:
        document = parse_document(body)
    except (ValueError, TypeError, RuntimeError):  # RuntimeError: depth, big integers
        raise Fallback() from None
    if not isinstance(document, simdjson.Object):
        raise Fallback()
    try:
        header, datas = split_header(document)
        request = InferenceRequest.model_validate(header)
    except (ValidationError, ClientError):
        raise Fallback() from None
    fill(request, header, datas, body)
    return request


# A parser is kept per thread for documents up to KEEP_PARSER_BYTES. A simdjson parser
# allocates its buffers (tape, structural indexes) in proportion to the document, and glibc
# gives freed buffers of megabytes back to the kernel: with a new parser per request, each
# squeezenet request (2.9 MB of JSON) faulted them in again, and the parse took 6.8-10 ms
# instead of 3.6, its arrays' copies 3.5 ms instead of 0.9 (bench/README.md, "Issue 19,
# third pass"). A kept parser holds the pages of the largest document it took, which grow
# with its tokens: ~1x the text for floats as Python writes them, ~12x for `0,0,0,...`
# (52 MiB after 4 MiB of zeros), once per thread that parses (the event loop's).
KEEP_PARSER_BYTES = 4 * 2**20
_kept = threading.local()


def parse_document(body: bytes) -> Any:
    """`body` parsed by simdjson (ValueError, TypeError or RuntimeError when it does not
    parse). Every proxy of the document must be gone before the thread parses again."""
    keep = len(body) <= KEEP_PARSER_BYTES
    parser = getattr(_kept, "parser", None) if keep else None
    if parser is not None:
        try:
            return parser.parse(body)
        except RuntimeError as error:
            # pysimdjson refuses to reuse a parser while a proxy of its last document is alive
            # (a request still holding one): that document keeps this parser, the new one is
            # kept. Other RuntimeErrors refuse the document (too deep, a big integer).
            if not str(error).startswith("Tried to re-use a parser"):
                raise
    parser = simdjson.Parser()
    document = parser.parse(body)
    if keep:
        _kept.parser = parser
    return document


def fill(request: InferenceRequest, header: Dict[str, Any], datas: List[Any], text: bytes
         ) -> None:
    """The inputs' JSON `data` (None: binary, set later) into `request`: numbers as arrays
    when the brackets of `text` prove the nesting `as_buffer` flattens away (`[0.5]` among
    numbers would count as one), else as Python values."""
    values, extra = [], _brackets(header) - sum(data is None for data in datas)
    for item, data in zip(request.inputs, datas):
        value, arrays = json_tensor(data, _datatype(item), item.shape)
        values.append(value)
        extra += arrays - 1
    if _count_brackets(text) != extra or (text.find(b"\\") >= 0
                                          and ESCAPED_BRACKET.search(text)):
        values = [_python(data) if isinstance(value, np.ndarray) else value
                  for value, data in zip(values, datas)]
    for item, value in zip(request.inputs, values):
        if value is not None:
            item.data = TensorData.model_construct(root=value)


ESCAPED_BRACKET = re.compile(rb"\\u005[bB]")


def _count_brackets(text: bytes) -> int:
    # numpy: bytes.count(b"[") and `in` take ~0.7 ns a byte (2 ms of a squeezenet request's
    # 2.9 MB), numpy ~0.1; find(b"\\") above is a memchr, and numeric JSON has no escapes.
    return int(np.count_nonzero(np.frombuffer(text, np.uint8) == ord("[")))


def _brackets(value: Any) -> int:
    """The `[` a JSON text of `value` holds (without escapes); iterative, as clients nest
    data deeper than Python recurses."""
    count, pending = 0, [value]
    while pending:
        item = pending.pop()
        if isinstance(item, list):
            count += 1
            pending.extend(item)
        elif isinstance(item, dict):
            count += sum(key.count("[") for key in item)
            pending.extend(item.values())
        elif isinstance(item, str):
            count += item.count("[")
    return count


def split_header(document: "simdjson.Object") -> Tuple[Dict[str, Any], List[Any]]:
    """The request as a dict with each input's `data` left out (`[]`), and those data (a
    simdjson proxy, a Python value, or None when absent), in input order."""
    header: Dict[str, Any] = {}
    datas: List[Any] = []
    for key in document.keys():  # (items() converts the values to Python)
        value = document[key]
        if key != "inputs" or not isinstance(value, simdjson.Array):
            header[key] = _python(value)
            continue
        inputs = []
        for tensor in value:
            if not isinstance(tensor, simdjson.Object):
                raise ClientError(400, "each of 'inputs' must be an object")
            fields = {k: _python(tensor[k]) for k in tensor.keys() if k != "data"}
            datas.append(tensor.get("data"))
            inputs.append({**fields, "data": []})
        header["inputs"] = inputs
    return header, datas


def _datatype(item: Any) -> str:
    return getattr(item.datatype, "value", item.datatype)


def _python(value: Any) -> Any:
    if isinstance(value, simdjson.Array):
        return value.as_list()
    if isinstance(value, simdjson.Object):
        return value.as_dict()
    return value


def json_tensor(data: Any, datatype: str, shape: List[int]) -> Tuple[Any, int]:
    """JSON `data` of a numeric tensor as a flat WireArray when it is all numbers of the
    datatype's kind and range, flat or nested exactly as `shape`; else as Python values, for
    tensors.decode_input to convert or refuse by index as before. With the number of JSON
    arrays it takes."""
    if isinstance(data, simdjson.Array):
        array, arrays = _numbers(data, LITTLE_ENDIAN.get(datatype), shape)
        if array is not None:
            return array, arrays
    value = _python(data)
    return value, _brackets(value)


def _numbers(data: "simdjson.Array", dtype: Optional[np.dtype], shape: List[int]
             ) -> Tuple[Optional[WireArray], int]:
    if dtype is None or dtype.kind not in _BUFFER_TYPES or any(d < 0 for d in shape):
        return None, 0
    of_type, wide = _BUFFER_TYPES[dtype.kind]
    try:
        values = np.frombuffer(data.as_buffer(of_type=of_type), wide)
    except (TypeError, ValueError):  # null, strings, booleans, 2.5 in an integer tensor
        return None, 0
    arrays = 1 if len(data) == values.size else _nested_as(data, shape)
    if values.size != math.prod(shape) or not arrays:
        return None, 0
    if values.size and dtype != wide:
        if dtype.kind == "f":
            if max(-values.min(), values.max()) > np.finfo(dtype).max:
                return None, 0
        else:
            info = np.iinfo(dtype)
            if values.min() < info.min or values.max() > info.max:
                return None, 0
    return values.astype(dtype).view(WireArray), arrays


def _nested_as(data: "simdjson.Array", shape: List[int]) -> int:
    """The arrays of `data` when they nest exactly as `shape` (the numbers counted
    already), else 0."""
    level, arrays = [data], 1
    for dim in shape[:-1]:
        if any(not isinstance(item, simdjson.Array) or len(item) != dim for item in level):
            return 0
        level = [child for item in level for child in item]
        arrays += len(level)
    if all(isinstance(item, simdjson.Array) and len(item) == shape[-1] for item in level):
        return arrays
    return 0


def parse_binary(body: bytes, length: str, batching: bool) -> InferenceRequest:
    """A request of Triton's binary extension: a JSON header of `length` bytes, then the
    binary inputs' bytes in input order. Every mistake is a ClientError naming it."""
    if not length.strip().isdigit():
        raise ClientError(400, f"Inference-Header-Content-Length must be a number of bytes, "
                               f"got {shorten(length)}")
    size = int(length)
    if size > len(body):
        raise ClientError(400, f"Inference-Header-Content-Length is {size}, past the end of "
                               f"the {len(body)}-byte body")
    try:
        document = parse_document(body[:size])
    except (ValueError, TypeError, RuntimeError) as error:
        raise ClientError(400, f"the inference header (the first {size} bytes of the body) "
                               f"is not valid JSON: {str(error)[:200]}") from None
    if not isinstance(document, simdjson.Object):
        raise ClientError(400, "the inference header must be a JSON object")
    header, datas = split_header(document)
    try:
        request = InferenceRequest.model_validate(header)
    except ValidationError as error:
        raise ClientError(400, f"the inference header is not a valid request: "
                               f"{describe(error)}") from None
    fill(request, header, datas, body[:size])
    binary = memoryview(body)
    offset = size
    for item, data in zip(request.inputs, datas):
        name = shorten(item.name)
        parameters = item.parameters
        extra = parameters.model_extra if parameters is not None else {}
        given = extra.pop("binary_data_size", None) if extra is not None else None
        if given is None:
            if data is None:
                raise ClientError(400, f"input {name}: neither 'data' nor "
                                       "parameters.binary_data_size")
            value = item.data.root
        else:
            if data is not None:
                raise ClientError(400, f"input {name}: both 'data' and "
                                       "parameters.binary_data_size; give one")
            if type(given) is not int or given < 0:
                raise ClientError(400, f"input {name}: parameters.binary_data_size must be a "
                                       f"byte count >= 0, got {shorten(given)}")
            if offset + given > len(body):
                raise ClientError(400, f"input {name}: binary_data_size {given} goes past the "
                                       f"end of the body ({len(body) - offset} bytes left)")
            value = raw_view(item.name, _datatype(item), item.shape,
                             binary[offset : offset + given])
            offset += given
        if batching and isinstance(value, np.ndarray):
            value = value.tolist()  # MLServer's adaptive batching merges lists
        item.data = TensorData.model_construct(root=value)
    if offset != len(body):
        raise ClientError(400, f"{len(body) - offset} bytes after the last input's binary data "
                               "(the binary_data_size values do not add up to the body)")
    return request


def describe(error: ValidationError) -> str:
    problems = [
        f"{'.'.join(str(part) for part in item['loc'])}: {item['msg']}"
        for item in error.errors()[:3]
    ]
    return shorten("; ".join(problems), 500)


# --- replies ---

def render(response: InferenceResponse, request: InferenceRequest) -> Tuple[bytes, List[Any]]:
    """The reply's JSON (its header, when binary outputs follow), and the binary outputs'
    buffers in output order (views of the arrays where they can be)."""
    everything = _flag(request.parameters, "binary_data_output")
    asked = {output.name: _flag(output.parameters, "binary_data")
             for output in request.outputs or []}
    # As FastAPI renders MLServer's reply (exclude_unset, exclude_none), field by field:
    # model_dump of the whole reply costs more than the rest of a tiny request's rendering.
    head = _present(response, ["model_name", "model_version", "id"])
    if response.parameters is not None:
        head["parameters"] = _parameters(response.parameters)
    outputs, binary = [], []
    for output in response.outputs:
        fields = _present(output, ["name", "shape", "datatype"])
        if output.parameters is not None:
            fields["parameters"] = _parameters(output.parameters)
        data = getattr(output.data, "root", output.data)
        wanted = asked.get(output.name)
        datatype = fields["datatype"]
        if wanted if wanted is not None else everything:
            raw = pack(data, datatype)
            fields.setdefault("parameters", {})["binary_data_size"] = memoryview(raw).nbytes
            binary.append(raw)
        else:
            fields["data"] = data.view(np.ndarray) if isinstance(data, np.ndarray) else data
        outputs.append(fields)
    head["outputs"] = outputs
    text = orjson.dumps(head, default=_encode_object_to_bytes, option=orjson.OPT_SERIALIZE_NUMPY)
    return text, binary


def _present(model: Any, names: List[str]) -> Dict[str, Any]:
    return {name: getattr(model, name) for name in names if getattr(model, name) is not None}


def _parameters(parameters: Any) -> Dict[str, Any]:
    return parameters.model_dump(mode="json", exclude_unset=True, exclude_none=True)


def _flag(parameters: Any, name: str) -> Optional[bool]:
    extra = parameters.model_extra if parameters is not None else None
    value = (extra or {}).get(name)
    return value if isinstance(value, bool) else None


def pack(data: Any, datatype: str) -> Any:
    """Output data in Triton's binary layout: little-endian values (a view of a contiguous
    array of that layout); BYTES elements each after its 4-byte little-endian length."""
    if datatype == "BYTES":
        elements = [v if isinstance(v, bytes) else str(v).encode() for v in _flat(data)]
        return b"".join(struct.pack("<I", len(v)) + v for v in elements)
    array = np.ascontiguousarray(np.asarray(data, dtype=LITTLE_ENDIAN[datatype]))
    return memoryview(array.view(np.ndarray).reshape(-1)).cast("B")


def _flat(data: Any) -> List[Any]:
    if isinstance(data, np.ndarray):
        return data.ravel().tolist()
    flat = list(data)
    while flat and isinstance(flat[0], list):
        flat = [value for row in flat for value in row]
    return flat
