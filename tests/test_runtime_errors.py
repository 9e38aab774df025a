"""What a client gets when the runtime refuses its tensors at run time, or the device fails,
and what the server log says: a 400 / INVALID_ARGUMENT with the runtime's reason, shortened,
for the client's mistake (one INFO line in the log); a 500 / INTERNAL saying what failed,
bounded, for the server's fault (its traceback logged once); MLServer's own 422 and 404
bounded; 503 as UNAVAILABLE."""
import json
import os
import re
import shutil
from pathlib import Path

import grpc
import numpy as np
import onnx
import pytest
from mlserver.grpc import dataplane_pb2 as pb
from mlserver.grpc import dataplane_pb2_grpc
from onnx import TensorProto, helper

import reference
from reference import v2_input
from server import (
    MODEL_REPOSITORY, Server, copy_model, copy_repository, fake_furiosa_env,
)

CUSTOM_RUNTIME = Path(__file__).with_name("custom_runtime")
MAX_MESSAGE = 1200  # characters of any error message (errors.MESSAGE_LIMIT, and some JSON)
DEVICE_FAULT = "NPU npu:1:0 stopped answering (DMA timeout); " + "register dump " * 4000


def multiple_of_32_model() -> onnx.ModelProto:
    """As PP-OCR's text detector: height and width must be multiples of 32, which the input
    shape cannot say (`[N, 3, h, w]`, symbolic names as paddle2onnx writes them). Five 2x2
    poolings, a x32 upsampling, and the sum with the input: any other size fails to
    broadcast inside the graph."""
    nodes, previous = [], "x"
    for level in range(5):
        nodes.append(helper.make_node("MaxPool", [previous], [f"p{level}"], kernel_shape=[2, 2],
                                      strides=[2, 2], pads=[0, 0, 1, 1]))
        previous = f"p{level}"
    nodes += [helper.make_node("Resize", [previous, "", "scales"], ["up"], mode="nearest"),
              helper.make_node("Add", ["x", "up"], ["y"])]
    shape = ["N", 3, "p2o.DynamicDimension.1", "p2o.DynamicDimension.2"]
    graph = helper.make_graph(
        nodes, "det32",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, None, None])],
        [helper.make_tensor("scales", TensorProto.FLOAT, [4], [1, 1, 32, 32])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("runtime-errors")
    repository = copy_repository(root / "repo", models=["digits"])
    for name, extra in [("det32", {}), ("det32-openvino", {"backend": "openvino"})]:
        folder = repository / name
        folder.mkdir()
        onnx.save(multiple_of_32_model(), folder / "model.onnx")
        (folder / "model-settings.json").write_text(json.dumps({
            "name": name, "implementation": "mlserver_npu.NPURuntime",
            "parameters": {"uri": "./model.onnx", "extra": extra}}))
    copy_model(MODEL_REPOSITORY / "digits", repository, "digits-npu",
               {"device": "warboy(1)*1", "options": {"batch_size": 4}})
    (repository / "faulty").mkdir()
    (repository / "faulty" / "model-settings.json").write_text(json.dumps(
        {"name": "faulty", "implementation": "faulty.Faulty"}))
    env = fake_furiosa_env(root / "furiosa.jsonl", FAKE_FURIOSA_FAULT=DEVICE_FAULT)
    env["PYTHONPATH"] += os.pathsep + str(CUSTOM_RUNTIME)
    running = Server.start(repository, root, env=env)
    yield running
    running.stop()


@pytest.fixture(scope="module")
def stub(served):
    channel = grpc.insecure_channel(served.grpc_target)
    yield dataplane_pb2_grpc.GRPCInferenceServiceStub(channel)
    channel.close()


def image(height: int, width: int) -> np.ndarray:
    return np.random.default_rng(height * width).random((1, 3, height, width), np.float32)


def grpc_infer(stub, model: str, array: np.ndarray) -> pb.ModelInferResponse:
    return stub.ModelInfer(pb.ModelInferRequest(
        model_name=model,
        inputs=[pb.ModelInferRequest.InferInputTensor(
            name="x" if model.startswith("det32") else "input", datatype="FP32",
            shape=list(array.shape))],
        raw_input_contents=[array.tobytes()]), timeout=30)


@pytest.mark.parametrize("model,reason", [
    ("det32", "Add node '': Attempting to broadcast an axis by a dimension other than 1. "
              "40 by 64"),
    ("det32-openvino", "Eltwise shape infer input shapes dim index: 2 mismatch"),
])
def test_sides_the_graph_cannot_take_are_a_400_with_the_runtimes_reason(served, stub, model,
                                                                        reason):
    response = served.infer(model, [v2_input("x", image(40, 40))])
    assert response.status_code == 400, response.text
    message = response.json()["error"]
    assert message.startswith("the model rejected the inputs: "), message
    assert reason in message
    assert "onnxruntime_src" not in message and "src/plugins" not in message  # no source paths
    with pytest.raises(grpc.RpcError) as raised:
        grpc_infer(stub, model, image(40, 40))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == message

    good = image(64, 96)  # multiples of 32: served, as onnxruntime computes it
    response = served.infer(model, [v2_input("x", good)])
    assert response.status_code == 200, response.text
    [output] = response.json()["outputs"]
    want = reference.session(served.repository / model / "model.onnx").run(None, {"x": good})[0]
    np.testing.assert_allclose(np.reshape(output["data"], output["shape"]), want, rtol=1e-6)


def test_a_device_fault_is_a_500_that_says_what_failed_bounded(served, stub):
    pixels = reference.digits(2)
    response = served.infer("digits-npu", [v2_input("input", pixels)])
    assert response.status_code == 500, response.text
    message = response.json()["error"]
    assert message.startswith("the device run of model 'digits-npu' failed: "
                              "FuriosaRuntimeError: NPU npu:1:0 stopped answering"), message
    assert "characters cut" in message and len(message) <= MAX_MESSAGE
    with pytest.raises(grpc.RpcError) as raised:
        grpc_infer(stub, "digits-npu", pixels)
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert raised.value.details() == message


def test_an_unexpected_exception_is_a_500_saying_what_failed_never_a_bare_one(served, stub):
    """Another runtime's bug (an exception that is no MLServer error): MLServer would answer
    REST with a bare text `Internal Server Error`, and gRPC with the whole message."""
    response = served.infer("faulty", [v2_input("input", reference.digits(1))])
    assert response.status_code == 500, response.text[:300]
    message = response.json()["error"]
    assert message.startswith("internal error: RuntimeError: the runtime's state is broken: ")
    assert "characters cut" in message and len(message) <= MAX_MESSAGE
    with pytest.raises(grpc.RpcError) as raised:
        grpc_infer(stub, "faulty", reference.digits(1))
    assert raised.value.code() == grpc.StatusCode.INTERNAL
    assert raised.value.details().startswith("the runtime's state is broken: ")
    assert len(raised.value.details()) <= MAX_MESSAGE


def test_fastapi_422_and_404_bodies_are_bounded(served):
    body = {"inputs": [{"name": "input", "shape": [1, 64], "datatype": "F" * 100_000,
                        "data": [0.5] * 64}]}
    response = served.http.post("/v2/models/digits/infer", json=body)
    assert response.status_code == 422
    assert len(response.content) < 4096, len(response.content)
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "inputs", 0, "datatype"]
    assert detail["input"].startswith("'FFFF") and "..." in detail["input"]  # errors.shorten
    assert len(detail["input"]) <= 100
    assert "BOOL" in detail["msg"]  # what was expected survives

    name = "m" * 10_000  # a URL path: HTTP servers and clients take no more than some KB
    response = served.http.post(f"/v2/models/{name}/infer",
                                json={"inputs": [v2_input("input", reference.digits(1))]})
    assert response.status_code == 404
    assert len(response.content) < 1100, len(response.content)
    assert re.fullmatch(r"Model m+\.\.\.\[\d+ characters cut\]\.\.\.m+ not found",
                        response.json()["error"])

    with pytest.raises(grpc.RpcError) as raised:  # gRPC details too
        stub_for(served).ModelMetadata(pb.ModelMetadataRequest(name=name * 100), timeout=30)
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND
    assert len(raised.value.details()) <= MAX_MESSAGE
    assert raised.value.details().endswith(" not found")


def stub_for(server: Server) -> dataplane_pb2_grpc.GRPCInferenceServiceStub:
    return dataplane_pb2_grpc.GRPCInferenceServiceStub(grpc.insecure_channel(server.grpc_target))


def test_the_log_has_a_line_per_client_error_and_a_traceback_per_fault(served, stub):
    """Runs last in this module: every request above is in the log."""
    log_before = served.log()
    for _ in range(3):
        with pytest.raises(grpc.RpcError):
            grpc_infer(stub, "det32", image(40, 40))
        with pytest.raises(grpc.RpcError):
            grpc_infer(stub, "nope", image(40, 40))
        served.infer("det32", [v2_input("x", image(40, 40))])
    with pytest.raises(grpc.RpcError):
        grpc_infer(stub, "digits-npu", reference.digits(1))
    log = served.log()[len(log_before):]
    assert len(re.findall(r"ModelInfer of model 'det32' refused \(400\): the model rejected",
                          log)) == 3, log
    assert len(re.findall(r"ModelInfer of model 'nope' refused \(404\)", log)) == 3, log
    errors = [line for line in log.splitlines() if " ERROR " in line]
    # the fault: the plugin's line with its traceback, then the gRPC call's one line
    assert len(errors) == 2, errors
    assert "Model 'digits-npu': the device run failed" in errors[0]
    assert "ModelInfer of model 'digits-npu' failed (500)" in errors[1]
    assert log.count("Traceback (most recent call last)") == 1, log
    assert "[E:onnxruntime" not in log  # onnxruntime's own stderr report of each failed run


def test_503_is_unavailable_over_grpc():
    """MLServer maps 503 (a model unloaded under a request) to UNKNOWN; after the patch,
    UNAVAILABLE. In-process: a 503 cannot be caused on demand in a live server."""
    import mlserver.grpc.utils as grpc_utils
    from mlserver_npu import grpc_errors
    from mlserver_npu.errors import ModelUnloaded

    assert grpc_errors.install()
    assert grpc_utils._grpc_status_code(ModelUnloaded("m")) == grpc.StatusCode.UNAVAILABLE


# --- dynamic dims: their names shown, unknown names refused, unnamed ones fixed by axis ---

DET32_DIMS = "0:N, 2:p2o.DynamicDimension.1, 3:p2o.DynamicDimension.2"


def test_metadata_shows_the_names_of_dynamic_dims(served, stub):
    [tensor] = served.http.get("/v2/models/det32").json()["inputs"]
    assert tensor["shape"] == [-1, 3, -1, -1]
    assert tensor["parameters"]["dynamic_dims"] == DET32_DIMS
    reply = stub.ModelMetadata(pb.ModelMetadataRequest(name="det32"), timeout=30)
    assert reply.inputs[0].parameters["dynamic_dims"].string_param == DET32_DIMS


def test_an_unknown_free_dimension_is_refused_at_load_naming_the_known_ones(served):
    folder = served.repository / "det32-typo"
    shutil.copytree(served.repository / "det32", folder)
    (folder / "model-settings.json").write_text(json.dumps({
        "name": "det32-typo", "implementation": "mlserver_npu.NPURuntime",
        "parameters": {"uri": "./model.onnx", "extra": {"options": {"free_dimensions": {
            "p2o.DynamicDimension.1": 64, "p2o.DynamicDimension.9": 64}}}}}))
    served.assert_load_fails("det32-typo", [
        "options.free_dimensions names 'p2o.DynamicDimension.9', which no input of the model "
        "has; its symbolic dims: 'N' (x[0]), 'p2o.DynamicDimension.1' (x[2]), "
        "'p2o.DynamicDimension.2' (x[3])"])


def test_inspect_shows_the_names_and_options_shape_fixes_unnamed_dims(tmp_path, capsys):
    """`mlserver-npu inspect`, in this process (its load is the server's)."""
    from mlserver_npu.cli import main

    model = multiple_of_32_model()
    path = tmp_path / "det32.onnx"
    onnx.save(model, path)
    assert main(["inspect", str(path)]) == 0
    assert f"input    x  FP32 [-1, 3, -1, -1]  dynamic {DET32_DIMS}" in capsys.readouterr().out

    for dim in model.graph.input[0].type.tensor_type.shape.dim[2:]:
        dim.ClearField("dim_param")  # unnamed: free_dimensions cannot reach them
    folder = tmp_path / "unnamed"
    folder.mkdir()
    onnx.save(model, folder / "model.onnx")
    (folder / "model-settings.json").write_text(json.dumps({
        "name": "unnamed", "implementation": "mlserver_npu.NPURuntime",
        "parameters": {"uri": "./model.onnx",
                       "extra": {"options": {"shape": {"x": [-1, 3, 64, 96]}}}}}))
    assert main(["inspect", str(folder), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 3, 64, 96]}]


def test_metadata_versions_list_the_models_version(served, stub):
    assert served.http.get("/v2/models/digits").json()["versions"] == ["1"]
    reply = stub.ModelMetadata(pb.ModelMetadataRequest(name="digits"), timeout=30)
    assert list(reply.versions) == ["1"]
    assert not served.http.get("/v2/models/det32").json().get("versions")  # none set


@pytest.mark.parametrize("device,refused", [
    ("warboy(1)*1", True), ("qnn:htp", True), ("AUTO:NPU,CPU", True), ("cpu", False),
])
def test_parallel_workers_are_refused_for_devices_one_process_holds(monkeypatch, device,
                                                                   refused):
    """In an MLServer inference worker of a server with 2 of them (the process MLServer's
    parallel inference loads each model in), before any device is opened."""
    import asyncio
    import multiprocessing

    from mlserver.parallel.worker import Worker
    from mlserver.settings import ModelSettings, Settings
    from mlserver_npu.errors import ModelLoadError
    from mlserver_npu.stages import ModelStages

    worker = Worker(Settings(parallel_workers=2), responses=None)
    monkeypatch.setattr(multiprocessing, "current_process", lambda: worker)
    settings = ModelSettings(name="npu", implementation="mlserver_npu.NPURuntime", parameters={
        "uri": str(MODEL_REPOSITORY / "digits" / "model.onnx"), "extra": {"device": device}})
    try:
        stages = asyncio.run(ModelStages.open(settings))
    except ModelLoadError as error:
        assert refused, error
        assert "parallel_workers is 2: each worker process would open device" in str(error)
        assert "MLSERVER_PARALLEL_WORKERS=0" in str(error)
    else:
        assert not refused
        asyncio.run(stages.close())
