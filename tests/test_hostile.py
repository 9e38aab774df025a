"""A hostile client against one running server: every malformed request, over REST and gRPC,
gets a small 4xx (gRPC INVALID_ARGUMENT or NOT_FOUND) within 10 s that says what is wrong,
never a 5xx or a dropped connection; valid edge values still come back exact; and after the
whole corpus, sent at once, the server answers what onnxruntime computes."""
import json
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, List, NamedTuple, Union

import grpc
import httpx
import numpy as np
import pytest
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import dataplane_pb2_grpc
from onnx import TensorProto

import images
import reference
from images import b64, encode, photo
from reference import v2_input
from server import Server, copy_model, copy_repository, write_model

TIMEOUT = 10  # seconds for any answer
MAX_BODY = 4096  # bytes: a message, never an echo of the request
LIMITED_PIXELS = 1_000_000  # max_image_pixels of the digits-image-small model

# identity models x -> y, shape [N, 4], one per datatype: (ONNX type, numpy dtype)
TYPED = {
    "UINT8": (TensorProto.UINT8, np.uint8),
    "INT32": (TensorProto.INT32, np.int32),
    "INT64": (TensorProto.INT64, np.int64),
    "BOOL": (TensorProto.BOOL, np.bool_),
    "FP16": (TensorProto.FLOAT16, np.float16),
    "FP64": (TensorProto.DOUBLE, np.float64),
}


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    root = tmp_path_factory.mktemp("hostile")
    repository = copy_repository(
        root / "repo", models=["digits", "digits-temperature", "digits-image"]
    )
    copy_model(repository / "digits-image", repository, "digits-image-small",
               {"max_image_pixels": LIMITED_PIXELS})
    # 9000x9000 headers are over the default max_image_pixels (50 M): let this copy take them,
    # so that the PNG data checks behind the pixel limit are reached
    settings_file = repository / "digits-image" / "model-settings.json"
    settings = json.loads(settings_file.read_text())
    settings["parameters"]["extra"]["max_image_pixels"] = 100_000_000
    settings_file.write_text(json.dumps(settings))
    for datatype, (onnx_type, _) in TYPED.items():
        name = f"id-{datatype.lower()}"
        write_model(repository / name, name, {},
                    model=reference.identity_model(onnx_type, ["N", 4]))
    running = Server.start(repository, root)
    yield running
    running.stop()


# --- the corpus ---

class Case(NamedTuple):
    id: str
    body: Union[bytes, Callable[[], Any]]  # raw bytes, or a function making the JSON body
    words: List[str]  # the error message must contain each
    status: int = 400
    model: str = "digits"


PIXELS = reference.digits(1)[0].tolist()  # 64 floats


def _with(index: int, value: Any, values: list = PIXELS) -> list:
    return values[:index] + [value] + values[index + 1:]


def digits(**changes: Any) -> Callable[[], dict]:
    def body() -> dict:
        tensor = {"name": "input", "shape": [1, 64], "datatype": "FP32", "data": PIXELS}
        tensor.update({k: v() if callable(v) else v for k, v in changes.items()})
        return {"inputs": [tensor]}
    return body


def typed(datatype: str, data: list) -> Callable[[], dict]:
    return lambda: {"inputs": [{"name": "x", "shape": [1, 4], "datatype": datatype, "data": data}]}


def pictures(data: Any, shape: Any = None, **changes: Any) -> Callable[[], dict]:
    def body() -> dict:
        payloads = data() if callable(data) else data
        count = len(payloads) if isinstance(payloads, list) else 1
        tensor = {"name": "input", "shape": shape or [count], "datatype": "BYTES",
                  "data": payloads}
        tensor.update(changes)
        return {"inputs": [tensor]}
    return body


def nested(depth: int, inner: bytes) -> bytes:
    return b"[" * depth + inner + b"]" * depth


def _raw(data: bytes, shape: bytes = b"[1, 64]", datatype: bytes = b"FP32") -> bytes:
    """A JSON body written out, for what Python's json cannot write (NaN, 5000 levels)."""
    head = b'{"inputs": [{"name": "input", "shape": %s, "datatype": "%s", "data": '
    return head % (shape, datatype) + data + b"}]}"


GOOD = encode(photo(40, 40, 18), "PNG")
TRUNCATED_PNG = encode(photo(200, 200, 19), "PNG")[:20000]
FEW_ROWS = images.png_claiming(9000, 9000, rows=4)  # 81 M pixels claimed, 4 rows of data
HUGE_HEADER = images.png_claiming(30000, 30000)  # over twice Pillow's limit
BIG_NAME = 5_000_000
BIG_VALUE = 20_000_000

REST_CASES = [
    # the body itself: MLServer (FastAPI) answers 422
    Case("invalid-json", b'{"inputs": [', ["JSON decode error"], 422),
    Case("empty-body", b"", [], 422),
    Case("body-is-a-list", b"[1, 2]", [], 422),
    Case("inputs-not-a-list", lambda: {"inputs": 5}, [], 422),
    Case("no-inputs", lambda: {}, [], 422),
    Case("nan-literal", _raw(b"[NaN" + b", 0.5" * 63 + b"]"), ["JSON decode error"], 422),
    Case("number-beyond-double", _raw(b"[1e400" + b", 0.5" * 63 + b"]"), ["infinity"], 422),
    Case("nested-past-the-json-depth-limit", _raw(nested(5000, b"0.5")), ["depth"], 422),
    Case("unknown-datatype", digits(datatype="FP33"), ["FP32"], 422),
    Case("shape-not-integers", digits(shape=["a", 64]), [], 422),
    Case("dim-beyond-int64", digits(shape=[2**70, 64]), [], 422),
    # numeric tensors take JSON numbers of their kind, in range
    Case("null-in-fp32", digits(data=_with(5, None)),
         ["input 'input'", "not a valid FP32 tensor", "index 5 is None", "expected a number"]),
    Case("numeric-string", digits(data=_with(3, "0.5")), ["index 3 is '0.5'", "a number"]),
    Case("nan-string", digits(data=_with(0, "NaN")), ["index 0 is 'NaN'"]),
    Case("true-in-fp32", digits(data=_with(63, True)), ["index 63 is True", "a number"]),
    # (a single value that is 0 or 1 among others takes another path than many of them)
    Case("true-among-fractions", digits(data=_with(10, True, [0.25] * 64)), ["index 10 is True"]),
    Case("fp32-overflow", digits(data=_with(7, 1e39)),
         ["index 7 is 1e+39", "out of the range of FP32"]),
    Case("object-in-data", digits(data=_with(1, {"a": 1})), ["index 1 is {'a': 1}"]),
    Case("list-among-numbers", digits(data=_with(2, [0.5])), ["index 2 is [0.5]"]),
    Case("data-is-a-string", digits(data="0.5"), ["input 'input'", "got str"]),
    Case("data-is-a-number", digits(data=0.5), ["input 'input'", "got float"]),
    Case("data-is-an-object", digits(data={"a": 1}), ["input 'input'", "got dict"]),
    Case("nested-990-deep", _raw(nested(990, b"0.5")),
         ["input 'input'", "nested deeper than the shape's 2 dimension(s)"]),
    Case("ragged-rows", digits(shape=[2, 64], data=[PIXELS, PIXELS[:63]]),
         ["not all of one length"]),
    Case("20-MB-string-value", digits(data=lambda: _with(0, "x" * BIG_VALUE)),
         ["index 0 is 'xxxx", "...", "expected a number"]),
    Case("float-in-int32", typed("INT32", [1, 2.5, 3, 4]),
         ["input 'x'", "index 1 is 2.5", "expected an integer"], model="id-int32"),
    Case("int32-overflow", typed("INT32", [0, 0, 2**31, 0]),
         ["index 2 is 2147483648", "out of the range of INT32"], model="id-int32"),
    Case("int64-overflow", typed("INT64", [2**63, 0, 0, 0]),
         ["index 0 is 9223372036854775808", "INT64"], model="id-int64"),
    Case("uint8-overflow", typed("UINT8", [0, 255, 256, 1]),
         ["index 2 is 256", "out of the range of UINT8 (0 to 255)"], model="id-uint8"),
    Case("uint8-negative", typed("UINT8", [-1, 0, 0, 0]), ["index 0 is -1", "UINT8"],
         model="id-uint8"),
    Case("true-in-uint8", typed("UINT8", [1, True, 0, 0]),
         ["index 1 is True", "expected an integer"], model="id-uint8"),
    Case("true-among-large-ints", typed("INT32", [5, 7, True, 9]), ["index 2 is True"],
         model="id-int32"),
    Case("number-in-bool", typed("BOOL", [True, 1, False, True]),
         ["index 1 is 1", "expected true or false"], model="id-bool"),
    Case("string-in-bool", typed("BOOL", [True, "true", False, True]),
         ["index 1 is 'true'"], model="id-bool"),
    Case("fp16-overflow", typed("FP16", [0.5, 70000.0, 0.0, 1.0]),
         ["index 1 is 70000.0", "out of the range of FP16"], model="id-fp16"),
    # shapes and datatypes
    Case("negative-dim", digits(shape=[-1, 64]), ["negative dimension"]),
    Case("zero-dim", digits(shape=[1, 0], data=[]), ["expected shape [-1, 64]", "got [1, 0]"]),
    Case("huge-dim", digits(shape=[10**12, 64]), ["needs 64000000000000 values, got 64"]),
    Case("shape-product-beyond-int64", digits(shape=[2**62, 64]),
         ["needs 295147905179352825856 values"]),
    Case("100k-dims", digits(shape=[1] * 100_000), ["expected shape [-1, 64]", "..."]),
    Case("bytes-to-fp32", digits(datatype="BYTES", data=["abc"] * 64),
         ["expected datatype FP32, got BYTES"]),
    Case("int64-to-fp32", digits(datatype="INT64", data=[1] * 64),
         ["expected datatype FP32, got INT64"]),
    # names and parameters
    Case("5-M-char-input-name", digits(name=lambda: "n" * BIG_NAME, shape=[1, 63], data=PIXELS[:63]),
         ["input 'nnnn", "...", "expected shape"]),
    Case("5-M-char-unknown-input",
         lambda: {"inputs": [v2_input("pixels", np.zeros((1, 64), np.float32)),
                             v2_input("t" * BIG_NAME, np.ones((1, 1), np.float32))]},
         ["unknown input 'tttt", "...", "'temperature'"], model="digits-temperature"),
    Case("given-twice",
         lambda: {"inputs": [v2_input("pixels", np.zeros((1, 64), np.float32))] * 2},
         ["input 'pixels' is given more than once"], model="digits-temperature"),
    Case("1-M-char-output-name",
         lambda: dict(digits()(), outputs=[{"name": "o" * 1_000_000}]),
         ["unknown output 'oooo", "..."]),
    Case("1-M-char-class-count",
         lambda: dict(digits()(), outputs=[{"name": "probabilities",
                                            "parameters": {"classification": "k" * 1_000_000}}]),
         ["non-negative integer", "'kkkk", "..."]),
    Case("unknown-model", digits(), ["no-such-model"], 404, model="no-such-model"),
    # images
    Case("bad-base64", pictures([b64(GOOD), "not base64!"]),
         ["input 'input', batch index 1", "not valid base64"], model="digits-image"),
    Case("not-an-image", pictures([b64(b"hello, world")]),
         ["batch index 0", "not a decodable image"], model="digits-image"),
    Case("empty-payload", pictures([""]), ["empty payload"], model="digits-image"),
    Case("truncated-png", pictures([b64(TRUNCATED_PNG)]),
         ["batch index 0", "cannot decode the PNG data"], model="digits-image"),
    Case("9000x9000-header-4-rows", pictures([b64(FEW_ROWS)]),
         ["batch index 0", "cannot hold the 9000x9000 pixels"], model="digits-image"),
    Case("9000x9000-over-the-model-limit", pictures([b64(FEW_ROWS)]),
         ["9000x9000", f"over the limit of {LIMITED_PIXELS}", "max_image_pixels"],
         model="digits-image-small"),
    Case("30000x30000-header", pictures([b64(HUGE_HEADER)]),
         ["batch index 0", "900000000 pixels"], model="digits-image"),
    Case("empty-image-list", pictures([], shape=[0]), ["input 'input'", "no images"],
         model="digits-image"),
    Case("image-nested-990-deep", _raw(nested(990, b'"%s"' % b64(GOOD).encode()), b"[1]", b"BYTES"),
         ["nested deeper than the shape's 1 dimension(s)"], model="digits-image"),
    Case("image-matrix", pictures([b64(GOOD)] * 4, shape=[2, 2]),
         ["shape [N] or [N, 1]", "got shape [2, 2]"], model="digits-image"),
    Case("image-rank-3", pictures([[[b64(GOOD)]]], shape=[1, 1, 1]), ["shape [N] or [N, 1]"],
         model="digits-image"),
    Case("image-is-a-number", pictures([5]), ["batch index 0", "got int"], model="digits-image"),
    Case("image-count", pictures([b64(GOOD)] * 2, shape=[3]), ["needs 3 images, got 2"],
         model="digits-image"),
    Case("image-as-fp32", digits(parameters={"content_type": "image"}),
         ["needs datatype BYTES"], model="digits-image"),
    Case("20-MB-image-string", pictures(lambda: ["A" * BIG_VALUE]),
         ["batch index 0", "not a decodable image"], model="digits-image"),
]


def _request(server: Server, case: Case) -> httpx.Response:
    body = case.body if isinstance(case.body, bytes) else json.dumps(case.body()).encode()
    return server.http.post(
        f"/v2/models/{case.model}/infer", content=body,
        headers={"Content-Type": "application/json"}, timeout=TIMEOUT,
    )


@pytest.mark.parametrize("case", REST_CASES, ids=[c.id for c in REST_CASES])
def test_rest_corpus_gets_a_short_4xx_saying_what_is_wrong(hostile, case):
    started = time.monotonic()
    response = _request(hostile, case)
    assert time.monotonic() - started < TIMEOUT
    assert response.status_code == case.status, response.text[:1000]
    assert len(response.content) <= MAX_BODY, response.text[:1000]
    text = response.json().get("error") or response.text
    for word in case.words:
        assert word in text, (word, text)


# --- gRPC: typed contents, built with MLServer's own stubs (no client-side checks) ---

class GrpcCase(NamedTuple):
    id: str
    model: str
    tensor: dict  # name, datatype, shape, and one contents field
    words: List[str]
    code: grpc.StatusCode = grpc.StatusCode.INVALID_ARGUMENT
    outputs: List[str] = []


def _fp32(**changes: Any) -> dict:
    tensor = {"name": "input", "datatype": "FP32", "shape": [1, 64], "fp32_contents": PIXELS}
    tensor.update(changes)
    return tensor


def _image(files: list, shape: list = None) -> dict:
    return {"name": "input", "datatype": "BYTES", "shape": shape or [len(files)],
            "bytes_contents": files}


def _no_fp32(**changes: Any) -> dict:
    tensor = _fp32(**changes)
    del tensor["fp32_contents"]
    return tensor


GRPC_CASES = [
    GrpcCase("unknown-model", "no-such-model", _fp32(), ["no-such-model"],
             grpc.StatusCode.NOT_FOUND),
    GrpcCase("bools-to-fp32", "digits", _no_fp32(bool_contents=[True] * 64),
             ["index 0 is True", "expected a number"]),
    GrpcCase("bytes-to-fp32", "digits", _no_fp32(bytes_contents=[b"0.5"] * 64),
             ["index 0 is b'0.5'"]),
    GrpcCase("uint8-overflow", "id-uint8",
             {"name": "x", "datatype": "UINT8", "shape": [1, 4], "uint_contents": [1, 300, 2, 3]},
             ["index 1 is 300", "UINT8"]),
    GrpcCase("int32-overflow", "id-int32",
             {"name": "x", "datatype": "INT32", "shape": [1, 4],
              "int64_contents": [0, 0, 0, 2**40]}, ["index 3 is 1099511627776", "INT32"]),
    GrpcCase("1-M-char-name", "digits", _fp32(name="n" * 1_000_000, shape=[1, 63],
                                              fp32_contents=PIXELS[:63]),
             ["input 'nnnn", "...", "expected shape"]),
    GrpcCase("wrong-shape", "digits", _fp32(shape=[4, 16]), ["expected shape [-1, 64]"]),
    GrpcCase("count", "digits", _fp32(fp32_contents=PIXELS[:63]), ["needs 64 values, got 63"]),
    GrpcCase("negative-dim", "digits", _fp32(shape=[-1, 64]), ["negative dimension"]),
    GrpcCase("not-an-image", "digits-image", _image([b"hello, world"]),
             ["batch index 0", "not a decodable image"]),
    GrpcCase("image-matrix", "digits-image", _image([GOOD] * 4, [2, 2]), ["shape [N] or [N, 1]"]),
    GrpcCase("few-rows-png", "digits-image", _image([FEW_ROWS]), ["cannot hold the 9000x9000"]),
    GrpcCase("over-the-model-limit", "digits-image-small", _image([FEW_ROWS]),
             [f"over the limit of {LIMITED_PIXELS}"]),
    GrpcCase("unknown-output", "digits", _fp32(), ["unknown output 'scores'"],
             outputs=["scores"]),
]


def _infer_request(model: str, tensor: dict, outputs=()) -> pb.ModelInferRequest:
    fields = {k: v for k, v in tensor.items() if k.endswith("_contents")}
    return pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(
            name=tensor["name"], datatype=tensor["datatype"], shape=tensor["shape"],
            contents=pb.InferTensorContents(**fields),
        )],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name=o) for o in outputs],
    )


@pytest.fixture(scope="module")
def stub(hostile):
    channel = grpc.insecure_channel(
        hostile.grpc_target, options=[("grpc.max_send_message_length", 64 * 2**20)]
    )
    yield dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


@pytest.mark.parametrize("case", GRPC_CASES, ids=[c.id for c in GRPC_CASES])
def test_grpc_corpus_gets_invalid_argument_or_not_found(stub, case):
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(_infer_request(case.model, case.tensor, case.outputs), timeout=TIMEOUT)
    error = raised.value
    assert error.code() == case.code, error.details()[:1000]
    assert len(error.details().encode()) <= MAX_BODY, error.details()[:1000]
    for word in case.words:
        assert word in error.details(), (word, error.details())


# --- what is valid stays valid, exactly ---

EDGES = {
    "UINT8": [0, 255, 1, 254],
    "INT32": [-(2**31), 2**31 - 1, 0, -5],
    "INT64": [-(2**63), 2**63 - 1, 0, 7],
    "BOOL": [True, False, False, True],
    "FP16": [65504.0, -65504.0, 0.5, 6e-8],
    "FP64": [1.7e308, -1.7e308, 5e-324, 0],
}


@pytest.mark.parametrize("datatype", EDGES)
def test_values_at_the_edges_of_each_datatype_are_served_exactly(hostile, datatype):
    onnx_type, dtype = TYPED[datatype]
    model = f"id-{datatype.lower()}"
    response = hostile.infer(model, [{"name": "x", "shape": [1, 4], "datatype": datatype,
                                      "data": EDGES[datatype]}])
    assert response.status_code == 200, response.text
    [output] = response.json()["outputs"]
    feed = np.array(EDGES[datatype], dtype).reshape(1, 4)
    want = reference.session(hostile.repository / model / "model.onnx").run(None, {"x": feed})[0]
    assert output["datatype"] == datatype
    np.testing.assert_array_equal(np.array(output["data"], dtype).reshape(1, 4), want)


def _digits_ok(response: httpx.Response, feeds: np.ndarray) -> None:
    assert response.status_code == 200, response.text
    outputs = {o["name"]: o for o in response.json()["outputs"]}
    want = reference.run("digits", {"input": feeds})
    assert outputs["label"]["data"] == want["label"].tolist()
    np.testing.assert_allclose(np.array(outputs["probabilities"]["data"]).reshape(-1, 10),
                               want["probabilities"], rtol=1e-5, atol=1e-6)


def test_json_integers_and_nested_rows_are_valid_fp32(hostile):
    feeds = reference.digits(2)
    as_ints = {"name": "input", "shape": [2, 64], "datatype": "FP32",
               "data": feeds.astype(int).ravel().tolist()}  # the digits are whole numbers
    _digits_ok(hostile.infer("digits", [as_ints]), feeds)
    rows = dict(as_ints, data=feeds.tolist())
    _digits_ok(hostile.infer("digits", [rows]), feeds)


def test_images_of_shape_n_by_1_and_a_1x1_png_are_valid(hostile):
    one_pixel = encode(images.Image.new("L", (1, 1), 200), "PNG")
    files = [GOOD, one_pixel]
    want = reference.run("digits", {"input": np.stack([images.digit_row(f) for f in files])})
    for data in ([b64(f) for f in files], [[b64(f)] for f in files]):
        response = hostile.infer("digits-image", [{"name": "input", "shape": [2, 1],
                                                   "datatype": "BYTES", "data": data}])
        assert response.status_code == 200, response.text
        labels = {o["name"]: o for o in response.json()["outputs"]}["label"]["data"]
        assert labels == want["label"].tolist()


def test_after_the_whole_corpus_at_once_the_server_answers_right(hostile, stub):
    """All the REST and gRPC cases, eight at a time, then good requests on both protocols."""
    def rest(case):
        return _request(hostile, case).status_code

    def rpc(case):
        try:
            stub.ModelInfer(_infer_request(case.model, case.tensor, case.outputs), timeout=30)
        except grpc.RpcError as error:
            return error.code()

    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(rest, REST_CASES))
        codes = list(pool.map(rpc, GRPC_CASES))
    assert statuses == [case.status for case in REST_CASES]
    assert codes == [case.code for case in GRPC_CASES]

    feeds = reference.digits(3, offset=40)
    _digits_ok(hostile.infer("digits", [v2_input("input", feeds)]), feeds)
    reply = stub.ModelInfer(_infer_request("digits", _fp32(shape=[3, 64],
                                                            fp32_contents=feeds.ravel().tolist())))
    want = reference.run("digits", {"input": feeds})
    outputs = {o.name: o.contents for o in reply.outputs}  # typed contents in, typed out
    assert list(outputs["label"].int64_contents) == want["label"].tolist()
    np.testing.assert_allclose(np.reshape(outputs["probabilities"].fp32_contents, (3, 10)),
                               want["probabilities"], rtol=1e-5, atol=1e-6)
    assert hostile.process.poll() is None
    log = hostile.log()
    assert "Exception in ASGI application" not in log  # how a REST 500 is logged
    # a client's mistake is one INFO line (gRPC), no traceback, nothing at ERROR
    assert log.count("Traceback (most recent call last)") == 0, log[-3000:]
    assert [line for line in log.splitlines() if " ERROR " in line] == []
    assert log.count("ModelInfer of model 'digits' refused (400)") >= 6
