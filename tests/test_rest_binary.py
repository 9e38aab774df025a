"""The REST boundary's tensors (mlserver_npu/rest_tensors.py) through real servers:
tritonclient.http with its defaults (binary inputs and outputs) for every datatype, bit-exact
against onnxruntime, binary and JSON mixed; images, classification strings and a pipeline;
malformed binary requests get a short 400 naming the problem; compressed requests, and a
decompression bomb refused without the server growing; the switch off gives MLServer's own
behaviour; other runtimes in the same server see what MLServer gives them; the wrapped
MLServer code is the code the module was checked against."""
import gzip
import json
import struct
import time
import zlib
from pathlib import Path

import numpy as np
import onnx
import pytest
import tritonclient.http as httpclient
from onnx import TensorProto, helper

import reference
from images import encode, photo
from server import Server, copy_repository, grpc_calls

from mlserver_npu import rest, wire

CUSTOM_RUNTIME = Path(__file__).with_name("custom_runtime")
MAX_BODY = 4096
TIMEOUT = 10

# V2 datatype -> (ONNX type, numpy dtype, the ONNX op computing y from x and w)
TYPES = {
    "FP16": (TensorProto.FLOAT16, np.float16, "Add"),
    "FP32": (TensorProto.FLOAT, np.float32, "Add"),
    "FP64": (TensorProto.DOUBLE, np.float64, "Add"),
    "INT8": (TensorProto.INT8, np.int8, "Add"),
    "INT16": (TensorProto.INT16, np.int16, "Add"),
    "INT32": (TensorProto.INT32, np.int32, "Add"),
    "INT64": (TensorProto.INT64, np.int64, "Add"),
    "UINT8": (TensorProto.UINT8, np.uint8, "Add"),
    "UINT16": (TensorProto.UINT16, np.uint16, "Add"),
    "UINT32": (TensorProto.UINT32, np.uint32, "Add"),
    "UINT64": (TensorProto.UINT64, np.uint64, "Add"),
    "BOOL": (TensorProto.BOOL, np.bool_, "Xor"),
    "BYTES": (TensorProto.STRING, np.object_, "Identity"),
}
SHAPE = [2, 5]


def typed_model(onnx_type: int, op: str) -> onnx.ModelProto:
    """y = op(x, w) (Identity: y = x), z = x: inputs x and w, outputs y and z."""
    inputs = ["x"] if op == "Identity" else ["x", "w"]
    graph = helper.make_graph(
        [helper.make_node(op, inputs, ["y"]), helper.make_node("Identity", ["x"], ["z"])],
        "typed",
        [helper.make_tensor_value_info(name, onnx_type, [None, SHAPE[1]]) for name in ["x", "w"]],
        [helper.make_tensor_value_info(name, onnx_type, [None, SHAPE[1]]) for name in ["y", "z"]],
    )
    if op == "Identity":  # w unused by y, still an input: z shows it
        graph.node[1].input[0] = "w"
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def sample(datatype: str, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dtype = TYPES[datatype][1]
    if datatype == "BYTES":
        words = ["", "x", "héllo", "a b", "🙂", "zz", "0", "line\nbreak", "tab\t", "end"]
        return np.array([w.encode() for w in rng.permutation(words)], object).reshape(SHAPE)
    if datatype == "BOOL":
        return rng.integers(0, 2, SHAPE).astype(bool)
    if np.dtype(dtype).kind == "f":
        return (rng.standard_normal(SHAPE) * 100).astype(dtype)
    info = np.iinfo(dtype)
    return rng.integers(info.min // 2, info.max // 2, SHAPE, dtype=dtype, endpoint=True)


def expected(datatype: str, x: np.ndarray, w: np.ndarray, folder: Path) -> dict:
    session = reference.session(folder / f"t-{datatype.lower()}" / "model.onnx")
    feeds = {"x": x, "w": w}
    if datatype == "BYTES":  # onnxruntime takes and gives str
        feeds = {k: np.array([v.decode() for v in a.ravel()], object).reshape(a.shape)
                 for k, a in feeds.items()}
    y, z = session.run(["y", "z"], feeds)
    if datatype == "BYTES":
        y, z = (np.array([v.encode() for v in a.ravel()], object).reshape(a.shape)
                for a in (y, z))
    return {"y": y, "z": z}


def _repository(root: Path) -> Path:
    repository = copy_repository(root / "repo", ["digits", "digits-image", "digits-mlp",
                                                 "digits-ensemble"])
    for datatype, (onnx_type, _, op) in TYPES.items():
        folder = repository / f"t-{datatype.lower()}"
        folder.mkdir()
        onnx.save(typed_model(onnx_type, op), folder / "model.onnx")
        (folder / "model-settings.json").write_text(json.dumps({
            "name": folder.name, "implementation": "mlserver_npu.NPURuntime",
            "parameters": {"uri": "./model.onnx", "extra": {}}}))
    (repository / "type-echo").mkdir()
    (repository / "type-echo" / "model-settings.json").write_text(
        json.dumps({"name": "type-echo", "implementation": "type_echo.TypeEcho"}))
    return repository


def _start(root: Path, **env: str) -> Server:
    return Server.start(_repository(root), root, env={"PYTHONPATH": str(CUSTOM_RUNTIME), **env})


@pytest.fixture(scope="module")
def on(tmp_path_factory):
    running = _start(tmp_path_factory.mktemp("rest-on"), MLSERVER_NPU_MAX_REQUEST_BYTES="32MiB")
    yield running
    running.stop()


@pytest.fixture(scope="module")
def off(tmp_path_factory):
    running = _start(tmp_path_factory.mktemp("rest-off"), MLSERVER_NPU_REST_BOUNDARY="0")
    yield running
    running.stop()


def triton(server: Server) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(server.url.removeprefix("http://"),
                                            network_timeout=60)


def _input(name: str, array: np.ndarray, datatype: str, binary: bool = True):
    tensor = httpclient.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def _assert_exact(got: np.ndarray, want: np.ndarray, name: str) -> None:
    assert got.shape == want.shape, name
    if want.dtype == object:  # tritonclient gives JSON BYTES as str, binary as bytes
        assert [v.encode() if isinstance(v, str) else v for v in got.ravel()] == list(
            want.ravel()), name
    else:
        assert got.dtype == want.dtype, name
        assert got.tobytes() == want.tobytes(), name


# --- every datatype, tritonclient.http defaults and mixes ---

@pytest.mark.parametrize("datatype", list(TYPES))
def test_tritonclient_defaults_every_datatype_bit_exact(on, datatype):
    x, w = sample(datatype, 1), sample(datatype, 2)
    want = expected(datatype, x, w, on.repository)
    client = triton(on)
    model = f"t-{datatype.lower()}"
    # the defaults: binary inputs, no outputs named (binary_data_output)
    result = client.infer(model, [_input("x", x, datatype), _input("w", w, datatype)])
    for name in ["y", "z"]:
        _assert_exact(result.as_numpy(name), want[name], name)
    # mixed: x binary, w JSON; y binary, z JSON
    result = client.infer(
        model, [_input("x", x, datatype), _input("w", w, datatype, binary=False)],
        outputs=[httpclient.InferRequestedOutput("y"),
                 httpclient.InferRequestedOutput("z", binary_data=False)])
    assert result.get_output("y")["parameters"]["binary_data_size"] > 0
    assert "data" in result.get_output("z")
    for name in ["y", "z"]:
        _assert_exact(result.as_numpy(name), want[name], name)
    # all JSON, both ways
    result = client.infer(
        model, [_input("x", x, datatype, False), _input("w", w, datatype, False)],
        outputs=[httpclient.InferRequestedOutput(n, binary_data=False) for n in ["y", "z"]])
    for name in ["y", "z"]:
        _assert_exact(result.as_numpy(name), want[name], name)


def test_image_bytes_and_classification_strings_binary(on, off):
    png = encode(photo(40, 40, 7), "PNG")
    tensor = httpclient.InferInput("input", [1], "BYTES")
    tensor.set_data_from_numpy(np.array([png], object))
    result = triton(on).infer("digits-image", [tensor])
    # the same request as JSON (base64) to MLServer's own path
    import base64
    body = {"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES",
                        "data": [base64.b64encode(png).decode()]}]}
    plain = off.http.post("/v2/models/digits-image/infer", json=body)
    assert plain.status_code == 200, plain.text
    outputs = {o["name"]: o for o in plain.json()["outputs"]}
    assert outputs, plain.text
    for name, output in outputs.items():
        got = result.as_numpy(name)
        assert got is not None, name
        if output["datatype"] == "BYTES":
            assert [v.decode() for v in got.ravel()] == output["data"], name
        else:
            assert got.ravel().tolist() == output["data"], name


def test_pipeline_takes_binary(on, off):
    pixels = reference.digits(3)
    result = triton(on).infer("digits-ensemble", [_input("input", pixels, "FP32")])
    plain = off.infer("digits-ensemble", [reference.v2_input("input", pixels)])
    assert plain.status_code == 200, plain.text
    for output in plain.json()["outputs"]:
        got = result.as_numpy(output["name"])
        flat = [v.decode() for v in got.ravel()] if got.dtype == object else got.ravel().tolist()
        assert flat == output["data"], output["name"]


# --- JSON tensors as arrays ---

def test_json_flat_and_nested_tensors_are_exact(on, off):
    pixels = reference.digits(4)
    want = reference.run("digits", {"input": pixels})
    for data in [pixels.ravel().tolist(), pixels.tolist()]:
        body = {"inputs": [{"name": "input", "shape": [4, 64], "datatype": "FP32", "data": data}]}
        for server in (on, off):
            response = server.http.post("/v2/models/digits/infer", json=body)
            assert response.status_code == 200, response.text
            for output in response.json()["outputs"]:
                got = np.array(output["data"], want[output["name"]].dtype).reshape(output["shape"])
                assert got.tobytes() == want[output["name"]].tobytes(), output["name"]


def test_json_data_of_the_wrong_kind_is_refused_by_index(on):
    data = reference.digits(1).ravel().tolist()
    for bad, words in [(None, "index 5 is None"), ("0.5", "index 5 is '0.5'"),
                       (True, "index 5 is True")]:
        body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                            "data": data[:5] + [bad] + data[6:]}]}
        response = on.http.post("/v2/models/digits/infer", json=body)
        assert response.status_code == 400, response.text
        assert words in response.json()["error"]
    for rows in [[data, data[:63]], [data + [0.5], data[:63]]]:  # 127 values; 128, ragged
        ragged = {"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32",
                              "data": rows}]}
        response = on.http.post("/v2/models/digits/infer", json=ragged)
        assert response.status_code == 400 and "not all of one length" in response.text


# --- malformed binary requests ---

def _binary(header: dict, *sections: bytes, length=None):
    text = json.dumps(header).encode()
    return {"content": text + b"".join(sections),
            "headers": {"Inference-Header-Content-Length": str(len(text) if length is None
                                                               else length),
                        "Content-Type": "application/octet-stream"}}


def _fp32(size=None, **extra):
    parameters = {} if size is None else {"binary_data_size": size}
    return {"name": "input", "shape": [1, 64], "datatype": "FP32",
            "parameters": parameters, **extra}


PIXELS = np.zeros(64, np.float32).tobytes()
MALFORMED = [
    ("header-past-the-body", _binary({"inputs": [_fp32(256)]}, PIXELS, length=10**6),
     ["Inference-Header-Content-Length is 1000000", "past the end"]),
    ("header-length-not-a-number", _binary({"inputs": [_fp32(256)]}, PIXELS, length="ten"),
     ["must be a number of bytes"]),
    ("header-length-negative", _binary({"inputs": [_fp32(256)]}, PIXELS, length=-5),
     ["must be a number of bytes"]),
    ("header-not-json", _binary({"inputs": [_fp32(256)]}, PIXELS, length=5),
     ["not valid JSON"]),
    ("header-not-an-object", {"content": b"[1, 2]" + PIXELS,
                              "headers": {"Inference-Header-Content-Length": "6"}},
     ["must be a JSON object"]),
    ("header-invalid-shape", _binary({"inputs": [_fp32(256, shape=["a", 64])]}, PIXELS),
     ["not a valid request", "shape"]),
    ("missing-size-and-data", _binary({"inputs": [_fp32()]}, PIXELS),
     ["input 'input'", "neither 'data' nor parameters.binary_data_size"]),
    ("negative-size", _binary({"inputs": [_fp32(-256)]}, PIXELS),
     ["input 'input'", "binary_data_size must be a byte count >= 0", "-256"]),
    ("size-not-an-integer", _binary({"inputs": [_fp32("256")]}, PIXELS),
     ["input 'input'", "binary_data_size must be a byte count"]),
    ("size-past-the-body", _binary({"inputs": [_fp32(1024)]}, PIXELS),
     ["input 'input'", "binary_data_size 1024 goes past the end", "256 bytes left"]),
    ("size-not-shape-times-itemsize", _binary({"inputs": [_fp32(252)]}, PIXELS[:252]),
     ["input 'input'", "FP32 [1, 64] needs 256 bytes", "got 252"]),
    ("trailing-bytes", _binary({"inputs": [_fp32(256)]}, PIXELS, b"\0" * 8),
     ["8 bytes after the last input's binary data"]),
    ("binary-and-data", _binary({"inputs": [_fp32(256, data=[0.0] * 64)]}, PIXELS),
     ["input 'input'", "both 'data' and parameters.binary_data_size"]),
    ("bool-not-0-or-1", _binary({"inputs": [{"name": "x", "shape": [2, 5], "datatype": "BOOL",
                                             "parameters": {"binary_data_size": 10}},
                                            {"name": "w", "shape": [2, 5], "datatype": "BOOL",
                                             "data": [True] * 10}]}, b"\x02" * 10),
     ["input 'x'", "BOOL raw contents must be bytes 0 or 1"], "t-bool"),
    ("bytes-length-past-the-end",
     _binary({"inputs": [{"name": "x", "shape": [1, 5], "datatype": "BYTES",
                          "parameters": {"binary_data_size": 6}},
                         {"name": "w", "shape": [1, 5], "datatype": "BYTES",
                          "data": ["a"] * 5}]}, struct.pack("<I", 99) + b"ab"),
     ["input 'x'", "BYTES element 0 claims 99 bytes, 2 remain"], "t-bytes"),
    ("wrong-datatype", _binary({"inputs": [_fp32(512, datatype="FP64")]}, PIXELS * 2),
     ["input 'input'", "expected datatype FP32, got FP64"]),
    ("raw-floats-without-the-header", {"content": PIXELS * 4, "headers": {
        "Inference-Header-Content-Length": "0"}}, ["not valid JSON"]),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[case[0] for case in MALFORMED])
def test_malformed_binary_requests_get_a_short_400_naming_the_problem(on, case):
    name, request, words, *model = case
    started = time.monotonic()
    response = on.http.post(f"/v2/models/{(model or ['digits'])[0]}/infer", timeout=TIMEOUT,
                            **request)
    assert time.monotonic() - started < TIMEOUT
    assert response.status_code == 400, response.text[:1000]
    assert len(response.content) <= MAX_BODY
    message = response.json()["error"]
    for word in words:
        assert word in message, (word, message)


# --- compression ---

@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
def test_compressed_requests(on, algorithm):
    pixels = reference.digits(2)
    want = reference.run("digits", {"input": pixels})
    result = triton(on).infer("digits", [_input("input", pixels, "FP32")],
                              request_compression_algorithm=algorithm,
                              response_compression_algorithm=algorithm)
    for name, array in want.items():
        _assert_exact(result.as_numpy(name), array, name)
    # JSON to another runtime: inflated for it too
    body = json.dumps({"inputs": [{"name": "a", "shape": [2], "datatype": "INT32",
                                   "data": [1, 2]}]}).encode()
    packed = gzip.compress(body) if algorithm == "gzip" else zlib.compress(body)
    response = on.http.post("/v2/models/type-echo/infer", content=packed,
                            headers={"Content-Encoding": algorithm})
    assert response.status_code == 200, response.text
    assert response.json()["outputs"][0]["data"] == [1, 2]


def _peak_rss(server: Server) -> int:
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines()
                    if line.startswith("VmHWM:"))) * 1024


def _bomb(size: int) -> bytes:
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    chunk = b"\0" * 2**24
    return b"".join([*(packer.compress(chunk) for _ in range(size // len(chunk))),
                     packer.flush()])


def test_decompression_bomb_is_refused_without_growing_the_server(on):
    bomb = _bomb(2**30)  # 1 GiB of zeros, ~1 MB compressed
    before = _peak_rss(on)
    for model in ["digits", "type-echo"]:
        response = on.http.post(f"/v2/models/{model}/infer", content=bomb,
                                headers={"Content-Encoding": "gzip"}, timeout=TIMEOUT)
        assert response.status_code == 413, response.text[:1000]
        assert "MLSERVER_NPU_MAX_REQUEST_BYTES" in response.json()["error"]
    # the limit is 32 MiB: the server's peak may grow by about that, not by the gigabyte
    assert _peak_rss(on) - before < 150 * 2**20
    broken = on.http.post("/v2/models/digits/infer", content=gzip.compress(b"{}" * 99)[:-12],
                          headers={"Content-Encoding": "gzip"})
    assert broken.status_code == 400 and "ends inside" in broken.json()["error"]


# --- other runtimes and the switch ---

def test_other_runtimes_see_what_mlserver_gives_them(on, off):
    body = {"inputs": [{"name": "a", "shape": [3], "datatype": "FP32", "data": [1.5, 2, 3]}]}
    replies = [server.http.post("/v2/models/type-echo/infer", json=body) for server in (on, off)]
    assert [r.status_code for r in replies] == [200, 200]
    assert replies[0].json()["outputs"] == replies[1].json()["outputs"]
    kinds = {o["name"]: o["data"] for o in replies[0].json()["outputs"]}
    assert kinds["a_type"] == ["list"]
    # a binary body to another runtime: a 400 saying so (MLServer's route, as with the
    # boundary off, fails in its 422 handler, which decodes the raw floats as UTF-8: a 500)
    request = _binary({"inputs": [{"name": "a", "shape": [2], "datatype": "FP32",
                                   "parameters": {"binary_data_size": 8}}]}, b"\xff" * 8)
    replies = [server.http.post("/v2/models/type-echo/infer", **request) for server in (on, off)]
    assert replies[0].status_code == 400, replies[0].text
    assert replies[0].json()["error"] == (
        "model 'type-echo' (TypeEcho) does not take Triton's binary tensor extension "
        "(Inference-Header-Content-Length): send the tensors as JSON")
    assert replies[1].status_code == 500
    missing = on.http.post("/v2/models/no-such-model/infer", **request)
    assert missing.status_code == 404 and "no-such-model" in missing.json()["error"]


def test_the_switch_off_gives_mlserver_s_behaviour(off):
    pixels = reference.digits(1)
    with pytest.raises(Exception):
        triton(off).infer("digits", [_input("input", pixels, "FP32")])
    assert "The plugin's REST boundary is off: MLSERVER_NPU_REST_BOUNDARY=0" in off.log()
    # JSON still served, by MLServer's route
    response = off.infer("digits", [reference.v2_input("input", pixels)])
    assert response.status_code == 200


def test_bytes_to_a_string_model_over_grpc_come_back_as_sent(on):
    words = ["x", "héllo", "", "a", "b", "c", "d", "e", "f", "g"]
    import base64
    spec = {"name": "x", "shape": SHAPE, "datatype": "BYTES",
            "data": [base64.b64encode(w.encode()).decode() for w in words]}
    (result,) = grpc_calls(on.grpc_target, [{
        "op": "infer", "model": "t-bytes",
        "inputs": [spec, dict(spec, name="w")], "outputs": [{"name": "y"}]}])
    assert "ok" in result, result
    got = [base64.b64decode(v).decode() for v in result["ok"]["outputs"]["y"]["data"]]
    assert got == words


def test_wrapped_mlserver_code_is_the_checked_code():
    """Fails when MLServer's code the REST boundary wraps or mirrors changes shape."""
    for name, (function, digest) in rest.CHECKED.items():
        assert wire.fingerprint(function()) == digest, name
    assert wire.incompatibility(rest.CHECKED) is None


def test_changed_mlserver_code_keeps_mlserver_s_rest_app(monkeypatch, caplog):
    """A wrapped function whose source changed: a warning naming it, and nothing wrapped."""
    from mlserver.rest.server import RESTServer

    name = "Endpoints.infer"
    monkeypatch.setitem(rest.CHECKED, name, (rest.CHECKED[name][0], "0" * 64))
    monkeypatch.setattr(rest, "_installed", None)
    before = RESTServer.add_custom_handlers
    assert rest.install(True) is False
    assert RESTServer.add_custom_handlers is before
    assert f"MLServer's {name} is not the function it was checked against" in caplog.text


def test_json_numbers_become_arrays_without_python_floats():
    """rest_tensors.parse_json: numeric data (flat, or nested exactly as the shape) comes out
    as a numpy array of the datatype; what is not plainly numbers stays Python values for
    tensors.decode_input to refuse by index."""
    from mlserver_npu import rest_tensors

    def data(values, shape, datatype="FP32", name="x[0]"):  # brackets in strings count too
        body = json.dumps({"inputs": [{"name": name, "shape": shape, "datatype": datatype,
                                       "data": values}]}).encode()
        body = body.replace(b"ESCAPED", rb"\u005b")  # a "[" that is not one in the text
        return rest_tensors.parse_json(body, batching=False).inputs[0].data.root

    pixels = np.arange(12, dtype=np.float32) / 7
    for values in [pixels.tolist(), pixels.reshape(3, 4).tolist()]:
        array = data(values, [3, 4])
        assert isinstance(array, wire.WireArray) and array.dtype == np.float32
        assert array.tobytes() == pixels.tobytes()
    assert data([1, 2, 3], [3], "INT16").dtype == np.int16
    assert data([2**64 - 1], [1], "UINT64").tolist() == [2**64 - 1]
    flat = pixels.tolist()
    for values in [flat[:5] + [None] + flat[6:], flat[:5] + [[0.5]] + flat[6:],
                   flat[:5] + [True] + flat[6:], [flat[:5], flat[5:]],
                   [flat[:4] + [flat[4]], flat[5:]]]:
        assert isinstance(data(values, [3, 4]), list), values
    assert isinstance(data(flat[:5] + [[0.5]] + flat[6:], [3, 4], name="ESCAPED"), list)
    assert isinstance(data([1, 2.5], [2], "INT32"), list)
    assert isinstance(data([1e39, 0], [2], "FP32"), list)
    assert isinstance(data([256, 0], [2], "UINT8"), list)


def test_a_kept_parser_never_mixes_requests():
    """rest_tensors keeps one simdjson parser per thread (a new one per request faulted its
    buffers in again: bench/README.md): requests in turn each get their own numbers, a proxy
    of an earlier document still alive makes the next parse use a new parser, and a refused
    document leaves the kept parser usable."""
    import simdjson

    from mlserver_npu import rest_tensors

    def body(values, datatype="FP64"):
        return json.dumps({"inputs": [{"name": "x", "shape": [len(values)],
                                       "datatype": datatype, "data": values}]}).encode()

    first = rest_tensors.parse_json(body([1.5, 2.5]), batching=False)
    second = rest_tensors.parse_json(body([7.5, 8.5, 9.5]), batching=False)
    assert first.inputs[0].data.root.tolist() == [1.5, 2.5]
    assert second.inputs[0].data.root.tolist() == [7.5, 8.5, 9.5]
    kept = rest_tensors._kept.parser
    rest_tensors.parse_json(body([0.5]), batching=False)
    assert rest_tensors._kept.parser is kept  # reused, not replaced

    alive = rest_tensors.parse_document(body([3.5]))["inputs"]  # a proxy held on to
    third = rest_tensors.parse_json(body([4.5, 5.5]), batching=False)
    assert third.inputs[0].data.root.tolist() == [4.5, 5.5]
    assert isinstance(alive, simdjson.Array) and alive[0]["data"][0] == 3.5
    assert rest_tensors._kept.parser is not kept
    del alive

    kept = rest_tensors._kept.parser
    with pytest.raises(RuntimeError, match="DEPTH"):
        rest_tensors.parse_document(b"[" * 5000 + b"]" * 5000)
    assert rest_tensors.parse_json(body([6.5]), batching=False).inputs[0].data.root.tolist() \
        == [6.5]
    assert rest_tensors._kept.parser is kept

    large = b" " * rest_tensors.KEEP_PARSER_BYTES + body([1.0])
    kept = rest_tensors._kept.parser
    assert rest_tensors.parse_document(large)["inputs"][0]["data"][0] == 1.0
    assert rest_tensors._kept.parser is kept  # not replaced by the large document's parser


def test_a_body_left_to_mlserver_or_refused_holds_no_proxy_of_its_document(monkeypatch):
    """While MLServer's route answers a JSON body the plugin leaves to it (here, inputs that
    do not validate), the thread's kept parser is free to parse; a binary body refused for
    its header raises an error that holds no frame of the parse."""
    import asyncio
    from types import SimpleNamespace

    from mlserver.errors import InferenceError

    from mlserver_npu import rest_tensors

    model = SimpleNamespace(rest_tensors=True, settings=SimpleNamespace(max_batch_size=0))

    async def served_model(name, version):
        return model

    monkeypatch.setattr(rest_tensors, "served_model", served_model)
    reused = []

    async def mlserver_route(scope, receive, send):
        kept = rest_tensors._kept.parser
        rest_tensors.parse_document(b'{"a": 1}')
        reused.append(rest_tensors._kept.parser is kept)

    def post(body, headers=()):
        scope = {"type": "http", "method": "POST", "path": "/v2/models/m/infer",
                 "headers": list(headers)}

        async def receive():
            return {"type": "http.request", "body": body, "more_body": False}

        asyncio.run(rest_tensors.InferEndpoint(mlserver_route)(scope, receive, None))

    rest_tensors.parse_document(b"{}")  # a parser kept on this thread
    post(json.dumps({"inputs": [{"name": "x", "shape": "3", "datatype": "FP32",
                                 "data": [1, 2, 3]}]}).encode())
    assert reused == [True]
    with pytest.raises(InferenceError, match="each of 'inputs' must be an object") as refused:
        post(b'{"inputs": [5]}', [(b"inference-header-content-length", b"15")])
    assert refused.value.__context__ is None and refused.value.__cause__ is None
