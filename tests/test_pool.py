"""The session pool over a live server: concurrent requests spread over two CPU sessions,
static batches split and padded, and MLServer's adaptive batching handing each of 32
concurrent clients exactly its own rows. Outputs are checked against onnxruntime run directly."""
import asyncio
import math

import httpx
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from tritonclient.utils import triton_to_np_dtype

import reference
from reference import v2_input
from server import MODEL_REPOSITORY, Server, copy_model

BATCHED = {"max_batch_size": 4, "max_batch_time": 0.2}


def _busy_model(path, batch="N", features=(8, 4)):
    """Small tensors in and out, ~1 ms of compute per row: runs overlap when requests do."""
    rng = np.random.default_rng(0)
    sizes = [features[0]] + [512] * 10 + [features[1]]
    nodes, weights = [], []
    current = "x"
    for i, (rows, cols) in enumerate(zip(sizes, sizes[1:])):
        name = f"w{i}"
        weights.append(numpy_helper.from_array(
            (rng.standard_normal((rows, cols)) / np.sqrt(rows)).astype(np.float32), name))
        nodes.append(helper.make_node("MatMul", [current, name], [f"m{i}"]))
        nodes.append(helper.make_node("Tanh", [f"m{i}"], [f"t{i}"]))
        current = f"t{i}"
    nodes[-1].output[0] = "y"
    graph = helper.make_graph(
        nodes, "busy",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, features[0]])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, features[1]])],
        initializer=weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, path)


@pytest.fixture(scope="module")
def pool_server(tmp_path_factory):
    root = tmp_path_factory.mktemp("pool")
    repository = root / "repository"
    repository.mkdir()
    (repository / "settings.json").write_text((MODEL_REPOSITORY / "settings.json").read_text())
    busy = copy_model(MODEL_REPOSITORY / "digits", repository, "busy", {"device": "cpu,cpu"})
    _busy_model(busy / "model.onnx")
    copy_model(MODEL_REPOSITORY / "digits-b4", repository, "b4-pool", {"sessions": 2})
    busy_b4 = copy_model(MODEL_REPOSITORY / "digits", repository, "busy-b4", {"sessions": 2})
    _busy_model(busy_b4 / "model.onnx", batch=4)
    copy_model(MODEL_REPOSITORY / "digits", repository, "digits-batched", **BATCHED)
    copy_model(MODEL_REPOSITORY / "digits-mlp", repository, "mlp")
    copy_model(MODEL_REPOSITORY / "digits-mlp", repository, "mlp-batching",
               {"batching": {"max_batch_size": 8}})
    copy_model(MODEL_REPOSITORY / "digits-b4", repository, "b4-batched", {"sessions": 2},
               **BATCHED)
    running = Server.start(repository, root)
    running.busy_model = busy / "model.onnx"
    yield running
    running.stop()


def _outputs(response):
    assert response.status_code == 200, response.text
    # in the datatype the reply declares: FP32 values are written as float32's shortest
    # decimals, which a float64 parse would not give back bit for bit
    return {
        o["name"]: np.array(o["data"], dtype=triton_to_np_dtype(o["datatype"])).reshape(o["shape"])
        for o in response.json()["outputs"]
    }


def _assert_digits(outputs, pixels):
    want = reference.run("digits", {"input": pixels})
    assert outputs["label"].tolist() == want["label"].tolist()
    np.testing.assert_allclose(outputs["probabilities"], want["probabilities"], rtol=1e-5,
                               atol=1e-6)


async def _concurrently(server, model, bodies):
    async with httpx.AsyncClient(base_url=server.url, timeout=60) as client:
        return await asyncio.gather(
            *(client.post(f"/v2/models/{model}/infer", json=body) for body in bodies)
        )


def test_concurrent_requests_run_on_both_cpu_sessions(pool_server):
    metadata = pool_server.http.get("/v2/models/busy").json()
    assert metadata["parameters"]["devices"] == "cpu,cpu"
    assert pool_server.session_runs("busy") == {"0": 0, "1": 0}  # warm-up is not counted

    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((8, 8)).astype(np.float32) for _ in range(16)]
    responses = asyncio.run(
        _concurrently(pool_server, "busy", [{"inputs": [v2_input("x", x)]} for x in inputs])
    )
    want = reference.session(pool_server.busy_model)
    for x, response in zip(inputs, responses):
        (got,) = _outputs(response).values()
        np.testing.assert_allclose(got, want.run(None, {"x": x})[0], rtol=1e-4, atol=1e-5)

    runs = pool_server.session_runs("busy")
    # An idle pool always picks session 0: session 1 runs only while session 0 is busy.
    assert runs["1"] > 0 and runs["0"] > 0, runs
    assert sum(runs.values()) == len(inputs)
    in_flight = pool_server.metrics()["mlserver_npu_session_in_flight"]
    assert [v for labels, v in in_flight.items() if ("model_name", "busy") in labels] == [0, 0]


def test_static_batch_model_serves_any_batch(pool_server):
    metadata = pool_server.http.get("/v2/models/b4-pool").json()
    assert metadata["parameters"]["static_batch"] == 4
    assert {t["name"]: t["shape"] for t in metadata["inputs"]} == {"input": [-1, 64]}
    assert {t["name"]: t["shape"] for t in metadata["outputs"]} == {
        "label": [-1], "probabilities": [-1, 10]}

    for batch in [1, 4, 5, 12]:  # short, exactly full, one over, three times
        before = pool_server.session_runs("b4-pool")
        pixels = reference.digits(batch, offset=10 * batch)
        outputs = _outputs(pool_server.infer("b4-pool", [v2_input("input", pixels)]))
        assert {name: list(a.shape) for name, a in outputs.items()} == {
            "label": [batch], "probabilities": [batch, 10]}
        _assert_digits(outputs, pixels)
        after = pool_server.session_runs("b4-pool")
        runs = {s: after[s] - before[s] for s in after}
        assert sum(runs.values()) == math.ceil(batch / 4), (batch, runs)

    # What the model file itself computes on one full batch
    pixels = reference.digits(4, offset=500)
    outputs = _outputs(pool_server.infer("b4-pool", [v2_input("input", pixels)]))
    np.testing.assert_allclose(outputs["probabilities"],
                               reference.run("digits-b4", {"input": pixels})["probabilities"],
                               rtol=1e-6)


def test_a_split_batch_runs_on_both_sessions_at_once(pool_server):
    """Tiny runs (digits) finish inline before the next starts; runs that take time overlap."""
    x = np.random.default_rng(2).standard_normal((12, 8)).astype(np.float32)
    before = pool_server.session_runs("busy-b4")
    (got,) = _outputs(pool_server.infer("busy-b4", [v2_input("x", x)])).values()
    after = pool_server.session_runs("busy-b4")
    # three runs of 4 at once: least-busy dispatch puts them on both sessions
    assert {s: after[s] - before[s] for s in after} == {"0": 2, "1": 1}
    # same weights as the dynamic-batch `busy` model: its rows are the reference
    want = reference.session(pool_server.busy_model).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("model", ["digits-batched", "b4-batched"])
def test_adaptive_batching_returns_each_client_its_own_rows(pool_server, model):
    """32 clients with 1 to 3 different rows each, merged by MLServer (max_batch_size 4
    requests) and, for the static-batch model, split again into runs of 4 over two sessions."""
    before = sum(pool_server.session_runs(model).values())
    pixels = [reference.digits(1 + i % 3, offset=37 * i) for i in range(32)]
    responses = asyncio.run(
        _concurrently(pool_server, model, [{"inputs": [v2_input("input", p)]} for p in pixels])
    )
    for rows, response in zip(pixels, responses):
        outputs = _outputs(response)
        assert outputs["probabilities"].shape == (len(rows), 10)
        _assert_digits(outputs, rows)
    runs = sum(pool_server.session_runs(model).values()) - before
    # Unmerged, every request (at most 3 rows) would be one run.
    assert runs < len(pixels), "requests were not merged"


@pytest.mark.parametrize("model", ["mlp", "b4-pool", "mlp-batching"])
def test_a_request_of_zero_rows_gets_zero_rows_without_a_device_run(pool_server, model):
    """The same answer on a dynamic-batch model, a static-batch one and with the batcher:
    200 with 0-row outputs, and no run (no error from the backend, no batch of padding)."""
    runs = pool_server.session_runs(model)
    response = pool_server.infer(model, [v2_input("input", np.zeros((0, 64), np.float32))])
    outputs = _outputs(response)
    assert outputs["probabilities"].shape == (0, 10) and outputs["label"].shape == (0,)
    assert {o["name"]: o["shape"] for o in response.json()["outputs"]} == {
        "label": [0], "probabilities": [0, 10]}
    assert pool_server.session_runs(model) == runs
