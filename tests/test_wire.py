"""The zero-copy gRPC path (mlserver_npu/wire.py) through real servers: outputs bit-exact
against onnxruntime with the path on and off, over gRPC and REST; raw in -> raw out, typed
in -> typed out; malformed raw contents are INVALID_ARGUMENT naming the input; other runtimes
in the same server see what MLServer gives them; adaptive batching, the response cache,
parallel workers and streaming keep working; memory stays flat. The first test pins the
MLServer functions the module wraps."""
import inspect
import json
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import numpy as np
import pytest

import reference
from reference import sample_inputs, v2_input
from server import Server, copy_model, copy_repository, grpc_calls

from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import dataplane_pb2_grpc
from mlserver.errors import InferenceError
from mlserver.grpc.converters import ModelInferRequestConverter, ModelInferResponseConverter
from mlserver.types import InferenceResponse, ResponseOutput
from mlserver_npu import wire

CUSTOM_RUNTIME = Path(__file__).with_name("custom_runtime")
MODELS = ["digits", "digits-temperature", "squeezenet", "digits-image", "digits-mlp",
          "digits-ensemble"]
IDENTITY_SIZE = 4096
DTYPES = {"FP32": np.float32, "INT64": np.int64, "BYTES": object}
TYPED_FIELDS = {"FP32": "fp32_contents", "INT64": "int64_contents", "BYTES": "bytes_contents"}


def _write_identity_model(folder: Path, size: int) -> None:
    """An ONNX Identity of FP32 [-1, size]: its outputs are exactly its inputs."""
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, size])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    folder.mkdir()
    onnx.save(model, folder / "model.onnx")
    (folder / "model-settings.json").write_text(json.dumps({
        "name": folder.name,
        "implementation": "mlserver_npu.NPURuntime",
        "parameters": {"uri": "./model.onnx", "extra": {"options": {"intra_op_threads": 1}}},
    }))


def _write_type_echo(folder: Path) -> None:
    folder.mkdir()
    (folder / "model-settings.json").write_text(
        json.dumps({"name": folder.name, "implementation": "type_echo.TypeEcho"})
    )


def _repository(root: Path) -> Path:
    repository = copy_repository(root / "model-repository", MODELS)
    digits = repository / "digits"
    copy_model(digits, repository, "digits-batched", max_batch_size=4, max_batch_time=0.5)
    copy_model(digits, repository, "digits-cached", cache_enabled=True)
    _write_identity_model(repository / "identity", IDENTITY_SIZE)
    _write_type_echo(repository / "type-echo")
    return repository


def _start(root: Path, zero_copy: bool) -> Server:
    env = {"PYTHONPATH": str(CUSTOM_RUNTIME)}
    if not zero_copy:
        env["MLSERVER_NPU_ZERO_COPY"] = "0"
    # The server-wide response cache makes MLServer dump every request to JSON (its key).
    return Server.start(_repository(root), root, settings={"cache_enabled": True}, env=env)


@pytest.fixture(scope="module")
def fast(tmp_path_factory):
    running = _start(tmp_path_factory.mktemp("wire-on"), zero_copy=True)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def slow(tmp_path_factory):
    running = _start(tmp_path_factory.mktemp("wire-off"), zero_copy=False)
    yield running
    running.stop()


def _stub(server: Server):
    channel = grpc.insecure_channel(
        server.grpc_target, options=[("grpc.max_receive_message_length", 64 * 2**20)]
    )
    return dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)


def _request(model: str, arrays: dict, raw: bool = True) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    for name, array in arrays.items():
        datatype = {np.dtype(np.float32): "FP32", np.dtype(np.int64): "INT64"}[array.dtype]
        tensor = request.inputs.add(name=name, datatype=datatype, shape=list(array.shape))
        if raw:
            request.raw_input_contents.append(array.tobytes())
        else:
            getattr(tensor.contents, TYPED_FIELDS[datatype]).extend(array.ravel().tolist())
    return request


def _unpack_bytes(raw: bytes) -> list:
    elements, offset = [], 0
    while offset < len(raw):
        size = int.from_bytes(raw[offset : offset + 4], "little")
        elements.append(raw[offset + 4 : offset + 4 + size])
        offset += 4 + size
    return elements


def _outputs(response: pb.ModelInferResponse) -> dict:
    arrays = {}
    for index, output in enumerate(response.outputs):
        dtype = DTYPES[output.datatype]
        if response.raw_output_contents and dtype is object:
            array = np.array(_unpack_bytes(response.raw_output_contents[index]), object)
        elif response.raw_output_contents:
            array = np.frombuffer(response.raw_output_contents[index], dtype)
        else:
            array = np.array(getattr(output.contents, TYPED_FIELDS[output.datatype]), dtype)
        arrays[output.name] = array.reshape(list(output.shape))
    return arrays


def _assert_exact(got: dict, expected: dict) -> None:
    assert sorted(got) == sorted(expected)
    for name, array in expected.items():
        assert got[name].dtype == array.dtype, name
        assert np.array_equal(got[name], array), name


def test_wrapped_mlserver_functions_are_the_checked_ones():
    """Fails when MLServer changes what wire.py wraps, replaces or mirrors."""
    import mlserver

    assert mlserver.__version__ in wire.SUPPORTED
    for name, (function, expected) in wire.CHECKED.items():
        assert wire.fingerprint(function()) == expected, name
    signature = inspect.signature(inspect.unwrap(ModelInferRequestConverter.to_types.__func__))
    assert list(signature.parameters) == ["cls", "pb_object"]
    signature = inspect.signature(inspect.unwrap(ModelInferResponseConverter.from_types.__func__))
    assert list(signature.parameters) == ["cls", "type_object", "use_raw"]
    assert signature.parameters["use_raw"].default is False

    # Behaviour: the replacement gives MLServer's request, with arrays where it has lists...
    feeds = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.arange(2)}
    request = _request("m", feeds)
    request.inputs.add(name="typed", datatype="INT64", shape=[2]).contents.int64_contents.extend(
        [7, 8]
    )
    request.inputs.add(name="text", datatype="BYTES", shape=[2])
    request.raw_input_contents.append(b"\x02\x00\x00\x00hi\x00\x00\x00\x00")
    request.outputs.add(name="out")
    theirs = ModelInferRequestConverter.to_types(request)  # not registered: MLServer's own
    ours = wire.request_to_types(request)
    assert isinstance(ours.inputs[0].data.root, wire.WireArray)
    assert json.loads(ours.model_dump_json()) == json.loads(theirs.model_dump_json())
    # ... and packs array outputs into the same message MLServer packs from lists.
    original = inspect.unwrap(ModelInferResponseConverter.from_types.__func__)
    values = np.linspace(0, 1, 5, dtype=np.float32)
    for use_raw in (True, False):
        def response(data):
            return InferenceResponse(model_name="m", id="i", outputs=[
                ResponseOutput(name="y", shape=[5], datatype="FP32", data=data),
                ResponseOutput(name="s", shape=[1], datatype="BYTES", data=[b"x"]),
            ])
        expected = original(ModelInferResponseConverter, response(values.tolist()), use_raw)
        got = wire.response_from_types(
            response(wire.wire_array(values)), use_raw,
            lambda r: original(ModelInferResponseConverter, r, False),
        )
        assert got.SerializeToString() == expected.SerializeToString(), use_raw


def test_raw_contents_are_checked_before_they_are_viewed():
    """The cases the example models cannot show (their inputs are FP32 and image BYTES)."""
    def tensor(datatype, shape):
        return pb.ModelInferRequest.InferInputTensor(name="t", datatype=datatype, shape=shape)

    assert wire.view(tensor("BOOL", [3]), b"\x00\x01\x01").tolist() == [False, True, True]
    assert wire.view(tensor("INT16", [2]), b"\x01\x00\xff\xff").tolist() == [1, -1]
    assert wire.view(tensor("BYTES", [2]), b"\x01\x00\x00\x00a\x00\x00\x00\x00") == [b"a", b""]
    for datatype, shape, raw, words in [
        ("BOOL", [2], b"\x01\x02", "BOOL raw contents must be bytes 0 or 1"),
        ("BYTES", [3], b"\x01\x00\x00\x00a", "needs 3 BYTES element(s), the raw contents hold 1"),
        ("FP16", [3], b"\x00" * 5, "FP16 [3] needs 6 bytes of raw contents, got 5"),
        ("FP32", [2**40, 2**40], b"", "needs 4835703278458516698824704 bytes"),
    ]:
        with pytest.raises(InferenceError, match=re.escape(words)):
            wire.view(tensor(datatype, shape), raw)
    long_name = "x" * 10_000
    with pytest.raises(InferenceError) as raised:
        wire.view(pb.ModelInferRequest.InferInputTensor(name=long_name, datatype="FP32",
                                                         shape=[1]), b"")
    assert len(str(raised.value)) < 200  # client text is quoted cut short


def test_outputs_bit_exact_with_the_path_on_and_off(fast, slow):
    feeds = {
        "digits": sample_inputs("digits", 3),
        "digits-temperature": sample_inputs("digits-temperature", 2),
        "squeezenet": sample_inputs("squeezenet", 2),
        "identity": {"x": np.random.default_rng(0).standard_normal((2, IDENTITY_SIZE), np.float32)},
    }
    for server in (fast, slow):
        calls = [
            {"op": "infer", "model": model, "inputs": [v2_input(n, a) for n, a in inputs.items()]}
            for model, inputs in feeds.items()
        ]
        results = grpc_calls(server.grpc_target, calls)  # tritonclient.grpc: raw contents
        for (model, inputs), result in zip(feeds.items(), results):
            expected = {"y": inputs["x"]} if model == "identity" else reference.run(model, inputs)
            got = {
                name: np.array(t["data"], expected[name].dtype).reshape(t["shape"])
                for name, t in result["ok"]["outputs"].items()
            }
            _assert_exact(got, expected)
            response = server.infer(model, [v2_input(n, a) for n, a in inputs.items()])
            assert response.status_code == 200, response.text
            got = {
                o["name"]: np.array(o["data"], expected[o["name"]].dtype).reshape(o["shape"])
                for o in response.json()["outputs"]
            }
            _assert_exact(got, expected)


def test_raw_in_raw_out_typed_in_typed_out(fast):
    feeds = sample_inputs("digits-temperature", 2)
    expected = reference.run("digits-temperature", feeds)
    stub = _stub(fast)
    raw = stub.ModelInfer(_request("digits-temperature", feeds, raw=True))
    assert len(raw.raw_output_contents) == 2
    assert all(not output.contents.ListFields() for output in raw.outputs)
    _assert_exact(_outputs(raw), expected)
    typed = stub.ModelInfer(_request("digits-temperature", feeds, raw=False))
    assert not typed.raw_output_contents
    _assert_exact(_outputs(typed), expected)
    assert raw.model_version == typed.model_version == "1"


def _digits_request(**changes) -> pb.ModelInferRequest:
    request = _request("digits", sample_inputs("digits", 2))
    tensor = request.inputs[0]
    if "shape" in changes:
        del tensor.shape[:]
        tensor.shape.extend(changes["shape"])
    if "datatype" in changes:
        tensor.datatype = changes["datatype"]
    if "raw" in changes:
        del request.raw_input_contents[:]
        request.raw_input_contents.extend(changes["raw"])
    return request


def _image_request(raw: bytes) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="digits-image")
    request.inputs.add(name="input", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(raw)
    return request


PIXEL_BYTES = sample_inputs("digits", 2)["input"].tobytes()
MALFORMED = [
    ("short", _digits_request(raw=[PIXEL_BYTES[:-3]]),
     ["input 'input'", "FP32 [2, 64] needs 512 bytes", "got 509"]),
    ("long", _digits_request(raw=[PIXEL_BYTES + b"\0" * 4]), ["input 'input'", "got 516"]),
    ("negative-dimension", _digits_request(shape=[-2, -64]),
     ["input 'input'", "negative dimension"]),
    ("unknown-datatype", _digits_request(datatype="FP33"),
     ["input 'input'", "unknown datatype 'FP33'"]),
    ("extra-raw-entry", _digits_request(raw=[PIXEL_BYTES, PIXEL_BYTES]),
     ["2 raw_input_contents entries for 1 input", "'input'"]),
    ("bytes-length-past-the-end", _image_request(b"\xff\x00\x00\x00png"),
     ["input 'input'", "BYTES element 0 claims 255 bytes, 3 remain"]),
    ("bytes-truncated-length", _image_request(b"\x01\x00"),
     ["input 'input'", "end inside the length of element 0"]),
]


@pytest.mark.parametrize("case", MALFORMED, ids=[c[0] for c in MALFORMED])
def test_malformed_raw_contents_are_invalid_argument(fast, case):
    _, request, words = case
    stub = _stub(fast)
    with pytest.raises(grpc.RpcError) as raised:
        stub.ModelInfer(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    for word in words:
        assert word in raised.value.details(), (word, raised.value.details())
    feeds = sample_inputs("digits", 1)
    _assert_exact(_outputs(stub.ModelInfer(_request("digits", feeds))),
                  reference.run("digits", feeds))


def test_other_runtimes_see_what_mlserver_gives_them(fast, slow):
    """TypeEcho (not NPURuntime) gets lists, and the same replies, whatever the switch."""
    request = _request("type-echo", {"x": np.arange(6, dtype=np.float32).reshape(2, 3)})
    request.inputs.add(name="s", datatype="BYTES", shape=[1])
    request.raw_input_contents.append(b"\x03\x00\x00\x00abc")
    replies = [_stub(server).ModelInfer(request) for server in (fast, slow)]
    assert replies[0].SerializeToString() == replies[1].SerializeToString()
    outputs = _outputs(replies[0])
    assert outputs["x_type"].tolist() == [b"list"] and outputs["s_type"].tolist() == [b"list"]
    assert outputs["x"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert outputs["s"].tolist() == [b"abc"]
    # MLServer's own failure for a short raw entry (not ours to change) is the same too.
    request = _request("type-echo", {"x": np.arange(6, dtype=np.float32)})
    request.raw_input_contents[0] = request.raw_input_contents[0][:-1]
    codes = []
    for server in (fast, slow):
        with pytest.raises(grpc.RpcError) as raised:
            _stub(server).ModelInfer(request)
        codes.append(raised.value.code())
    assert codes[0] == codes[1]


def test_adaptive_batching_merges_rest_and_grpc_requests(fast):
    """MLServer merges data as lists: that model stays on MLServer's path, and is exact."""
    batches = [sample_inputs("digits", 1 + i % 2) for i in range(6)]
    barrier = threading.Barrier(len(batches))

    def send(index):
        feeds = batches[index]
        barrier.wait()
        if index % 2:
            response = fast.infer("digits-batched", [v2_input("input", feeds["input"])])
            assert response.status_code == 200, response.text
            return {
                o["name"]: np.array(o["data"], DTYPES[o["datatype"]]).reshape(o["shape"])
                for o in response.json()["outputs"]
            }
        return _outputs(_stub(fast).ModelInfer(_request("digits-batched", feeds)))

    with ThreadPoolExecutor(len(batches)) as pool:
        results = list(pool.map(send, range(len(batches))))
    for feeds, got in zip(batches, results):
        # onnxruntime's float results depend on the batch it ran (MLServer chose it): labels
        # exact, probabilities to float32 rounding.
        expected = reference.run("digits", feeds)
        assert np.array_equal(got["label"], expected["label"])
        np.testing.assert_allclose(got["probabilities"], expected["probabilities"], rtol=1e-5,
                                   atol=1e-7)
    assert "Model 'digits-batched': MLServer's adaptive batching" in fast.log()


def test_response_cache_takes_zero_copy_requests(fast):
    feeds = sample_inputs("digits", 2)
    expected = reference.run("digits", feeds)
    stub = _stub(fast)
    before = sum(fast.session_runs("digits-cached").values())
    first = stub.ModelInfer(_request("digits-cached", feeds))
    second = stub.ModelInfer(_request("digits-cached", feeds))
    _assert_exact(_outputs(first), expected)
    _assert_exact(_outputs(second), expected)
    assert sum(fast.session_runs("digits-cached").values()) == before + 1  # one from the cache


def test_streaming_takes_zero_copy_requests(fast):
    feeds = sample_inputs("digits", 2)
    replies = list(_stub(fast).ModelStreamInfer(iter([_request("digits", feeds)])))
    assert len(replies) == 1 and replies[0].raw_output_contents
    _assert_exact(_outputs(replies[0]), reference.run("digits", feeds))


def _ensemble_mean(pixels: np.ndarray) -> np.ndarray:
    """What digits-ensemble averages, run with onnxruntime directly."""
    return np.mean([reference.run(model, {"input": pixels})["probabilities"]
                    for model in ("digits", "digits-mlp")], axis=0)


def _ensemble_request(pixels: np.ndarray, raw: bool = True) -> pb.ModelInferRequest:
    request = _request("digits-ensemble", {"input": pixels}, raw)
    request.outputs.add(name="probabilities").parameters["classification"].int64_param = 0
    return request


def test_pipelines_take_the_zero_copy_path(fast):
    """Raw contents to a pipeline are checked as for a model (INVALID_ARGUMENT naming the
    input), and raw in gives raw out."""
    request = _ensemble_request(reference.digits(2))
    request.raw_input_contents[0] = request.raw_input_contents[0][:-3]
    with pytest.raises(grpc.RpcError) as raised:
        _stub(fast).ModelInfer(request)
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT, raised.value.details()
    for word in ["input 'input'", "FP32 [2, 64] needs 512 bytes", "got 509"]:
        assert word in raised.value.details(), (word, raised.value.details())
    pixels = reference.digits(5, offset=40)
    for raw in (True, False):
        reply = _stub(fast).ModelInfer(_ensemble_request(pixels, raw))
        assert bool(reply.raw_output_contents) == raw
        np.testing.assert_allclose(_outputs(reply)["probabilities"], _ensemble_mean(pixels),
                                   rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("model", ["digits", "digits-ensemble"])
def test_a_stream_answers_every_request_in_order(fast, model):
    batches = [reference.digits(1 + i, offset=10 * i) for i in range(3)]
    requests = [_ensemble_request(b) if model == "digits-ensemble"
                else _request("digits", {"input": b}) for b in batches]
    replies = list(_stub(fast).ModelStreamInfer(iter(requests)))
    assert len(replies) == len(batches)
    for pixels, reply in zip(batches, replies):
        got = _outputs(reply)["probabilities"]
        want = (_ensemble_mean(pixels) if model == "digits-ensemble"
                else reference.run("digits", {"input": pixels})["probabilities"])
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_parallel_workers_keep_working(make_server, tmp_path):
    repository = copy_repository(tmp_path / "model-repository", ["digits"])
    server = make_server(repository, settings={"parallel_workers": 1})
    feeds = sample_inputs("digits", 3)
    _assert_exact(_outputs(_stub(server).ModelInfer(_request("digits", feeds))),
                  reference.run("digits", feeds))


def test_memory_stays_flat_over_5000_requests(fast):
    import psutil

    x = np.random.default_rng(1).standard_normal((1, IDENTITY_SIZE), np.float32)
    request = _request("identity", {"x": x})
    stub = _stub(fast)
    process = psutil.Process(fast.process.pid)

    def send(count):
        for _ in range(count):
            reply = stub.ModelInfer(request)
        return reply

    send(500)
    before = process.memory_info().rss
    reply = send(5000)
    grown = process.memory_info().rss - before
    assert np.array_equal(_outputs(reply)["y"], x)
    # One request's tensors kept per request would be 5000 x 2 x 16 KiB = 160 MiB.
    assert grown < 16 * 2**20, f"RSS grew by {grown / 2**20:.1f} MiB over 5000 requests"


def test_the_switch_and_the_version_guard_keep_mlserver_s_path(fast, slow, monkeypatch):
    assert "Zero-copy gRPC tensors on" in fast.log()
    assert "Zero-copy gRPC tensors on" not in slow.log()
    with pytest.raises(grpc.RpcError) as raised:  # MLServer's own struct.error, as before
        _stub(slow).ModelInfer(MALFORMED[0][1])
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    import mlserver

    monkeypatch.setattr(mlserver, "__version__", "1.8.0")
    assert "outside the versions it was checked against" in wire.incompatibility(wire.CHECKED)
    monkeypatch.setattr(mlserver, "__version__", "1.7.1")
    assert wire.incompatibility(wire.CHECKED) is None
    name = "mlserver.raw.extract_raw"
    monkeypatch.setitem(wire.CHECKED, name, (wire.CHECKED[name][0], "0" * 64))
    assert f"MLServer's {name} is not the function" in wire.incompatibility(wire.CHECKED)
